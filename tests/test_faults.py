"""Faults by class, beyond the table: ids that look like numbers, a full disk, Ctrl-C, the image-folder
layout end to end (with an unreadable image in predict), and the resume guards."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from competition import atomic, image_cache
from competition.atomic import DiskFullError, atomic_path, save_torch
from competition.config import load_config
from competition.image_cache import open_cache
from competition.project import Project
from competition.submission import build_submission, write_submission
from competition.tables import load_test_table
from tests.conftest import CIFAKE, REPO, call_kit, make_competition, smoke_experiment, write_yaml
from tests.test_bad_input_table import folder_layout


def test_ids_with_leading_zeros_stay_text(home):
    """Test images named 00012 (no suffix): read as text, found, and written back as 00012 in the submission."""
    data = home / "data"
    sources = sorted((CIFAKE / "test_data_v2").glob("*.jpg"))[:3]
    ids = ["00012", "00007", "0100"]
    for src, name in zip(sources, ids):
        (data / name).write_bytes(src.read_bytes())
    pd.DataFrame({"id": ids}).to_csv(data / "test.csv", index=False)
    pd.DataFrame({"id": ids, "label": 0}).to_csv(data / "sample_submission.csv", index=False)
    project = Project(home)
    comp = load_config("", [], project, check_model=False).competition
    test = load_test_table(comp, project)
    assert test["id"].tolist() == ids and not test["missing"].any()
    path = write_submission(home / "submissions" / "z.csv",
                            build_submission(comp, project, test["id"], np.array([0.1, 0.2, 0.3])), comp, project)
    assert path.read_text().splitlines()[1].startswith("00012,")
    dry = call_kit(home, "competition.submit", str(path), "--dry-run")
    assert "valid (3 rows)" in dry.stderr


def test_full_disk_while_caching_is_one_clear_error_and_leaves_nothing(home, monkeypatch):
    monkeypatch.setattr(image_cache, "free_bytes", lambda folder: 1000)
    paths = sorted(str(p) for p in (home / "data" / "train_data").glob("*.jpg"))
    with pytest.raises(DiskFullError, match=r"no space left on .*\.cache"):
        open_cache(paths, "auto", home / ".cache")
    assert not list((home / ".cache").glob("*")) if (home / ".cache").exists() else True


def test_enospc_during_a_write_names_the_folder_and_removes_the_temp(tmp_path):
    target = tmp_path / "out" / "oof.csv"
    with pytest.raises(DiskFullError, match=r"no space left on .*out while writing oof.csv"):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list((tmp_path / "out").iterdir()) == []


def test_torch_writer_failure_on_a_full_disk_is_named(tmp_path, monkeypatch):
    """torch reports a full disk as a cryptic inline_container RuntimeError; the kit names the folder."""
    monkeypatch.setattr(atomic, "free_bytes", lambda folder: 0)
    monkeypatch.setattr(torch, "save", lambda obj, f: (_ for _ in ()).throw(
        RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")))
    with pytest.raises(DiskFullError, match="no space left on"):
        save_torch(tmp_path / "last.pt", {"a": 1})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ctrl_c_prints_one_line_and_the_rerun_resumes(home):
    smoke_experiment(home, "c", train={"epochs": 3, "batch_size": 4, "patience": 0})
    env = {**os.environ, "KIT_HOME": str(home), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # a job started with `&` from a script inherits SIGINT ignored, and Python then never raises KeyboardInterrupt:
    # give the child the default disposition, as a terminal would
    proc = subprocess.Popen([sys.executable, "-m", "competition.experiment", "c"], cwd=home, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    last = home / "experiments" / "c" / "fold0" / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err and "rerun the same command to resume" in err
    resumed = call_kit(home, "competition.experiment", "c")
    assert "resuming after epoch" in resumed.stderr


@pytest.mark.slow
def test_image_folder_layout_end_to_end_with_submission_and_predict(tmp_path):
    """class folders + a test folder, no sample submission: experiment -> ensemble -> submit --dry-run; and
    predict on a folder holding an unreadable file gives it no label (and keeps its row)."""
    home = make_competition(tmp_path)
    folder_layout(home)
    write_yaml(home / "experiments" / "f.yaml", {"model": {"name": "tf_mobilenetv3_small_100", "weights_dir": str(
        REPO.parent / "shared" / "weights")}, "data": {"img_size": 32, "cache_dir": str(home / ".cache")},
        "train": {"epochs": 1, "batch_size": 4, "threads": 1}})
    call_kit(home, "competition.experiment", "f")
    # mean, not auto: auto picks rank, and one epoch on a dozen faces ties every row (a constant blend is refused)
    call_kit(home, "competition.ensemble", "f", "--name", "folders", "--method", "mean")
    sub = pd.read_csv(home / "submissions" / "folders.csv", dtype=str)
    n_test = len(list((home / "folders" / "real").glob("*.j*")))
    assert list(sub.columns) == ["id", "label"] and len(sub) == n_test and sub["id"].str.startswith("real/").all()
    assert f"valid ({n_test} rows)" in call_kit(home, "competition.submit", str(home / "submissions" / "folders.csv"),
                                        "--dry-run").stderr
    probe = home / "probe"
    probe.mkdir()
    (probe / "broken.jpg").write_bytes(b"not a jpeg")
    (probe / "ok.png").write_bytes((CIFAKE / "test_data_v2" / sorted(os.listdir(CIFAKE / "test_data_v2"))[0]).read_bytes())
    call_kit(home, "competition.predict", "f", str(probe), "--csv", str(home / "p.csv"))
    pred = pd.read_csv(home / "p.csv", keep_default_na=False).set_index("path")
    assert len(pred) == 2 and pred.loc[str(probe / "broken.jpg"), "label"] == -1
    assert pred.loc[str(probe / "ok.png"), "label"] in (0, 1) and pred.loc[str(probe / "broken.jpg"), "error"]


@pytest.mark.slow
def test_a_config_fixed_after_a_failed_start_is_accepted(home):
    """A run that failed before training (bad weights file) saved its config; the corrected rerun must run."""
    smoke_experiment(home, "w", train={"folds": [0]})
    (home / "w.safetensors").write_text("not weights")
    bad = call_kit(home, "competition.experiment", "w", f"model.pretrained_file={home / 'w.safetensors'}", check=False)
    assert bad.returncode == 2 and "w.safetensors" in bad.stderr
    good = call_kit(home, "competition.experiment", "w")
    assert "fold0 done" in good.stderr
