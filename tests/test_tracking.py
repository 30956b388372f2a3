"""Optional experiment tracking (competition.tracking, tracking.* keys): an assembled experiment and a blend are read
back through mlflow's own client and equal the kit's files; reruns reuse the tracker run; backend none imports and
writes nothing; bad settings (backend spellings, store paths that are files, unknown schemes, a missing package) are
one line naming the key, for every entry point.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from competition.config import (
    RUNTIME_KEYS,
    Config,
    ConfigError,
    load_config,
    load_saved_config,
    replace,
    save_config,
    to_dict,
)
from competition.errors import KitError
from competition.project import Project
from competition.run_folder import check_config_unchanged
from competition.tracking import (
    DEFAULT_STORE,
    experiment_fingerprint,
    log_blend,
    log_experiment,
)
from tests.conftest import REPO, call_kit, smoke_experiment, write_yaml

MLFLOW_ON = "tracking.backend=mlflow"


def client(home: Path, store: Path = DEFAULT_STORE):
    """mlflow's own client on a store folder of the project (the default store unless given)."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=(home / store).as_uri())


def runs(home: Path, key: str, store: Path = DEFAULT_STORE) -> list:
    """The tracker runs tagged kit.run = key, in every tracker experiment of the store."""
    mc = client(home, store)
    ids = [e.experiment_id for e in mc.search_experiments()]
    return mc.search_runs(ids, f"tags.`kit.run` = '{key}'") if ids else []


def history(home: Path, run_id: str, key: str, store: Path = DEFAULT_STORE) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client(home, store).get_metric_history(run_id, key))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "ERROR" in line]


# ----- an assembled experiment and a blend, read back through mlflow (the shared trained run: slow) -----

@pytest.mark.slow
def test_assembled_experiment_reads_back_equal_to_its_files_and_a_rerun_reuses_the_run(trained_project: Path):
    home = trained_project
    out = home / "experiments" / "done"
    assert not (home / DEFAULT_STORE).exists()  # the shared run was made with tracking off: nothing written
    call_kit(home, "competition.experiment", "done", "--assemble", MLFLOW_ON)
    found = runs(home, "done")
    assert len(found) == 1
    run = client(home).get_run(found[0].info.run_id)
    metrics = json.loads((out / "metrics.json").read_text())
    assert run.data.metrics["oof_score"] == metrics["oof_score"]
    for key in ("fold_mean", "fold_std", "threshold", "n_oof", "wall_s"):
        assert run.data.metrics[key] == pytest.approx(float(metrics[key]), abs=0, rel=1e-12)
    assert {k: run.data.metrics[f"oof.{k}"] for k in metrics["oof"]} == metrics["oof"]
    for result in metrics["folds"]:
        k = result["fold"]
        assert run.data.metrics[f"fold{k}/result.score"] == result["score"]
        log_csv = pd.read_csv(out / f"fold{k}" / "log.csv")
        for column in ("train_loss", "val_loss", "val_score", "lr"):
            assert history(home, run.info.run_id, f"fold{k}/{column}") == [
                (int(e), float(v)) for e, v in zip(log_csv["epoch"], log_csv[column])], column
    runtime = {f"{s}.{k}" for s, k in RUNTIME_KEYS}
    flat = {f"{s}.{k}": v for s, sec in to_dict(_saved(out)).items() if isinstance(sec, dict)
            for k, v in sec.items()}
    assert run.data.params == {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True)
                               for k, v in flat.items() if k not in runtime}
    assert run.data.tags["tracking.backend"] == "mlflow" and run.data.tags["kit.experiment"] == "done"
    assert {a.path for a in client(home).list_artifacts(run.info.run_id)} >= {"config.yaml", "metrics.json",
                                                                              "report.html"}
    saved = client(home).download_artifacts(run.info.run_id, "config.yaml", str(home / "dl"))
    assert Path(saved).read_text() == (out / "config.yaml").read_text()
    before = {k: history(home, run.info.run_id, k) for k in run.data.metrics}
    call_kit(home, "competition.experiment", "done", "--assemble", MLFLOW_ON)  # rerun: same run, no new points
    again = runs(home, "done")
    assert [r.info.run_id for r in again] == [run.info.run_id]
    after = {k: history(home, run.info.run_id, k) for k in before}
    assert {k: v for k, v in after.items() if k != "wall_s"} == {k: v for k, v in before.items() if k != "wall_s"}
    wall_s = json.loads((out / "metrics.json").read_text())["wall_s"]  # grows with each assemble: a new point
    assert client(home).get_run(run.info.run_id).data.metrics["wall_s"] == wall_s


def _saved(out: Path) -> Config:
    return load_saved_config(out / "config.yaml")


