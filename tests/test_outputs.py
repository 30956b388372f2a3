"""Files the kit did not make (competition.outputs) and output permissions (competition.atomic), as variants:
protected targets (data-folder files, experiment outputs, a hand-made file, a file edited after the kit wrote it,
another command's output) x writing commands, with and without --force; umask 022/077 x writers; two inputs with
one name. The predict/explain variants need a trained experiment and are marked slow."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pandas as pd
import pytest

from competition import atomic, outputs
from competition.config import load_config, save_config
from competition.outputs import OutputRefused, check_target, distinct_names, record, written_by
from competition.project import Project
from tests.conftest import call_kit, smoke_experiment


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fake_finished(home: Path, name: str, score: float) -> None:
    """An experiment folder with what compare reads (config.yaml, metrics.json, oof.csv), no training."""
    smoke_experiment(home, name)
    out = home / "experiments" / name
    out.mkdir(parents=True, exist_ok=True)
    save_config(load_config(name, [], Project(home), check_model=False), out / "config.yaml")
    folds = [{"fold": k, "score": score + 0.01 * k} for k in range(2)]
    (out / "metrics.json").write_text(json.dumps({"metric": "auc", "oof_score": score, "folds": folds, "wall_s": 6}))
    (out / "oof.csv").write_text("id,fold,target,prob\na.jpg,0,1,0.9\n")


@pytest.fixture
def done(home: Path) -> Path:
    """The tiny project with two finished (faked) experiments a and b."""
    fake_finished(home, "a", 0.8)
    fake_finished(home, "b", 0.9)
    return home


# --- protected targets x commands -------------------------------------------------------------------------------

PROTECTED = {  # target (relative to home): never written, --force or not
    "data-train-csv": "data/train.csv", "data-new-file": "data/report.md", "data-subfolder": "data/test_data_v2/x.md",
    "experiment-oof": "experiments/a/oof.csv", "experiment-metrics": "experiments/a/metrics.json",
    "experiment-new-file": "experiments/a/notes.md",
}
FILE_WRITERS = {  # command writing one user-chosen file: args with OUT for the target
    "compare": ("competition.compare", "a", "b", "--out", "OUT"),
}
FOLDER_WRITERS = {  # command writing into a user-chosen folder
    "audit": ("competition.audit", "--out", "OUT"),
    "bundle": ("competition.bundle", "a", "OUT", "--no-wheels", "--allow-dirty"),
}


def run_writer(home: Path, call: tuple, target: str, force: bool):
    args = [str(home / target) if a == "OUT" else a for a in call[1:]] + (["--force"] if force else [])
    return call_kit(home, call[0], *args, check=False)


def refused(result, *words: str) -> str:
    errors = [ln for ln in result.stderr.splitlines() if " ERROR " in ln]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-2000:]
    assert all(w in errors[0] for w in words), errors[0]
    return errors[0]


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
@pytest.mark.parametrize("target", PROTECTED.values(), ids=PROTECTED.keys())
@pytest.mark.parametrize("call", FILE_WRITERS.values(), ids=FILE_WRITERS.keys())
def test_protected_files_are_never_written(done, call, target, force):
    path = done / target
    before = digest(path) if path.is_file() else None
    line = refused(run_writer(done, call, target, force), "refusing to write")
    assert ("data folder" in line) == target.startswith("data/"), line
    assert (digest(path) if path.is_file() else None) == before


FOLDER_TARGETS = {"data": "data", "data-sub": "data/out", "experiment": "experiments/a", "exp-sub": "experiments/a/r"}


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
@pytest.mark.parametrize("target", FOLDER_TARGETS.values(), ids=FOLDER_TARGETS.keys())
@pytest.mark.parametrize("call", FOLDER_WRITERS.values(), ids=FOLDER_WRITERS.keys())
def test_protected_folders_are_never_written(done, call, target, force):
    listing = sorted(p for p in (done / "data").rglob("*")) + sorted((done / "experiments").rglob("*"))
    refused(run_writer(done, call, target, force), "refusing to write")
    assert sorted(p for p in (done / "data").rglob("*")) + sorted((done / "experiments").rglob("*")) == listing


def hand_made(home: Path, rel: str) -> Path:
    path = home / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("my own notes\n")
    return path


def edited_after(home: Path, rel: str, call: tuple) -> Path:
    """The command writes rel, then the person edits it."""
    run_writer(home, call, rel, False)
    path = home / rel
    with open(path, "a") as fh:
        fh.write("my edit\n")
    return path


def other_command(home: Path, rel: str, call: tuple) -> Path:
    """audit wrote reports into rel's folder; rel is one of them (for compare: another command's output)."""
    call_kit(home, "competition.audit", "--out", str((home / rel).parent), check=False)
    return home / rel


NOT_OURS = {"hand-made": lambda home, rel, call: hand_made(home, rel), "edited-after": edited_after,
            "other-command": other_command}


@pytest.mark.parametrize("how", NOT_OURS.values(), ids=NOT_OURS.keys())
@pytest.mark.parametrize("call", FILE_WRITERS.values(), ids=FILE_WRITERS.keys())
def test_a_file_the_command_did_not_write_needs_force(done, call, how):
    rel = "reports/tiny_k2_s0_audit.md"
    path = how(done, rel, call)
    before = digest(path)
    refused(run_writer(done, call, rel, False), "--force", str(path))
    assert digest(path) == before
    assert run_writer(done, call, rel, True).returncode == 0
    assert digest(path) != before and written_by(Project(done), path) == call[0].split(".")[-1]


@pytest.mark.parametrize("call", FILE_WRITERS.values(), ids=FILE_WRITERS.keys())
def test_a_command_replaces_its_own_unchanged_output(done, call):
    assert run_writer(done, call, "r/t.md", False).returncode == 0
    assert run_writer(done, call, "r/t.md", False).returncode == 0


@pytest.mark.parametrize("how", ["hand-made", "edited-after"])
def test_audit_out_protects_report_files_it_did_not_write(done, how):
    target = done / "rep" / "tiny_k2_s0_audit.json"
    if how == "hand-made":
        hand_made(done, "rep/tiny_k2_s0_audit.json")
    else:
        call_kit(done, "competition.audit", "--out", str(done / "rep"), check=False)
        target.write_text(target.read_text() + " ")
    before = digest(target)
    refused(call_kit(done, "competition.audit", "--out", str(done / "rep"), check=False), "--force", target.name)
    assert digest(target) == before
    assert call_kit(done, "competition.audit", "--out", str(done / "rep"), "--force", check=False).returncode in (0, 1)
    assert digest(target) != before


def test_bundle_replaces_only_a_bundle_it_built(done, tmp_path):
    dest = tmp_path / "b"
    call_kit(done, "competition.bundle", "a", str(dest), "--no-wheels", "--allow-dirty")
    call_kit(done, "competition.bundle", "a", str(dest), "--no-wheels", "--allow-dirty")  # its own: replaced
    manifest = dest / "kit-bundle.json"
    manifest.write_text(manifest.read_text())  # touched since: someone else's now
    refused(call_kit(done, "competition.bundle", "a", str(dest), "--no-wheels", "--allow-dirty", check=False),
            "--force", str(dest))
    call_kit(done, "competition.bundle", "a", str(dest), "--no-wheels", "--allow-dirty", "--force")


def test_a_folder_is_not_a_file_target(done):
    (done / "adir").mkdir()
    refused(run_writer(done, FILE_WRITERS["compare"], "adir", True), "is a folder")


# --- the ledger itself -------------------------------------------------------------------------------------------

def test_ledger_records_command_size_and_mtime(tmp_path):
    project = Project(tmp_path)
    path = tmp_path / "o.csv"
    path.write_text("a\n")
    with pytest.raises(OutputRefused):
        check_target(project, path, "predict")
    record(project, path, "predict")
    assert written_by(project, path) == "predict"
    check_target(project, path, "predict")
    with pytest.raises(OutputRefused, match="written by `predict`"):
        check_target(project, path, "compare")
    os.utime(path, ns=(1, 1))
    assert written_by(project, path) is None  # same size, other mtime: edited
    path.unlink()
    check_target(project, path, "compare")  # a file that is gone may be written


# --- permissions -------------------------------------------------------------------------------------------------

WRITERS = {
    "write_text": lambda p: atomic.write_text(p, "x"),
    "write_json": lambda p: atomic.write_json(p, {"a": 1}),
    "write_csv": lambda p: atomic.write_csv(p, pd.DataFrame({"a": [1]})),
    "save_torch": lambda p: atomic.save_torch(p, {"a": 1}),
    "outputs.write_csv": lambda p: outputs.write_csv(Project(p.parent), p, pd.DataFrame({"a": [1]}), "predict"),
    "outputs.write_text": lambda p: outputs.write_text(Project(p.parent), p, "x", "compare"),
}


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
@pytest.mark.parametrize("writer", WRITERS.values(), ids=WRITERS.keys())
def test_outputs_follow_the_umask(tmp_path, writer, umask, mode):
    old = os.umask(umask)
    try:
        writer(tmp_path / "out.x")
        writer(tmp_path / "out.x")  # a rewrite too
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out.x").stat().st_mode) == mode


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_a_command_output_follows_the_umask(done, umask, mode):
    old = os.umask(umask)
    try:
        call_kit(done, "competition.compare", "a", "b", "--out", str(done / "t.md"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((done / "t.md").stat().st_mode) == mode


# --- two inputs, two outputs -------------------------------------------------------------------------------------

NAME_SETS = {
    "same-name-two-folders": ["a/photo.jpg", "b/photo.jpg"],
    "same-stem-two-types": ["a/photo.jpg", "a/photo.png"],
    "deep-same-parent-name": ["x/a/photo.jpg", "y/a/photo.jpg"],
    "same-file-twice": ["a/photo.jpg", "a/photo.jpg"],
    "mixed": ["a/photo.jpg", "b/photo.jpg", "c/other.jpg", "a_photo.jpg"],
}


@pytest.mark.parametrize("inputs", NAME_SETS.values(), ids=NAME_SETS.keys())
def test_two_inputs_never_share_an_output_name(inputs):
    names = distinct_names(inputs, "_gradcam.png")
    assert len(set(names)) == len(inputs) and all(n.endswith("_gradcam.png") for n in names)
    assert all("photo" in n or "other" in n for n in names)


# --- predict and explain, on one trained experiment --------------------------------------------------------------

@pytest.mark.slow
def test_predict_and_explain_outputs(trained_project):
    home = trained_project
    images = sorted((home / "data" / "test_data_v2").iterdir())[:2]
    for folder, image in zip(("one", "two"), images):
        (home / "in" / folder).mkdir(parents=True)
        shutil.copyfile(image, home / "in" / folder / "photo.jpg")
    pair = [str(home / "in" / f / "photo.jpg") for f in ("one", "two")]
    protected = [home / "experiments" / "done" / "oof.csv", home / "data" / "train.csv"]
    for path in protected:
        before = digest(path)
        for force in ([], ["--force"]):
            refused(call_kit(home, "competition.predict", "done", *pair, "--csv", str(path), *force, check=False),
                    "refusing to write")
        assert digest(path) == before
    mine = hand_made(home, "p.csv")
    refused(call_kit(home, "competition.predict", "done", *pair, "--csv", str(mine), check=False), "--force")
    call_kit(home, "competition.predict", "done", *pair, "--csv", str(mine), "--force")
    call_kit(home, "competition.predict", "done", *pair, "--csv", str(mine))  # its own output now
    assert len(pd.read_csv(mine)) == 2
    cam = call_kit(home, "competition.explain", "done", *pair, "--out", str(home / "cam"))
    assert sorted(p.name for p in (home / "cam").iterdir()) == ["one_photo_gradcam.png", "two_photo_gradcam.png"]
    assert "one_photo_gradcam.png" in cam.stdout
    refused(call_kit(home, "competition.explain", "done", *pair, "--out", str(home / "experiments" / "done"),
                     check=False), "refusing to write")
    call_kit(home, "competition.explain", "done", *pair)  # the default <exp>/gradcam/ is explain's own
    assert len(list((home / "experiments" / "done" / "gradcam").glob("*_photo_gradcam.png"))) == 2
