"""Bad inputs a stranger found: experiments named like run.sh commands, `leaderboard` in a folder without
competition.yaml, and train.batch_size=1 (accepted, then a BatchNorm traceback)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from competition import folds, leaderboard
from competition.config import ConfigError, load_config
from competition.project import RUN_SH_COMMANDS, Project
from tests.conftest import REPO, call_kit, make_competition, smoke_experiment, write_yaml


def run_sh_commands() -> list[str]:
    """The first words run.sh dispatches as commands: every pattern of its `case "$cmd" in ... esac` but `*`."""
    text = (REPO / "run.sh").read_text()
    block = text[text.index('case "$cmd" in'):text.index("\nesac")]
    words = [w for pattern in re.findall(r"^\s*([\w|*-]+)\)", block, re.MULTILINE) for w in pattern.split("|")]
    return sorted(w for w in words if w != "*")


COMMANDS = run_sh_commands()
NOT_COMMANDS = ["Report", "TEST", "report_exp", "reports", "tests", "config2", "exp001"]  # run.sh's case is exact


def test_run_sh_commands_are_the_reserved_names():
    assert {"test", "report", "ensemble", "leaderboard", "assemble", "kaggle", "config"} <= set(COMMANDS)
    assert set(COMMANDS) == set(RUN_SH_COMMANDS), "update RUN_SH_COMMANDS in competition/project.py to run.sh's case"


def refusal(name: str, file: str = "") -> list[str]:
    """The parts of the reserved-name refusal: the command, the file to rename and an example new name."""
    file = file or f"experiments/{name}.yaml"
    return [f"`{name}` is a run.sh command", f"`./run.sh {name}` cannot train this experiment", f"rename {file}",
            f"{name}_exp"]


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("spelling", ["{}", "{}.yaml", "experiments/{}.yaml", "ABSOLUTE"])
def test_load_config_refuses_a_command_name(tmp_path, name, spelling):
    smoke_experiment(tmp_path, name)
    typed = str(tmp_path / "experiments" / f"{name}.yaml") if spelling == "ABSOLUTE" else spelling.format(name)
    with pytest.raises(ConfigError) as err:
        load_config(typed, [], Project(tmp_path), check_model=False)
    message = str(err.value)
    assert "\n" not in message and all(part in message for part in refusal(name)), message


@pytest.mark.parametrize("name", ["report", "test", "config"])
def test_a_yml_file_and_one_outside_experiments_are_named(tmp_path, name):
    write_yaml(tmp_path / "experiments" / f"{name}.yml", {"train": {"epochs": 1}})
    with pytest.raises(ConfigError, match=re.escape(f"rename experiments/{name}.yml (e.g. {name}_exp.yml)")):
        load_config(name, [], Project(tmp_path), check_model=False)
    elsewhere = write_yaml(tmp_path / "drafts" / f"{name}.yaml", {"train": {"epochs": 1}})
    with pytest.raises(ConfigError, match=re.escape(f"rename drafts/{name}.yaml")):
        load_config(str(elsewhere), [], Project(tmp_path), check_model=False)


@pytest.mark.parametrize("name", NOT_COMMANDS)
def test_names_that_are_not_commands_load(tmp_path, name):
    smoke_experiment(tmp_path, name)
    assert load_config(name, [], Project(tmp_path), check_model=False).name == name


@pytest.fixture(scope="module")
def competition_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny competition for the command tests (they only read it: each refuses before writing)."""
    return make_competition(tmp_path_factory.mktemp("reserved"))


@pytest.mark.parametrize("name", COMMANDS)
@pytest.mark.parametrize("command", [("competition.experiment", "{}"), ("competition.experiment", "{}.yaml"),
                                     ("competition.ensemble", "{}", "e1"), ("competition.report", "{}"),
                                     ("competition.export", "{}"), ("competition.config_reference", "{}")],
                         ids=["experiment", "experiment-yaml", "ensemble", "report", "export", "config"])
