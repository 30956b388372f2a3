"""The project folder a command works in, and the weights a config needs, are checked before anything is written.

Variants are generated: KIT_HOME spellings that name no project folder (missing, a file, `~/missing`, relative,
trailing slash, only spaces around a missing name) x every CLI (one ERROR line, exit 2, nothing created); a project
folder without competition.yaml x the commands that read the config; models whose weights are listed, cached, on a
reachable hub or nowhere x offline / online (the hub probe is monkeypatched: no test touches the network); the shift
check's embedding weights missing in three ways (one SKIPPED verdict naming the key, never OK).
"""

from __future__ import annotations

import importlib
import io
import logging
import os
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from competition import config, embed
from competition.cli import LOG_FORMAT
from competition.project import REPO, Project, ProjectError
from tests.conftest import WEIGHTS, Result, call_kit, make_competition, smoke_experiment, write_yaml

# every CLI, with arguments that parse (the refusal comes before any of them is looked at)
COMMANDS = {
    "leaderboard": ("competition.leaderboard",),
    "folds": ("competition.folds",),
    "ensemble": ("competition.ensemble", "exp1", "exp2"),
    "predict": ("competition.predict", "exp1", "img.jpg"),
    "config": ("competition.config_reference",),
    "experiment": ("competition.experiment", "exp1"),
    "shift": ("competition.shift",),
    "audit": ("competition.audit",),
    "report": ("competition.report", "exp1"),
    "compare": ("competition.compare", "exp1", "exp2"),
    "export": ("competition.export", "exp1"),
    "submit": ("competition.submit", "sub.csv"),
}
# (KIT_HOME as typed, what the message names); {typed} = the folder the command was typed in
BAD_HOMES = [
    ("{typed}/nope", "does not exist"),
    ("{typed}/nope/", "does not exist"),
    ("nope", "does not exist"),
    ("nope/deeper/", "does not exist"),
    ("./nope", "does not exist"),
    ("~/nope", "does not exist"),
    ("~nosuchuser12345/proj", "no known home folder"),
    ("  nope  ", "does not exist"),
    ("notes.md", "is a file"),
    ("{typed}/notes.md", "is a file"),
    ("notes.md/", "is a file"),
]


def kit(module: str, *args: str) -> Result:
    """Run `module.main(args)` in this process WITHOUT a project: it comes from $KIT_HOME, as on the command line."""
    main = importlib.import_module(module).main
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 2
    finally:
        root.removeHandler(handler)
    return Result(code, out.getvalue(), err.getvalue())


def tree(folder: Path) -> set[str]:
    """Every path under folder (what a refused command must leave unchanged), less the dot folders libraries keep
    in $HOME on first import (matplotlib's font cache)."""
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if not p.relative_to(folder).parts[0].startswith(".")}


