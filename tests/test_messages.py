"""Messages that help instead of contradicting themselves, as classes over every command and every config key:

- an unknown option of any command is told the near option of that command's parser (`--shfit` -> --shift);
  an option left without its value is told what it takes;
- NaN or an infinity, in any spelling, for any numeric config key or numeric option is refused as "not a finite
  number" (never "write a number without quotes, e.g. nan");
- a boolean spelling (true/yes/1, false/no/0) for an auto|on|off key is told 'on' / 'off'; a wrong case is told
  the right spelling;
- audit's words in any order: a folder is the data, key=value an override, anything else names both.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Literal

import pytest

from competition import audit, options
from competition.config import ConfigError, field_hints, resolve_config, sections
from competition.paths import PathNotFound
from competition.project import Project
from tests.conftest import call_kit, make_competition
from tests.test_cli_accidents import CLI_MODULES, PARSERS, minimal_argv, parse


def misspellings(option: str) -> list[str]:
    """Three typos of a long option: two letters swapped, one dropped, one doubled (never the option itself)."""
    body = option[2:]
    mid = len(body) // 2
    swapped = body[:mid - 1] + body[mid] + body[mid - 1] + body[mid + 1:]
    found = [swapped, body[:mid] + body[mid + 1:], body[:mid] + body[mid] + body[mid:]]
    return [f"--{typo}" for typo in dict.fromkeys(found) if typo != body]


def longest_option(module: str) -> str | None:
    """The command's longest long option (a distinctive name to misspell), None when it has only --help."""
    names = [s for s in PARSERS[module]._option_string_actions if s.startswith("--") and s != "--help"]
    return max(names, key=len) if names else None


TYPO_CASES = [(m, longest_option(m), typo) for m in CLI_MODULES if longest_option(m)
              for typo in misspellings(longest_option(m))]


@pytest.mark.parametrize(("module", "option", "typo"), TYPO_CASES)
@pytest.mark.parametrize("form", ["alone", "with_value", "first"])
def test_a_misspelt_option_is_told_the_right_one(module, option, typo, form):
    argv = minimal_argv(module)
    word = f"{typo}=1" if form == "with_value" else typo
    code, err = parse(PARSERS[module], [word] + argv if form == "first" else argv + [word])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "unrecognized arguments" in lines[0] and f"(did you mean {option}?)" in lines[0], lines[0]


@pytest.mark.parametrize("module", [m for m in CLI_MODULES if longest_option(m)])
def test_an_option_near_nothing_gets_no_guess(module):
    code, err = parse(PARSERS[module], minimal_argv(module) + ["--zqxjkw"])
    assert code == 2 and "did you mean" not in err and "--zqxjkw" in err


def test_two_misspelt_options_are_each_told_theirs():
    code, err = parse(PARSERS["ensemble"], ["a", "b", "--methd", "mean", "--forse"])
    assert code == 2 and "--method for --methd" in err and "--force for --forse" in err


def test_the_run_sh_examples():
    assert "did you mean --shift?" in parse(PARSERS["audit"], ["--shfit"])[1]
    assert "did you mean --method?" in parse(PARSERS["ensemble"], ["a", "b", "--methd", "mean"])[1]


VALUED = [(m, s, a.type) for m in CLI_MODULES for s, a in PARSERS[m]._option_string_actions.items()
          if s.startswith("--") and isinstance(a.type, options.Option) and a.nargs is None]


@pytest.mark.parametrize(("module", "option", "kind"), VALUED, ids=[f"{m}{s}" for m, s, _ in VALUED])
def test_an_option_without_its_value_says_what_it_takes(module, option, kind):
    code, err = parse(PARSERS[module], minimal_argv(module) + [option])
    assert code == 2 and f"expected one argument: give {kind.describe()}" in err, err


NON_FINITE = ["nan", "NaN", "NAN", "inf", "-inf", "+inf", "Infinity", "-Infinity", ".nan", ".NaN", ".inf", "-.inf",
              "1e999", "-1e999"]
