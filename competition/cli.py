"""What every command line of the kit shares: one log format, `key=value` overrides, `--device`, and one
way to fail: a KitError becomes a single line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable

from competition import options
from competition.errors import KitError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
log = logging.getLogger("competition")


class KitParser(argparse.ArgumentParser):
    """argparse with the kit's rules: a bad command line is ONE line on stderr naming the option, the value and
    what is allowed (exit 2, no usage dump, no traceback); an `options` type adds its range to the help."""

    def add_argument(self, *args, **kwargs):  # noqa: ANN002, ANN003 - argparse's own signature
        kind = kwargs.get("type")
        if isinstance(kind, options.Option):
            if kwargs.get("help") != argparse.SUPPRESS:
                kwargs["help"] = f"{kwargs.get('help') or ''} [{kind.describe()}]".strip()
            if isinstance(kind, options.Choice) and "metavar" not in kwargs and args and args[0].startswith("-"):
                kwargs["metavar"] = "{" + ",".join(kind.values) + "}"
        return super().add_argument(*args, **kwargs)

    def error(self, message: str):  # noqa: ANN201 - never returns
        """One line, then exit 2 (argparse's own behaviour prints the whole usage first)."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def parser(doc: str | None, overrides: bool = False, device: bool = False) -> KitParser:
    """An ArgumentParser with the module docstring as help, plus the shared options asked for."""
    p = KitParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    if overrides:
        p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE",
                       help="config overrides, e.g. --set competition.metric=f1")
    if device:
        p.add_argument("--device", default="auto", type=options.device(),
                       help="where models run (auto: cuda when available)")
    return p


def setup_logging() -> None:
    """The one log format: time, level, module, message; INFO and up."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt="%H:%M:%S")


def run(main: Callable[[], int]) -> int:
    """Call a CLI body; KitError -> one line on stderr + exit 2, Ctrl-C -> one line + exit 130."""
    setup_logging()
    try:
        return main()
    except KitError as err:
        log.error("%s", err)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)  # noqa: T201
        return 130