@pytest.fixture
def typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The folder the command was typed in (run.sh: $KIT_CWD, process in the kit); HOME is a scratch folder."""
    folder, home = tmp_path / "typed", tmp_path / "home"
    folder.mkdir()
    home.mkdir()
    (folder / "notes.md").write_text("my notes\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KIT_CWD", str(folder))
    monkeypatch.chdir(REPO)
    return folder


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("spelling,reason", BAD_HOMES)
def test_a_kit_home_that_is_no_folder_is_refused_by_every_command(typed, monkeypatch, command, spelling, reason):
    monkeypatch.setenv("KIT_HOME", spelling.format(typed=typed))
    before_typed, before_home, before_repo = tree(typed), tree(typed.parent / "home"), set(os.listdir(REPO))
    result = kit(*COMMANDS[command])
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "KIT_HOME=" in errors[0] and reason in errors[0] and "unset it" in errors[0], errors[0]
    assert tree(typed) == before_typed and tree(typed.parent / "home") == before_home
    assert set(os.listdir(REPO)) == before_repo


@pytest.mark.parametrize("spelling", ["proj", "proj/", "./proj", "~/proj", "~/proj/", "{typed}/proj", " proj "])
def test_a_kit_home_that_is_a_folder_is_used_from_where_it_was_typed(typed, monkeypatch, spelling):
    where = typed / "proj" if not spelling.startswith("~") else typed.parent / "home" / "proj"
    where.mkdir()
    monkeypatch.setenv("KIT_HOME", spelling.format(typed=typed))
    project = Project.from_env()
    assert project.root == where.resolve() and project.from_home
    (where / "competition.yaml").write_text((REPO / "competition.yaml").read_text())  # a project holds one
    result = kit("competition.leaderboard")
    assert result.returncode == 0, result.stderr
    assert (where / "experiments" / "LEADERBOARD.md").is_file()


@pytest.mark.parametrize("spelling", ["", " ", "\t"])
def test_an_empty_kit_home_is_the_kits_own_folder(monkeypatch, spelling):
    monkeypatch.setenv("KIT_HOME", spelling)
    assert Project.from_env() == Project(REPO.resolve()) and not Project.from_env().from_home


@pytest.mark.parametrize("spelling", ["nope", "notes.md", "~/nope"])
def test_from_env_raises_a_kit_error(typed, monkeypatch, spelling):
    monkeypatch.setenv("KIT_HOME", spelling)
    with pytest.raises(ProjectError, match="KIT_HOME="):
        Project.from_env()


CONFIG_COMMANDS = ["folds", "ensemble", "config", "experiment", "shift", "audit", "submit"]


@pytest.mark.parametrize("command", CONFIG_COMMANDS)
@pytest.mark.parametrize("spelling", ["proj", "proj/", "{typed}/proj"])
def test_a_project_without_competition_yaml_says_so_first(typed, monkeypatch, command, spelling):
    proj = typed / "proj"
    write_yaml(proj / "experiments" / "exp1.yaml", {"model": {"pretrained": False}})
    (typed / "sub.csv").write_text("id,label\n")
    monkeypatch.setenv("KIT_HOME", spelling.format(typed=typed))
    before = tree(proj)
    result = kit(*COMMANDS[command])
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1, result.stderr
    assert f"{proj.resolve()}/competition.yaml not found" in errors[0], errors[0]
    assert "competition.data_dir" in errors[0] and "data folder" not in errors[0]
    assert tree(proj) == before


def test_competition_yaml_is_optional_for_a_project_not_named_by_kit_home(tmp_path):
    assert Project(tmp_path).competition_yaml() is None  # library use and the kit's own folder keep the defaults
    assert config.load_config("", ["model.pretrained=false"], Project(tmp_path), check_model=False).name == ""
    (tmp_path / "competition.yaml").mkdir()
    with pytest.raises(ProjectError, match="not a file"):
        Project(tmp_path).competition_yaml()


# ---- pretrained weights: listed in models.json, cached, from a reachable hub, or refused at config time ----

@pytest.fixture
def comp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny competition; the hub probe and the HF cache are stubbed (no network), offline mode unset."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(config, "_hub_cached", lambda name: False)
    monkeypatch.setattr(config, "hub_reachable", lambda: pytest.fail("hub probed"))
    return make_competition(tmp_path / "proj", n_per_class=4, n_test=2)


NOT_LISTED = ["resnet18", "efficientnet_b0", "convnext_atto"]


@pytest.mark.parametrize("name", NOT_LISTED)
@pytest.mark.parametrize("why", ["offline", "unreachable", "no-weights-dir"])
def test_weights_nowhere_are_refused_at_config_time(comp, monkeypatch, name, why):
    over = [f"model.name={name}"]
    if why == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # refused at once: the probe is never called (it would fail)
    else:
        monkeypatch.setattr(config, "hub_reachable", lambda: False)
    if why == "no-weights-dir":
        over.append(f"model.weights_dir={comp / 'no_weights'}")
    with pytest.raises(config.ConfigError) as err:
        config.load_config("", over, Project(comp))
    text = str(err.value)
    assert f"model.name: {name}" in text and "models.json" in text and "\n" not in text
    assert "model.pretrained=false" in text and "model.pretrained_file=" in text
    if why == "no-weights-dir":
        assert "does not exist" in text and "model.weights_dir" in text
    else:
        assert "tf_mobilenetv3_small_100" in text  # the models listed there
        assert ("HF_HUB_OFFLINE" if why == "offline" else "unreachable") in text


@pytest.mark.parametrize("name", NOT_LISTED)
@pytest.mark.parametrize("setting", ["pretrained=false", "reachable", "cached", "pretrained_file"])
def test_weights_somewhere_are_accepted(comp, monkeypatch, name, setting):
    over = [f"model.name={name}"]
    if setting == "pretrained=false":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        over.append("model.pretrained=false")
    elif setting == "reachable":
        monkeypatch.setattr(config, "hub_reachable", lambda: True)
    elif setting == "cached":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(config, "_hub_cached", lambda n: n == name)
    else:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        (comp / "w.safetensors").write_bytes(b"")
        over.append("model.pretrained_file=w.safetensors")
    assert config.load_config("", over, Project(comp)).model.name == name


@pytest.mark.parametrize("offline", ["1", ""])
def test_a_listed_model_never_probes_the_hub(comp, monkeypatch, offline):
    monkeypatch.setenv("HF_HUB_OFFLINE", offline)
    assert config.load_config("", ["model.name=tf_mobilenetv3_small_100"], Project(comp)).model.pretrained


@pytest.mark.parametrize("command", [("competition.experiment", "exp1"), ("competition.config_reference", "exp1")])
@pytest.mark.parametrize("name", NOT_LISTED[:2])
def test_commands_refuse_unreachable_weights_before_creating_anything(comp, monkeypatch, command, name):
    monkeypatch.setattr(config, "hub_reachable", lambda: False)
    smoke_experiment(comp, "exp1", model=name)
    before = tree(comp)
    result = call_kit(comp, *command, check=False)
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert name in errors[0] and "unreachable" in errors[0] and "exp1.yaml" in errors[0]
    assert tree(comp) == before and not (comp / "experiments" / "exp1").exists()


def test_the_probe_is_a_short_socket_connect(monkeypatch):
    calls = []

    def refuse(address, timeout):
        calls.append((address, timeout))
        raise OSError("no route")

    monkeypatch.setattr(config.socket, "create_connection", refuse)
    config.hub_reachable.cache_clear()
    try:
        assert config.hub_reachable() is False
        assert calls == [(("huggingface.co", 443), 3.0)]
    finally:
        config.hub_reachable.cache_clear()


# ---- the shift check / twin embeddings: which key to set, and SKIPPED (never OK) when pixels are not checked ----

@pytest.mark.parametrize("case", ["no-dir", "not-listed", "file-missing"])
def test_missing_embedding_weights_name_the_key_to_set(tmp_path, case):
    index = tmp_path / "weights" / "models.json"
    if case != "no-dir":
        index.parent.mkdir()
        index.write_text('{"models": [{"timm_model": "regnetx_002", "file": "r.safetensors"}]}')
    name = "regnetx_002" if case == "file-missing" else "resnet18"
    with pytest.raises(config.ConfigError) as err:
        embed.build_embedder(name, Project(tmp_path), str(index.parent))
    text = str(err.value)
    key = {"no-dir": "model.weights_dir", "not-listed": "folds.embed_model", "file-missing": "folds.embed_model"}[case]
    assert key in text and str(index) in text
    assert ("does not exist" in text) == (case == "no-dir")
    if case == "not-listed":
        assert "regnetx_002" in text


@pytest.mark.parametrize("weights_dir", ["no_such_weights", str(WEIGHTS.parent / "no_such_weights")])
def test_the_shift_check_says_skipped_not_ok(comp, weights_dir):
    result = call_kit(comp, "competition.shift", f"model.weights_dir={weights_dir}")
    report = (comp / "folds").glob("*_shift.md")
    text = next(report).read_text()
    assert "SKIPPED" in text and "OK:" not in text and "model.weights_dir" in text
    assert "SKIPPED" in result.stderr and "WARNING" in result.stderr