@pytest.mark.slow
def test_blend_is_logged_with_members_method_and_honest_scores(trained_project: Path):
    home = trained_project
    call_kit(home, "competition.ensemble", "done", MLFLOW_ON, "--method", "mean", "--name", "b1")
    sidecar = json.loads((home / "submissions" / "b1.json").read_text())
    found = runs(home, "blend:b1")
    assert len(found) == 1
    run = client(home).get_run(found[0].info.run_id)
    assert json.loads(run.data.params["members"]) == ["done"] and run.data.params["method"] == "mean"
    for key in ("mean", "std", "pooled"):
        assert run.data.metrics[f"nested.{key}"] == sidecar["nested"][key]
    assert run.data.metrics["in_sample"] == sidecar["in_sample"]
    assert run.data.metrics["member/done/oof"] == sidecar["member_scores"][0]["oof"]
    assert "b1.json" in {a.path for a in client(home).list_artifacts(run.info.run_id)}
    call_kit(home, "competition.ensemble", "done", MLFLOW_ON, "--method", "mean", "--name", "b1")
    assert [r.info.run_id for r in runs(home, "blend:b1")] == [run.info.run_id]
    assert len(client(home).get_metric_history(run.info.run_id, "nested.pooled")) == 1


@pytest.mark.slow
@pytest.mark.parametrize("uri", ["afile", "afile/store", "ftp://host/store"])
def test_a_tracking_failure_is_one_line_and_keeps_every_output(trained_project: Path, uri: str):
    home = trained_project
    (home / "afile").write_text("not a folder")
    out = home / "experiments" / "done"
    result = call_kit(home, "competition.experiment", "done", "--assemble", MLFLOW_ON, f"tracking.uri={uri}",
                      check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(error_lines(result.stderr)) == 1 and "tracking.uri" in error_lines(result.stderr)[0]
    assert "Traceback" not in result.stderr
    for name in ("metrics.json", "oof.csv", "test.csv", "config.yaml"):
        assert (out / name).is_file()
    assert (home / "experiments" / "LEADERBOARD.md").is_file()


# ----- fast: no training, no trained run -----

def fake_experiment(home: Path, cfg: Config) -> Path:
    """An experiment folder with what log_experiment reads: config.yaml, inputs.json, a fold log, metrics.json."""
    out = home / "experiments" / cfg.name
    (out / "fold0").mkdir(parents=True)
    save_config(cfg, out / "config.yaml")
    (out / "inputs.json").write_text(json.dumps({"train": "abc"}))
    pd.DataFrame({"epoch": [0, 1], "val_loss": [0.7, 0.5], "lr": [1e-3, 1e-4]}).to_csv(out / "fold0" / "log.csv",
                                                                                       index=False)
    return out


ENTRY_POINTS = {
    "experiment": lambda cfg, home: log_experiment(cfg, home / "experiments" / "e1",
                                                   {"oof_score": 0.5, "folds": [{"fold": 0, "score": 0.5}]},
                                                   Project(home)),
    "blend": lambda cfg, home: log_blend(cfg.tracking, Project(home), home / "submissions" / "b.csv",
                                         {"members": ["e1"], "method": "mean", "nested": {"pooled": 0.5}}),
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_backend_none_imports_nothing_and_writes_nothing(tmp_path: Path, monkeypatch, entry: str):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # any import of mlflow now raises
    cfg = replace(Config(name="e1"), tracking={"uri": "store"})
    fake_experiment(tmp_path, cfg)
    before = sorted(tmp_path.rglob("*"))
    assert ENTRY_POINTS[entry](cfg, tmp_path) is None
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.slow  # a fresh interpreter importing torch: over 5 s of CPU
def test_importing_the_commands_does_not_import_mlflow():
    code = ("import sys, competition.experiment, competition.ensemble, competition.tracking; "
            "print('mlflow' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.stdout.strip() == "False", proc.stderr[-2000:]


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_a_missing_mlflow_package_names_the_key_and_the_pip_line(tmp_path: Path, monkeypatch, entry: str):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    cfg = replace(Config(name="e1"), tracking={"backend": "mlflow"})
    fake_experiment(tmp_path, cfg)
    with pytest.raises(KitError) as err:
        ENTRY_POINTS[entry](cfg, tmp_path)
    assert "tracking.backend" in str(err.value) and "pip install mlflow-skinny" in str(err.value)
    assert "\n" not in str(err.value)


BAD_URIS = {  # uri -> what the one-line error must say
    "afile": "is a file", "afile/store": "is a file", "sub/afile": "is a file", "file://{home}/afile": "is a file",
    "ftp://host/store": "no `ftp:` store", "s3://bucket/x": "no `s3:` store", "HTTPX://h": "no `httpx:` store",
}


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("uri", list(BAD_URIS))
def test_a_bad_store_uri_is_one_line_naming_tracking_uri(tmp_path: Path, entry: str, uri: str):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "afile").write_text("x")
    cfg = replace(Config(name="e1"), tracking={"backend": "mlflow", "uri": uri.format(home=tmp_path)})
    with pytest.raises(KitError) as err:
        ENTRY_POINTS[entry](cfg, tmp_path)
    message = str(err.value)
    assert "tracking.uri" in message and BAD_URIS[uri] in message and "\n" not in message
    assert not (tmp_path / DEFAULT_STORE).exists()


def test_a_tracker_server_that_is_down_fails_in_one_line_not_minutes(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    cfg = replace(Config(name="e1"), tracking={"backend": "mlflow", "uri": "http://127.0.0.1:9"})
    with pytest.raises(KitError) as err:
        ENTRY_POINTS["experiment"](cfg, tmp_path)
    assert "tracking.uri http://127.0.0.1:9" in str(err.value) and "\n" not in str(err.value)


STORES = {"": DEFAULT_STORE, "trk": Path("trk"), "deep/er/trk": Path("deep/er/trk"), "file://{home}/t2": Path("t2"),
          " trk ": Path("trk")}  # tracking.uri -> the store folder it must use (relative to the project)


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("uri", list(STORES))
def test_logging_twice_keeps_one_run_and_one_point_per_step(tmp_path: Path, entry: str, uri: str):
    cfg = replace(Config(name="e1"), tracking={"backend": "mlflow", "uri": uri.format(home=tmp_path)})
    fake_experiment(tmp_path, cfg)
    first = ENTRY_POINTS[entry](cfg, tmp_path)
    assert ENTRY_POINTS[entry](cfg, tmp_path) == first
    key = "fold0/val_loss" if entry == "experiment" else "nested.pooled"
    expected = [(0, 0.7), (1, 0.5)] if entry == "experiment" else [(0, 0.5)]
    store = STORES[uri]
    assert history(tmp_path, first, key, store) == expected
    assert len(runs(tmp_path, "e1" if entry == "experiment" else "blend:b", store)) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name in ("trk", "t2", "deep", ".kit")] == [store.parts[0]]


BAD_BACKENDS = ["MLflow", "mlfow", "wandb", "true", "on", "1", "[mlflow]"]


@pytest.mark.parametrize("where", ["override", "competition.yaml", "experiment yaml"])
@pytest.mark.parametrize("value", BAD_BACKENDS)
def test_a_bad_backend_spelling_is_refused_at_load_time(home: Path, where: str, value: str):
    smoke_experiment(home, "e1", **({"tracking": {"backend": value}} if where == "experiment yaml" else {}))
    if where == "competition.yaml":
        data = yaml.safe_load((home / "competition.yaml").read_text())
        write_yaml(home / "competition.yaml", {**data, "tracking": {"backend": value}})
    overrides = [f"tracking.backend={value}"] if where == "override" else []
    with pytest.raises(ConfigError) as err:
        load_config("e1", overrides, Project(home), check_model=False)
    assert "tracking.backend" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("command", [("competition.experiment", "e1"), ("competition.experiment", "e1", "--assemble"),
                                     ("competition.ensemble", "e1")])
@pytest.mark.parametrize("override", ["tracking.backend=wandb", "tracking.backnd=mlflow", "tracking=mlflow"])
def test_bad_tracking_overrides_are_one_error_line_for_every_command(home: Path, command: tuple, override: str):
    smoke_experiment(home, "e1")
    result = call_kit(home, *command, override, check=False)
    assert result.returncode == 2
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "tracking" in lines[0] and "Traceback" not in result.stderr


TRACKING_VARIANTS = [{"backend": "mlflow"}, {"backend": "mlflow", "uri": "elsewhere", "experiment": "x"},
                     {"uri": "file:///tmp/s"}]


@pytest.mark.parametrize("tracking", TRACKING_VARIANTS)
def test_tracking_settings_do_not_make_a_different_experiment(tmp_path: Path, tracking: dict):
    cfg = Config(name="e1")
    out = fake_experiment(tmp_path, cfg)
    (out / "fold0" / "best.pt").write_bytes(b"trained")
    other = replace(cfg, tracking=tracking)
    assert experiment_fingerprint(other, out) == experiment_fingerprint(cfg, out)
    check_config_unchanged(other, out)  # resuming or assembling with tracking on is the same experiment
    with pytest.raises(ConfigError):
        check_config_unchanged(replace(other, train={"lr": 0.5}), out)  # the check itself still bites


def test_a_run_saved_before_the_tracking_section_existed_still_resumes(tmp_path: Path):
    cfg = Config(name="e1")
    out = fake_experiment(tmp_path, cfg)
    (out / "fold0" / "best.pt").write_bytes(b"trained")
    old = {k: v for k, v in to_dict(cfg).items() if k != "tracking"}
    (out / "config.yaml").write_text(yaml.safe_dump(old))
    check_config_unchanged(replace(cfg, tracking={"backend": "mlflow"}), out)


@pytest.mark.parametrize("uri", ["afile", "afile/store", "ftp://host/store", "file://{home}/afile"])
@pytest.mark.parametrize("mode", [(), ("--folds", "0", "--no-assemble")])
def test_a_bad_store_is_refused_before_any_training(home: Path, uri: str, mode: tuple):
    """Training is forbidden in this (fast) test: reaching it would fail the test; the refusal comes first."""
    (home / "afile").write_text("x")
    smoke_experiment(home, "e1")
    result = call_kit(home, "competition.experiment", "e1", *mode, MLFLOW_ON, f"tracking.uri={uri.format(home=home)}",
                      check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "tracking.uri" in lines[0], lines
    assert ("is a file" in lines[0]) or ("no `ftp:` store" in lines[0]), lines
    assert not list((home / "experiments").glob("e1/fold*")), "a fold started before the tracking check"
