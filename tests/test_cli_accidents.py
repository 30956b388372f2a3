"""Two command-line accident classes, for every command.

1. Words typed after the options: `folds --force folds.n_splits=3`, `ensemble exp001 --method mean exp002`,
   `submit x.csv --dry-run competition.metric=f1`. KitParser.parse_args parses intermixed, so every command built
   with cli.parser reads them as if typed first; an unknown option anywhere is still ONE line naming it, exit 2.
2. `python -m competition.<module>` for a module that is not a command (and `python -m competition`): refused by
   competition/__init__.py with one line naming it, exit 2; every command module still answers --help.

The variants are generated: every arrangement of each command's positionals among its options, every unknown-option
spelling at every position of every command, every module of the package under `python -m`.
"""

from __future__ import annotations

import argparse
import importlib
import io
import itertools
import os
import subprocess
import sys
import warnings
from contextlib import redirect_stderr
from pathlib import Path

import pytest

import competition
from competition import cli, options
from competition.project import Project
from tests.conftest import REPO, call_kit

PACKAGE = REPO / "competition"
CLI_MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__" and "def main(" in p.read_text())

# command -> (its positionals: single ones first, then the list's words; option groups typed with them). A command
# whose parser has a list positional (nargs * or +) must be here: test_every_list_command_has_variants.
LISTS = {
    "audit": (["mydata", "competition.train_csv=t.csv", "folds.seed=7"], [["--force"], ["--threshold", "0.8"]]),
    "compare": (["exp001", "exp002", "exp003"], [["--force"], ["--out", "table.md"]]),
    "config_reference": (["exp001", "train.epochs=2"], [["--markdown"]]),
    "ensemble": (["exp001", "exp002", "competition.metric=f1"], [["--method", "mean"], ["--force"], ["--name", "b1"]]),
    "experiment": (["exp001", "train.epochs=1", "train.lr=0.001"], [["--folds", "0"], ["--restart"]]),
    "explain": (["exp001", "a.png", "b.png"], [["--force"], ["--out", "cams"], ["--device", "cpu"]]),
    "folds": (["folds.n_splits=3", "folds.seed=7"], [["--force"]]),
    "kaggle_predict": (["blend1", "competition.data_dir=/d", "folds.seed=1"], [["--out", "s.csv"], ["--force"]]),
    "predict": (["exp001", "a.png", "photos"], [["--csv", "o.csv"], ["--force"], ["--device", "cpu"]]),
    "shift": (["folds.shift_sample=500", "folds.seed=1"], [["--threshold", "0.7"]]),
    "submit": (["x.csv", "competition.metric=f1", "folds.seed=1"], [["--dry-run"], ["-m", "first try"]]),
}
UNKNOWN = ["--bogus", "--no-such-option=3", "-Z"]  # spellings of an option no command has


class Captured(Exception):
    """Raised instead of parsing, carrying the parser a CLI built."""


def build_parser(module: str) -> argparse.ArgumentParser:
    """The parser `competition.<module>.main` builds (parsing intercepted: nothing else runs)."""
    base = argparse.ArgumentParser
    saved = base.parse_args, base.parse_intermixed_args, base.parse_known_args

    def capture(self, args=None, namespace=None):  # noqa: ANN001, ANN202
        raise Captured(self)

    base.parse_args = base.parse_intermixed_args = base.parse_known_args = capture
    try:
        importlib.import_module(f"competition.{module}").main([], project=Project(Path("/nonexistent-kit-home")))
    except Captured as done:
        return done.args[0]
    finally:
        base.parse_args, base.parse_intermixed_args, base.parse_known_args = saved
    raise AssertionError(f"competition.{module}.main returned without parsing its command line")


PARSERS = {m: build_parser(m) for m in CLI_MODULES}


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace | int, str]:
    """(namespace or exit code, stderr) of the command's own parse; a warning fails the test."""
    err = io.StringIO()
    with warnings.catch_warnings(), redirect_stderr(err):
        warnings.simplefilter("error")  # argparse's intermixed parsing warns where it misreads a positional
        try:
            return parser.parse_args(argv), err.getvalue()
        except SystemExit as stop:
            return stop.code, err.getvalue()


def list_positional(parser: argparse.ArgumentParser) -> argparse.Action | None:
    """The positional taking several words (overrides, members, images), if the parser has one."""
    found = [a for a in parser._get_positional_actions() if a.nargs in ("*", "+")]
    return found[0] if found else None


