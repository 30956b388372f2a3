"""Command-line options with ranges (competition.options): every numeric or enumerated option of every CLI is
declared with a range, and a bad value is refused at parse time with ONE line naming the option, the value and
what is allowed (exit 2). The CLIs' parsers are built by calling each `main` with parse_args intercepted, so a
new CLI or option is walked without being listed here."""

from __future__ import annotations

import argparse
import importlib
import math
from pathlib import Path

import pytest

from competition import cli, options
from competition.project import Project
from tests.conftest import call_kit

PACKAGE = Path(__file__).resolve().parent.parent / "competition"
CLI_MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if "def main(" in p.read_text())


class Captured(Exception):
    """Raised instead of parsing, carrying the parser a CLI built."""


def build_parser(module: str) -> argparse.ArgumentParser:
    """The parser `competition.<module>.main` builds (its parse_args intercepted: nothing else runs)."""
    original = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_intermixed_args

    def capture(self, args=None, namespace=None):
        raise Captured(self)

    argparse.ArgumentParser.parse_args = argparse.ArgumentParser.parse_intermixed_args = capture
    try:
        importlib.import_module(f"competition.{module}").main([], project=Project(Path("/nonexistent-kit-home")))
    except Captured as done:
        return done.args[0]
    finally:
        argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_intermixed_args = original
    raise AssertionError(f"competition.{module}.main returned without parsing its command line")


def _parsers() -> dict[str, argparse.ArgumentParser | Exception]:
    out: dict = {}
    for module in CLI_MODULES:
        try:
            out[module] = build_parser(module)
        except Exception as err:  # noqa: BLE001 - reported by test_every_cli_builds_a_kit_parser
            out[module] = err
    return out


PARSERS = _parsers()


def option_name(action: argparse.Action) -> str:
    """--long-name for an optional, the dest for a positional."""
    return max(action.option_strings, key=len) if action.option_strings else action.dest


def typed_options() -> list[tuple[str, str, argparse.Action]]:
    """(module, option, action) for every option declared with an options type, across every CLI."""
    found = []
    for module, parser in PARSERS.items():
        if isinstance(parser, argparse.ArgumentParser):
            found += [(module, option_name(a), a) for a in parser._actions if isinstance(a.type, options.Option)]
    return found


TYPED = typed_options()


def unchecked(parser: argparse.ArgumentParser) -> list[str]:
    """Options that are numeric or enumerated without an options type (a bare int/float, a choices= list, or a
    numeric default parsed as text)."""
    bad = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or isinstance(action.type, options.Option):
            continue
        numeric_default = isinstance(action.default, (int, float)) and not isinstance(action.default, bool)
        if action.type in (int, float, complex) or action.choices is not None or numeric_default:
            bad.append(option_name(action))
    return bad


@pytest.mark.parametrize("module", CLI_MODULES)
def test_every_cli_builds_a_kit_parser_whose_numeric_and_enumerated_options_have_ranges(module):
    parser = PARSERS[module]
    if isinstance(parser, Exception):
        raise parser
    assert isinstance(parser, cli.KitParser), f"{module} builds its parser without cli.parser"
    assert unchecked(parser) == [], f"{module}: declare these with competition.options (a type with a range)"


def test_the_walker_catches_options_without_a_range():
    p = cli.parser("x")
    p.add_argument("--n", type=int, default=3)
    p.add_argument("--mode", choices=("a", "b"))
    p.add_argument("--rate", default=0.5)
    p.add_argument("--ok", type=options.number(int, ge=1, le=9), default=2)
    p.add_argument("--flag", action="store_true")
    assert unchecked(p) == ["--n", "--mode", "--rate"]


def test_the_known_options_are_walked():
    names = {(m, o) for m, o, _ in TYPED}
    assert {("serve", "--max-mb"), ("serve", "--max-queue"), ("serve", "--max-megapixels"), ("serve", "--port"),
            ("serve", "--device"), ("export", "--opset"), ("ensemble", "--method"), ("kaggle_kernel", "action"),
            ("audit", "--threshold"), ("shift", "--threshold")} <= names
    if isinstance(PARSERS.get("experiment"), argparse.ArgumentParser):
        assert {("experiment", "--folds"), ("experiment", "--devices")} <= names


