"""What every command line of the kit shares: one log format, `key=value` overrides, `--device`, and one
way to fail: a KitError becomes a single line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import argparse
import difflib
import logging
import re
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

    def parse_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201 - argparse's own signature
        """Options and positionals in any order: `key=value` overrides and list members may follow the options
        (`folds --force folds.n_splits=3`, `ensemble a --method mean b`). argparse's intermixed parsing wherever it
        applies; plain parsing for a parser it refuses (subparsers, REMAINDER: see intermixable)."""
        if self.intermixable():
            return self.parse_intermixed_args(args, namespace)
        return super().parse_args(args, namespace)

    def intermixable(self) -> bool:
        """Whether argparse can parse this parser intermixed: its parse_intermixed_args raises TypeError for a
        positional with nargs PARSER (subparsers) or REMAINDER, or one in a mutually exclusive group."""
        grouped = {id(a) for group in self._mutually_exclusive_groups for a in group._group_actions}
        return not any(a.nargs in (argparse.PARSER, argparse.REMAINDER) or id(a) in grouped
                       for a in self._get_positional_actions())

    def error(self, message: str):  # noqa: ANN201 - never returns
        """One line, then exit 2 (argparse's own behaviour prints the whole usage first); an unknown option gets a
        "did you mean" from this parser's own options, a missing value what the option takes."""
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}{self.hint(message)} (see {self.prog} --help)\n")

    def hint(self, message: str) -> str:
        """The clause that helps with an argparse message: the near option of each misspelt one, or what a value-less
        option expects; '' when none."""
        if message.startswith("unrecognized arguments:"):
            known = [s for s in self._option_string_actions if s.startswith("--")]
            pairs = [(word.split("=", 1)[0], difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.6))
                     for word in message.split(":", 1)[1].split() if word.startswith("--")]
            near = [(typed, close[0]) for typed, close in pairs if close and typed != close[0]]
            if len(near) == 1:
                return f" (did you mean {near[0][1]}?)"
            return f" (did you mean {', '.join(f'{right} for {typed}' for typed, right in near)}?)" if near else ""
        missing = re.match(r"argument (\S+?)(?:/\S+)?: expected (?:one|at least one) argument", message)
        action = self._option_string_actions.get(missing.group(1)) if missing else None
        if action is not None and isinstance(action.type, options.Option):
            return f": give {action.type.describe()}"
        return ""


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