def arrangements(words: list[str], groups: list[list[str]]) -> list[list[str]]:
    """Every argv with the words in order and the option groups in order, the words spread over every slot between
    the groups (before all, between any two, after all)."""
    found = []
    for slots in itertools.combinations_with_replacement(range(len(groups) + 1), len(words)):
        argv = []
        for slot in range(len(groups) + 1):
            argv += [w for w, s in zip(words, slots) if s == slot] + (groups[slot] if slot < len(groups) else [])
        found.append(argv)
    return found


VARIANTS = [(m, argv) for m, (words, groups) in LISTS.items() for argv in arrangements(words, groups)]


def test_every_list_command_has_variants():
    with_lists = {m for m, p in PARSERS.items() if list_positional(p) is not None}
    assert with_lists == set(LISTS), "a command with a list positional needs its words and options in LISTS"


@pytest.mark.parametrize("module", CLI_MODULES)
def test_every_command_parses_with_the_kit_parser(module):
    parser = PARSERS[module]
    assert isinstance(parser, cli.KitParser) and parser.intermixable()


@pytest.mark.parametrize("module", sorted(LISTS))
def test_words_first_parse_as_before_and_every_option_is_read(module):
    """The spelling that always worked (words, then options) reads the same with plain argparse, takes the list
    words into the list positional, and sets every option typed."""
    words, groups = LISTS[module]
    parser, argv = PARSERS[module], words + sum(groups, [])
    ns, err = parse(parser, argv)
    assert isinstance(ns, argparse.Namespace), err
    assert ns == argparse.ArgumentParser.parse_args(parser, argv)
    dest = list_positional(parser).dest
    singles = len(parser._get_positional_actions()) - 1
    assert getattr(ns, dest) == words[singles:]
    for group in groups:
        action = parser._option_string_actions[group[0]]
        assert getattr(ns, action.dest) != action.default, f"{module}: {group} not read"


@pytest.mark.parametrize(("module", "argv"), VARIANTS, ids=[f"{m}:{' '.join(a)}" for m, a in VARIANTS])
def test_words_anywhere_among_the_options_parse_alike(module, argv):
    words, groups = LISTS[module]
    parser = PARSERS[module]
    reference, _ = parse(parser, words + sum(groups, []))
    ns, err = parse(parser, argv)
    assert ns == reference, f"{module} {argv}: {err}"


def minimal_argv(module: str) -> list[str]:
    """A command line the command's parser accepts: its LISTS words, else a word for each required positional."""
    if module in LISTS:
        return list(LISTS[module][0])
    fill = []
    for action in PARSERS[module]._get_positional_actions():
        if action.nargs not in ("?", "*"):
            fill.append(action.type.values[0] if isinstance(action.type, options.Choice) else "exp001")
    return fill


UNKNOWN_CASES = [(m, spelling, at) for m in CLI_MODULES for spelling in UNKNOWN for at in ("first", "middle", "last")]


