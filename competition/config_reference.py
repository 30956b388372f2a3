"""Every config key: its value, type or range, what it does, and which file or override set it.

    ./run.sh config                       the defaults as competition.yaml changes them
    ./run.sh config exp001 train.lr=3e-4  the resolved config of an experiment, as a run would see it
    ./run.sh config --markdown [--write]  the reference of every key and default (docs/config.md)

One source of truth: the types and ranges come from the field annotations in competition/config.py and the
descriptions from the `# ...` comments beside each field there (continuation comment lines included), read
from the source with tokenize/ast; docs/config.md is generated from the same place (tests/test_config_reference
fails when it is out of date).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import sys
import tokenize
import typing
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from competition import cli, config
from competition.atomic import write_text
from competition.config import Config, Origins, Range, field_hints, is_override, override_error, sections
from competition.project import REPO, Project

DOCS_FILE = REPO / "docs" / "config.md"
REGENERATE = "./run.sh config --markdown --write"  # (= python -m competition.config_reference --markdown --write)


class Key(NamedTuple):
    """One config key as the reference shows it."""

    section: str  # "" for the top-level keys (name, description)
    name: str
    value: Any
    kind: str  # type, allowed values or range
    comment: str  # the `# ...` comment beside the field in config.py
    origin: str  # the file:line or override that set it; "default" when none did

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name


@lru_cache(maxsize=1)
def field_comments() -> dict[tuple[str, str], str]:
    """(dataclass name, field) -> the comment beside the field in config.py, continuation lines joined."""
    source = Path(inspect.getsourcefile(config)).read_text()
    comments = {tok.start[0]: tok.string.lstrip("#").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    lines = source.splitlines()
    found = {}
    for cls in (node for node in ast.parse(source).body if isinstance(node, ast.ClassDef)):
        for node in cls.body:
            if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
                continue
            parts = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
            line = node.end_lineno + 1
            while line <= len(lines) and lines[line - 1].strip().startswith("#"):
                parts.append(comments[line])
                line += 1
            found[(cls.name, node.target.id)] = " ".join(parts)
    return found


def describe_type(hint: Any) -> str:
    """`int >= 1`, `float in [0, 1)`, `one of auc | f1`, `true/false`, ... from a field annotation."""
    if typing.get_origin(hint) is Annotated:
        base, *extras = typing.get_args(hint)
        bounds = [describe_range(e) for e in extras if isinstance(e, Range)]
        return " ".join([describe_type(base), *bounds])
    if typing.get_origin(hint) is Literal:
        return "one of " + " | ".join(repr(a) if a == "" else str(a) for a in typing.get_args(hint))
    names = {bool: "true/false", int: "int", float: "float", str: "text", dict: "mapping", list: "list"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def describe_range(bound: Range) -> str:
    """Range(ge=0, lt=1) -> `in [0, 1)`; one-sided -> `>= 0`."""
    low = (f"[{bound.ge:g}" if bound.ge is not None else f"({bound.gt:g}" if bound.gt is not None else None)
    high = (f"{bound.le:g}]" if bound.le is not None else f"{bound.lt:g})" if bound.lt is not None else None)
    if low and high:
        return f"in {low}, {high}"
    if low:
        return (">= " if low[0] == "[" else "> ") + low[1:]
    return ("<= " if high[-1] == "]" else "< ") + high[:-1] if high else ""


def show(value: Any) -> str:
    """A value as it would be written in YAML (flow style)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(map(show, value)) + "]"
    return repr(value)


def keys(cfg: Config, origins: Origins | None = None, root: Path | None = None) -> list[Key]:
    """Every key of a config, top-level keys first, then section by section in declaration order."""
    comments, origins = field_comments(), origins or {}
    groups = [("", Config, cfg)] + [(s, cls, getattr(cfg, s)) for s, cls in sections().items()]
    out = []
    for section, cls, values in groups:
        for name, hint in field_hints(cls).items():
            if dataclasses.is_dataclass(hint):
                continue
            dotted = f"{section}.{name}" if section else name
            origin = config.origin_of(origins, dotted) or ("the experiment's file name" if dotted == "name"
                                                           and cfg.name else "default")
            out.append(Key(section, name, getattr(values, name), describe_type(hint),
                           comments.get((cls.__name__, name), ""), short_origin(origin, root)))
    return out