NUMBER_OPTIONS = [(m, s) for m, s, kind in VALUED if isinstance(kind, options.Number)]


@pytest.mark.parametrize(("module", "option"), NUMBER_OPTIONS)
@pytest.mark.parametrize("text", NON_FINITE)
def test_a_numeric_option_refuses_non_finite_numbers_as_such(module, option, text):
    code, err = parse(PARSERS[module], minimal_argv(module) + [f"{option}={text}"])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and option in lines[0], err
    assert "finite number" in lines[0], lines[0]


def base_type(hint: typing.Any) -> typing.Any:
    """int/float/Literal[...] of a field, Annotated unwrapped."""
    return typing.get_args(hint)[0] if typing.get_origin(hint) is Annotated else hint


FIELDS = {f"{name}.{key}": base_type(hint) for name, cls in sections().items()
          for key, hint in field_hints(cls).items()}
NUMERIC_KEYS = sorted(k for k, hint in FIELDS.items() if hint in (int, float))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    """A tiny competition project to resolve configs against."""
    return Project(make_competition(tmp_path_factory.mktemp("messages")))


def refusal(project: Project, overrides: list[str], name: str = "") -> str:
    """The one-line ConfigError message resolving these overrides raises."""
    with pytest.raises(ConfigError) as caught:
        resolve_config(name, overrides, project, check_model=False)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_every_numeric_key_is_covered():
    assert "data.match_test" in NUMERIC_KEYS and "train.epochs" in NUMERIC_KEYS and len(NUMERIC_KEYS) > 20


@pytest.mark.parametrize("key", NUMERIC_KEYS)
def test_a_numeric_key_refuses_non_finite_numbers_without_contradiction(project, key):
    for text in NON_FINITE:  # every spelling, one test item per key
        message = refusal(project, [f"{key}={text}"])
        assert f"`{key}`" in message and ("finite number" in message or "whole number" in message), (text, message)
        assert "NaN and infinity are not values here" in message and "without quotes" not in message, message
        assert f"e.g. `{key}: {text}`" not in message and f"{key}={text}" not in message.split(": ", 1)[1]


@pytest.mark.parametrize("key", ["data.match_test", "train.lr", "train.epochs"])
@pytest.mark.parametrize("text", ["nan", ".nan", "-.inf", "inf"])
def test_a_non_finite_number_in_a_yaml_file_is_refused_as_such(project, key, text):
    section, name = key.split(".")
    (project.root / "experiments").mkdir(exist_ok=True)
    (project.root / "experiments" / "nf001.yaml").write_text(f"{section}:\n  {name}: {text}\n")
    message = refusal(project, [], "nf001")
    assert "nf001.yaml" in message and f"`{key}`" in message and "NaN and infinity" in message, message


SWITCH_KEYS = sorted(k for k, hint in FIELDS.items()
                     if typing.get_origin(hint) is Literal and {"on", "off"} <= set(typing.get_args(hint)))
ON = ["true", "True", "yes", "Yes", "y", "1", "enabled"]
OFF = ["false", "False", "no", "No", "n", "0", "disabled"]


def test_switch_keys_are_found():
    assert "data.test_like_oof" in SWITCH_KEYS


@pytest.mark.parametrize("key", SWITCH_KEYS)
@pytest.mark.parametrize(("text", "meant"), [(t, "on") for t in ON] + [(t, "off") for t in OFF])
def test_a_boolean_spelling_of_an_on_off_key_is_told_on_or_off(project, key, text, meant):
    message = refusal(project, [f"{key}={text}"])
    assert f"`{key}`" in message and f"(did you mean '{meant}'?)" in message, message


LITERAL_WORDS = [(k, word) for k, hint in sorted(FIELDS.items()) if typing.get_origin(hint) is Literal
                 for word in typing.get_args(hint) if isinstance(word, str) and word.upper() != word]