@pytest.mark.parametrize(("module", "spelling", "at"), UNKNOWN_CASES)
def test_an_unknown_option_anywhere_is_one_line_naming_it(module, spelling, at):
    argv = minimal_argv(module)
    ok, err = parse(PARSERS[module], argv)
    assert isinstance(ok, argparse.Namespace), f"{module} {argv}: {err}"
    index = {"first": 0, "middle": len(argv) // 2, "last": len(argv)}[at]
    code, err = parse(PARSERS[module], argv[:index] + [spelling] + argv[index:])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "unrecognized arguments" in lines[0] and spelling in lines[0].split("unrecognized arguments:")[1]


@pytest.mark.parametrize("module", sorted(LISTS))
def test_commands_read_words_after_options_end_to_end(module, tmp_path):
    """The real main on an empty project: it fails on the missing project, never on the command line."""
    words, groups = LISTS[module]
    singles = len(PARSERS[module]._get_positional_actions()) - 1
    argv = words[:singles] + sum(groups, []) + words[singles:]  # `submit x.csv --dry-run competition.metric=f1`
    result = call_kit(tmp_path, f"competition.{module}", *argv, check=False)
    for refusal in ("unrecognized arguments", "the following arguments are required", "usage:"):
        assert refusal not in result.stderr + result.stdout, f"{module} {argv}"


def test_a_parser_argparse_cannot_intermix_falls_back_to_plain_parsing():
    """Subparsers or REMAINDER: argparse's intermixed parsing refuses them (TypeError); KitParser parses plainly."""
    with_sub = cli.parser("doc")
    sub = with_sub.add_subparsers(dest="verb")
    sub.add_parser("go").add_argument("--fast", action="store_true")
    assert not with_sub.intermixable() and vars(with_sub.parse_args(["go", "--fast"])) == {"verb": "go", "fast": True}
    rest = cli.parser("doc")
    rest.add_argument("--x", action="store_true")
    rest.add_argument("tail", nargs=argparse.REMAINDER)
    assert not rest.intermixable() and rest.parse_args(["--x", "a", "--b"]).tail == ["a", "--b"]
    with pytest.raises(TypeError):
        rest.parse_intermixed_args(["a"])  # what the check avoids


# ---------------------------------------------------------------- python -m competition.<not a command>

MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
COMMANDS = [m for m in MODULES if competition.is_command(m)]
NOT_COMMANDS = [m for m in MODULES if m not in COMMANDS]
ODD_NAMES = ["competition", "competition.nonexistent", "competition.experiment.py", "competition.__init__"]


def run_python(*args: str) -> subprocess.CompletedProcess:
    """A fresh interpreter on the kit, in the repo, with no project around it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "KIT_HOME": "/nonexistent-kit-home"}
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_the_commands_are_the_clis():
    assert COMMANDS == CLI_MODULES and {"experiment", "folds", "ensemble", "submit"} <= set(COMMANDS)
    assert {"assemble", "metrics", "model", "cli", "kaggle_script"} <= set(NOT_COMMANDS)


@pytest.mark.parametrize("target", [f"competition.{m}" for m in NOT_COMMANDS] + ODD_NAMES)
def test_python_m_of_a_module_that_is_not_a_command_is_refused(target):
    proc = run_python("-m", target, "exp001")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert f"{target} is not a command" in lines[0] and proc.stdout == ""
    assert all(command in lines[0] for command in ("experiment", "folds", "ensemble", "submit"))  # the fix


@pytest.mark.parametrize("flags", [["-B", "-m", "competition.assemble"], ["-W", "ignore", "-m", "competition.model"],
                                   ["-mcompetition.metrics"]])
def test_the_refusal_sees_through_interpreter_options(flags):
    proc = run_python(*flags)
    assert proc.returncode == 2 and "is not a command" in proc.stderr


# Real `python -m` runs of the commands whose --help starts no torch (under 1 s each; the others take ~7 s of CPU
# each). Every command: its --help in-process (tests/test_structure.py) and the refusal passing it (below).
LIGHT = ["bundle", "compare", "config_reference", "kaggle_kernel", "submit"]


@pytest.mark.parametrize("module", LIGHT)
def test_python_m_of_a_command_answers_help(module):
    assert module in COMMANDS
    proc = run_python("-m", f"competition.{module}", "--help")
    assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize("module", COMMANDS)
def test_the_refusal_lets_every_command_run(module):
    assert competition.not_a_command(["-m", "--help"], [sys.executable, "-m", f"competition.{module}", "--help"]) == ""
    assert competition.not_a_command(["-m"], [sys.executable, f"-mcompetition.{module}"]) == ""


EXE = sys.executable
QUIET = [  # (sys.argv while `competition` is imported, sys.orig_argv): none of these is refused
    (["-c"], [EXE, "-c", "import competition"]),
    (["-m", "-q"], [EXE, "-m", "pytest", "-q"]),  # pytest's package being found under -m
    ([str(REPO / ".venv/lib/pytest/__main__.py"), "-q"], [EXE, "-m", "pytest", "-q"]),  # pytest running
    (["-m", "-f", "k.json"], [EXE, "-m", "ipykernel_launcher", "-f", "k.json"]),  # a notebook's kernel
    ([""], [EXE]),  # the REPL
    (["run.py", "-m", "x"], [EXE, "run.py", "-m", "x"]),
    (["-m", "exp001", "--folds", "0"], [EXE, "-m", "competition.experiment", "exp001", "--folds", "0"]),  # run.sh
    (["-m", "x"], [EXE, "-u", "-m", "competition.folds", "x"]),  # torchrun's spelling
    (["-m"], [EXE, "-mcompetition.submit"]),
    (["-m"], []),  # an embedding interpreter without orig_argv
]


@pytest.mark.parametrize(("argv", "orig_argv"), QUIET)
def test_the_refusal_never_fires_outside_python_m_competition_non_command(argv, orig_argv):
    assert competition.not_a_command(argv, orig_argv) == ""


def test_import_competition_stays_light():
    code = "import sys, competition; print(sorted(m for m in sys.modules if m.startswith(('competition', 'torch'))))"
    proc = run_python("-c", code)
    assert proc.returncode == 0 and proc.stdout.strip() == "['competition']", proc.stderr