def short_origin(origin: str, root: Path | None) -> str:
    """An origin with the project folder left off its file path."""
    if root is not None and origin.startswith(f"{root}/"):
        return origin[len(str(root)) + 1:]
    return origin


def render_text(entries: list[Key], title: str) -> str:
    """The terminal view: per section, `key: value  type  set by`, the comment on the line below."""
    width = max(len(f"{k.name}: {show(k.value)}") for k in entries)
    kind_width = min(max(len(k.kind) for k in entries), 40)
    out, section = [title], None
    for k in entries:
        if k.section != section:
            section = k.section
            out.append(f"\n{section or '(top level)'}:")
        out.append(f"  {f'{k.name}: {show(k.value)}':<{width}}  {k.kind:<{kind_width}}  [{k.origin}]")
        out.append(f"      {k.comment}")
    return "\n".join(out) + "\n"


def render_markdown(entries: list[Key]) -> str:
    """docs/config.md: one table per section (key, default, type / allowed values, what it does)."""
    cell = lambda text: str(text).replace("|", "\\|")  # noqa: E731 - a table cell: escape the column separator
    out = ["# Config reference", "",
           f"Generated by `{REGENERATE}` from the field types and `# ...` comments in `competition/config.py`; "
           f"do not edit by hand. An experiment YAML states only what differs from these defaults (and from "
           f"`competition.yaml`); `./run.sh config exp001` shows an experiment's resolved values and which file "
           f"or override set each one.", ""]
    section = None
    for k in entries:
        if k.section != section:
            section = k.section
            out += ["", f"## {section or 'top level'}", "", "| key | default | type / allowed | what it does |",
                    "|---|---|---|---|"]
        out.append(f"| `{k.dotted}` | `{cell(show(k.value))}` | {cell(k.kind)} | {cell(k.comment)} |")
    return "\n".join(out) + "\n"


def split_words(words: list[str]) -> tuple[str, list[str]]:
    """[exp] [section.key=value ...] -> (experiment or "", overrides); any other word is refused."""
    name = words[0] if words and not is_override(words[0]) else ""
    overrides = words[1:] if name else words
    for word in overrides:
        if not is_override(word):
            raise override_error(word)
    return name, overrides


def main(argv: list[str] | None = None, project: Project | None = None) -> int:
    """CLI entry point."""
    parser = cli.parser(__doc__)
    parser.add_argument("words", nargs="*", metavar="[exp] [section.key=value]",
                        help="an experiment (else the defaults with competition.yaml) and overrides")
    parser.add_argument("--markdown", action="store_true", help="the reference of every key and its default")
    parser.add_argument("--write", action="store_true", help=f"with --markdown: write it to {DOCS_FILE}")
    args = parser.parse_intermixed_args(argv)  # overrides may follow the options

    def body() -> int:
        nonlocal project
        project = project or Project.from_env()  # inside cli.run: a bad KIT_HOME is one ERROR line
        if args.markdown or args.write:
            text = render_markdown(keys(Config()))
            if args.write:
                write_text(DOCS_FILE, text)
                cli.log.info("wrote %s", DOCS_FILE)
            else:
                sys.stdout.write(text)
            return 0
        name, overrides = split_words(args.words)
        cfg, origins, where = config.resolve_config(name, overrides, project)
        chain = " <- ".join(dict.fromkeys(short_origin(o.rsplit(":", 1)[0] if not o.startswith("override") else
                                                       "overrides", project.root) for o in origins.values()))
        sys.stdout.write(render_text(keys(cfg, origins, project.root), f"# {cfg.name or 'defaults'}: "
                                     f"{chain or 'defaults only'}"))
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