def bad_values(kind: options.Option) -> list[str]:
    """Values the option must refuse, generated from its declared range: words, empty, NaN, inf, huge, just
    outside each bound, negative and zero where those are outside, fractions for integers, misspelt choices."""
    words = ["abc", "1O", "nan", "NaN", "inf", "-inf", "1e999", str(10**30), "0x10"]
    if isinstance(kind, options.Number):
        b, values = kind.bound, words + [""]
        if b.ge is not None:
            values.append(f"{b.ge - (1 if kind.kind is int else 1e-3):g}")
        if b.gt is not None:
            values += [f"{b.gt:g}", f"{b.gt - 1:g}"]
        if b.le is not None:
            values += [f"{b.le + 1:g}", str(int(b.le) * 1000 + 1)]
        if b.lt is not None:
            values.append(f"{b.lt:g}")
        values += [v for v in ("-1", "0", "-0.5") if not options.within(float(v), b)]
        if kind.kind is int:
            values += ["1.5", "2.0"]
        return values
    if isinstance(kind, options.Choice):
        first = kind.values[0]
        return ["", "nope", first + "x", first.upper() if first.upper() != first else first.lower() + "Q", "1"]
    if isinstance(kind, options.NumberList):
        return words + ["-1", "0,0", "1.5", "0,,1", "0;1", ",", str(10**12)] + ([] if kind.as_text else [""])
    return words[:3] + ["-1", "bogus value", "cuda:x", "2.7"]


CASES = [pytest.param(module, name, bad, id=f"{module}-{name}-{bad!r}")
         for module, name, action in TYPED for bad in dict.fromkeys(bad_values(action.type))]


@pytest.mark.parametrize(("module", "name", "bad"), CASES)
def test_a_bad_value_is_refused_at_parse_time_in_one_line(module, name, bad, tmp_path):
    action = next(a for m, o, a in TYPED if (m, o) == (module, name))
    with pytest.raises(argparse.ArgumentTypeError):
        action.type(bad)
    argv = [f"{name}={bad}"] if action.option_strings else [bad]
    result = call_kit(tmp_path, f"competition.{module}", *argv, check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, lines
    assert name in lines[0] and repr(bad) in lines[0] and action.type.describe() in lines[0], lines[0]
    assert "Traceback" not in result.stderr and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("module", "name"), sorted({(m, o) for m, o, _ in TYPED}))
def test_defaults_and_bounds_are_accepted(module, name):
    action = next(a for m, o, a in TYPED if (m, o) == (module, name))
    kind = action.type
    if action.default not in (None, "") and not isinstance(action.default, str):
        assert kind(str(action.default)) == action.default
    if isinstance(kind, options.Number):
        for edge in (kind.bound.ge, kind.bound.le):
            if edge is not None:
                assert kind(f"{edge:g}") == edge
    if isinstance(kind, options.Choice):
        assert [kind(v) for v in kind.values] == list(kind.values)
    assert kind.describe() in " ".join((action.help or "").split())  # the range is in --help


def test_number_parsing_rules():
    count = options.number(int, ge=1, le=10)
    assert count("3") == 3 and count(" 10 ") == 10
    for bad in ("0", "11", "2.5", "nan", "three", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="an integer >= 1 and <= 10"):
            count(bad)
    share = options.fraction(low_open=True)
    assert share("1") == 1.0 and share("1e-3") == 1e-3
    for bad in ("0", "1.0001", "nan", "inf", "-0"):
        with pytest.raises(argparse.ArgumentTypeError):
            share(bad)
    assert options.port()("8000") == 8000 and not options.within(math.nan, options.port().bound)
    assert options.number_list(what="fold numbers", as_text=True)("2, 0") == "2,0"
    assert options.number_list()("2,0") == [2, 0]
    with pytest.raises(argparse.ArgumentTypeError, match="did you mean 'mean'"):
        options.choice("auto", "mean", "rank")("Mean")


@pytest.mark.parametrize("argv", [["serve", "exp", "--nope"], ["ensemble"], ["compare"], ["kaggle_kernel", "push"]])
def test_any_command_line_mistake_is_one_line(argv, tmp_path):
    result = call_kit(tmp_path, f"competition.{argv[0]}", *argv[1:], check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and "error:" in lines[0] and "--help" in lines[0], lines