@pytest.mark.parametrize(("key", "word"), LITERAL_WORDS)
def test_a_choice_in_the_wrong_case_is_told_the_spelling(project, key, word):
    message = refusal(project, [f"{key}={word.upper()}"])
    assert f"(did you mean '{word}'?)" in message, message


# audit's words: the data folder anywhere among the overrides, in several spellings
FOLDER_SPELLINGS = ["mydata", "./mydata", "mydata/", "ABSOLUTE"]
OVERRIDES = ["competition.train_csv=t.csv", "folds.seed=7"]


@pytest.fixture
def audit_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder holding a data folder `mydata`, the current folder."""
    (tmp_path / "mydata").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("KIT_CWD", raising=False)
    return tmp_path


@pytest.mark.parametrize("spelling", FOLDER_SPELLINGS)
@pytest.mark.parametrize("at", [0, 1, 2])
def test_audit_reads_a_folder_as_the_data_wherever_it_stands(audit_home, spelling, at):
    folder = str(audit_home / "mydata") if spelling == "ABSOLUTE" else spelling
    words = OVERRIDES[:at] + [folder] + OVERRIDES[at:]
    data, overrides = audit.data_and_overrides(words, Project(audit_home))
    assert data == folder and overrides == OVERRIDES


@pytest.mark.parametrize("word", ["nodata", "no/such/folder", "mydta"])
@pytest.mark.parametrize("at", [0, 1, 2])
def test_audit_names_both_readings_of_a_word_that_is_neither(audit_home, word, at):
    words = OVERRIDES[:at] + [word] + OVERRIDES[at:]
    with pytest.raises(PathNotFound) as caught:
        audit.data_and_overrides(words, Project(audit_home))
    message = str(caught.value)
    assert "neither a data folder" in message and "section.key=value" in message and repr(word) in message


@pytest.mark.parametrize(("word", "fix"), [("epochs=3", "train.epochs=3"), ("seed=7", ".seed=7")])
def test_audit_tells_a_bare_key_its_section(audit_home, word, fix):
    with pytest.raises(ConfigError, match=fix.replace(".", r"\.")):
        audit.data_and_overrides(["mydata", word], Project(audit_home))


def test_audit_takes_one_folder(audit_home):
    (audit_home / "other").mkdir()
    with pytest.raises(ConfigError, match="one data folder"):
        audit.data_and_overrides(["mydata", "other"], Project(audit_home))


@pytest.mark.parametrize("argv", [["--shift", "mydata"], ["mydata", "--shift"], ["folds.seed=1", "--shift", "mydata"]])
def test_audit_shift_with_a_folder_points_at_the_shift_command(tmp_path, argv):
    home = make_competition(tmp_path)
    (home / "mydata").mkdir()
    result = call_kit(home, "competition.audit", *argv, check=False)
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert f"./run.sh audit --shift competition.data_dir={(home / 'mydata').resolve()}`" in errors[0], errors[0]


@pytest.mark.parametrize("spelling", ["mydata", "./mydata", "mydata/"])
@pytest.mark.parametrize("module", ["competition.shift", "competition.folds"])
def test_a_folder_given_where_overrides_go_is_named_a_folder(tmp_path, module, spelling):
    """`./run.sh audit --shift data` runs the shift check with the word `data` as an override."""
    home = make_competition(tmp_path)
    (home / "mydata").mkdir()
    result = call_kit(home, module, spelling, check=False)
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert "a folder, not section.key=value" in errors[0] and "competition.data_dir=" in errors[0], errors[0]
    assert f"./run.sh audit {spelling}" in errors[0]


def test_a_word_that_is_no_folder_keeps_the_override_message(tmp_path):
    home = make_competition(tmp_path)
    result = call_kit(home, "competition.shift", "nodata", check=False)
    assert result.returncode == 2 and "expected section.key=value" in result.stderr and "a folder" not in result.stderr