def test_every_command_refuses_a_command_name(competition_home, name, command):
    """The refusal, not "has not run yet - run ./run.sh report first" (advice that loops), and nothing written."""
    home = competition_home
    smoke_experiment(home, name)
    smoke_experiment(home, "e1")
    try:
        module, *args = command
        result = call_kit(home, module, *(a.format(name) for a in args), check=False)
    finally:
        (home / "experiments" / f"{name}.yaml").unlink()
    assert result.returncode == 2, result.stderr
    assert all(part in result.stderr for part in refusal(name)), result.stderr
    assert "has not run yet" not in result.stderr and "Traceback" not in result.stderr
    assert not (home / "experiments" / name).exists()


# --- leaderboard in a folder that is not a project: refused like folds, nothing written

def not_a_project(tmp_path: Path, kind: str) -> Path:
    """A folder KIT_HOME might name by mistake: empty, a competition's data folder, experiments/ without YAML."""
    if kind == "empty":
        return tmp_path
    if kind == "data folder":
        return make_competition(tmp_path / "project") / "data"
    write_yaml(tmp_path / "experiments" / "exp001.yaml", {"train": {"epochs": 1}})
    return tmp_path


def listing(folder: Path) -> list[str]:
    """Every file and folder under folder, relative to it."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


FOLDERS = ["empty", "data folder", "experiments but no competition.yaml"]


@pytest.mark.parametrize("kind", FOLDERS)
@pytest.mark.parametrize("command", [leaderboard, folds], ids=["leaderboard", "folds"])
def test_leaderboard_refuses_a_kit_home_without_competition_yaml_like_folds(tmp_path, monkeypatch, caplog, kind,
                                                                            command):
    folder = not_a_project(tmp_path, kind)
    before = listing(folder)
    monkeypatch.setenv("KIT_HOME", str(folder))  # read by Project.from_env, as under `KIT_HOME=... ./run.sh`
    with caplog.at_level(logging.ERROR):
        assert command.main([]) == 2
    assert f"{folder / 'competition.yaml'} not found: copy the kit's competition.yaml there" in caplog.text
    assert listing(folder) == before  # no experiments/LEADERBOARD.md


def test_leaderboard_still_writes_in_a_project(home, monkeypatch, capsys):
    monkeypatch.setenv("KIT_HOME", str(home))
    assert leaderboard.main([]) == 0
    assert (home / "experiments" / "LEADERBOARD.md").is_file() and "# Leaderboard" in capsys.readouterr().out


# --- train.batch_size: at least 2 (BatchNorm)

REASON = "BatchNorm needs at least 2 images per training batch"


@pytest.mark.parametrize("value", [1, 0, -1, 1.0])
@pytest.mark.parametrize("how", ["override", "yaml"])
def test_a_training_batch_under_two_is_refused_with_the_reason(tmp_path, value, how):
    write_yaml(tmp_path / "experiments" / "e1.yaml", {"train": {"batch_size": value}} if how == "yaml" else {})
    overrides = [f"train.batch_size={value}"] if how == "override" else []
    with pytest.raises(ConfigError) as err:
        load_config("e1", overrides, Project(tmp_path), check_model=False)
    message = str(err.value)
    assert "`train.batch_size`" in message and "must be >= 2" in message and REASON in message, message
    assert "\n" not in message and ("e1.yaml:2" in message if how == "yaml" else "override" in message)


@pytest.mark.parametrize("value", [1, 0])
def test_the_cli_names_the_reason(home, value):
    smoke_experiment(home, "e1")
    result = call_kit(home, "competition.config_reference", "e1", f"train.batch_size={value}", check=False)
    assert result.returncode == 2 and REASON in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.parametrize("value", [2, 3, 64])
def test_a_training_batch_of_two_or_more_loads(tmp_path, value):
    write_yaml(tmp_path / "experiments" / "e1.yaml", {"train": {"batch_size": value}})
    assert load_config("e1", [], Project(tmp_path), check_model=False).train.batch_size == value
