"""The whole path on small real images, as a user runs it: experiment -> OOF/test -> leaderboard -> blend -> submit.

Real subprocesses, real timm backbones with their ImageNet weights, real CIFAKE images (copied to a
temporary project folder). Also: finished folds are skipped on rerun, and a run killed with SIGKILL
mid-training resumes to the same OOF as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from tests.conftest import REPO, call_kit, smoke_experiment

pytestmark = pytest.mark.slow


def test_whole_path_smoke(trained_project):
    home = trained_project  # experiment `done` (smoke_experiment: 2 folds), run with its report, shared
    smoke_experiment(home, "s2", model="regnetx_002", tta={"views": "d4"})
    out = home / "experiments" / "done"
    for f in ("config.yaml", "oof.csv", "test.csv", "metrics.json", "fold0/log.csv", "fold1/best.pt", "fold1/last.pt"):
        assert (out / f).is_file(), f
    oof = pd.read_csv(out / "oof.csv")
    assert list(oof.columns) == ["id", "fold", "target", "prob"] and len(oof) == 40
    assert set(oof["id"]) == set(pd.read_csv(home / "data" / "train.csv")["file_name"])
    test = pd.read_csv(out / "test.csv")
    assert list(test.columns) == ["id", "prob"] and len(test) == 12 and test["prob"].between(0, 1).all()
    log = pd.read_csv(out / "fold0" / "log.csv")
    assert {"epoch", "lr", "train_loss", "val_loss", "val_auc", "val_score", "train_img_s"} <= set(log.columns)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["complete"] and len(metrics["folds"]) == 2 and "gain" in metrics["tta"]
    assert {"auc", "accuracy", "logloss", "f1"} <= set(metrics["oof"]) and metrics["wall_s"] > 0
    best = torch.load(out / "fold0" / "best.pt", weights_only=True)
    assert best["model_name"] == "tf_mobilenetv3_small_100" and best["config"]["data"]["img_size"] == 32

    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 7 and "<h2>roc</h2>" in report  # self-contained, plots embedded
    for png in ("curves", "roc", "pr", "confusion", "histogram", "balance", "confidently_wrong"):
        assert (out / "report" / f"{png}.png").is_file(), png
    some = sorted((home / "data" / "train_data").glob("*.jpg"))[:2]
    cam = call_kit(home, "competition.explain", "done", *map(str, some), "--out", str(home / "cam"))
    assert len(cam.stdout.strip().splitlines()) == 2 and len(list((home / "cam").glob("*_gradcam.png"))) == 2

    mtime = (out / "fold0" / "best.pt").stat().st_mtime_ns
    rerun = call_kit(home, "competition.experiment", "done")
    assert "fold 0 already done, skipping" in rerun.stderr
    assert (out / "fold0" / "best.pt").stat().st_mtime_ns == mtime

    runtime = call_kit(home, "competition.experiment", "done", "train.threads=2", "data.num_workers=0", "train.device=cpu",
                       "tta.max_batch=7", "train.compile=false", f"data.cache_dir={home / 'other_cache'}")
    assert "fold 1 already done, skipping" in runtime.stderr  # where a run executes is not what it computes
    changed = call_kit(home, "competition.experiment", "done", "train.epochs=2", check=False)
    assert changed.returncode == 2 and "config changed" in changed.stderr and "--restart" in changed.stderr

    call_kit(home, "competition.experiment", "s2")
    board = (home / "experiments" / "LEADERBOARD.md").read_text()
    assert "| done |" in board and "| s2 |" in board and "regnetx_002" in board

    blend = call_kit(home, "competition.ensemble", "done", "s2", "--name", "smoke")
    assert "done" in blend.stdout and "s2" in blend.stdout and "nested" in blend.stdout
    sub = pd.read_csv(home / "submissions" / "smoke.csv")
    assert sub["id"].tolist() == pd.read_csv(home / "data" / "sample_submission.csv")["id"].tolist()
    dry = call_kit(home, "competition.submit", str(home / "submissions" / "smoke.csv"), "--dry-run")
    assert "valid (12 rows)" in dry.stderr

    # predict CLI: the fold models + TTA on a folder reproduce the experiment's test predictions
    pred = call_kit(home, "competition.predict", "done", str(home / "data" / "test_data_v2"), "--csv", str(home / "p.csv"))
    assert len(pred.stdout.strip().splitlines()) == 12 and "images/s" in pred.stderr
    got = pd.read_csv(home / "p.csv")
    got["id"] = got["path"].str.replace(str(home / "data") + "/", "", regex=False)
    want = test.set_index("id").loc[got["id"], "prob"].to_numpy()
    np.testing.assert_allclose(got["prob"], want, atol=1e-6)
    blend_pred = call_kit(home, "competition.predict", str(home / "submissions" / "smoke.json"),
                         str(home / "data" / "test_data_v2"))
    assert len(blend_pred.stdout.strip().splitlines()) == 12


def _start(home, name):
    env = {**os.environ, "KIT_HOME": str(home), "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "competition.experiment", name], cwd=home, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_training_resumes_to_identical_oof(home):
    sections = {"train": {"epochs": 3, "batch_size": 4, "threads": 1, "patience": 0}, "folds": {}}
    smoke_experiment(home, "full", **sections)
    smoke_experiment(home, "killed", **sections)
    call_kit(home, "competition.experiment", "full")

    proc = _start(home, "killed")
    last = home / "experiments" / "killed" / "fold0" / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert last.exists(), proc.stderr.read() if proc.poll() is not None else "no checkpoint in time"
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    killed = home / "experiments" / "killed"
    assert not (killed / "oof.csv").exists()  # it really was interrupted
    # every real output is whole: atomic writes leave at most a stray temp file, never a truncated output
    for ckpt in killed.rglob("*.pt"):
        torch.load(ckpt, weights_only=True)
    for table in killed.rglob("*.csv"):
        pd.read_csv(table)

    resumed = call_kit(home, "competition.experiment", "killed")
    assert "resuming after epoch" in resumed.stderr
    assert not list(killed.rglob("*.tmp"))  # stray temp files are cleaned up on restart
    a = pd.read_csv(home / "experiments" / "full" / "oof.csv")
    b = pd.read_csv(home / "experiments" / "killed" / "oof.csv")
    assert (a["id"] == b["id"]).all()
    np.testing.assert_allclose(a["prob"], b["prob"], atol=1e-6, rtol=0)
    ta = pd.read_csv(home / "experiments" / "full" / "test.csv")
    tb = pd.read_csv(home / "experiments" / "killed" / "test.csv")
    np.testing.assert_allclose(ta["prob"], tb["prob"], atol=1e-6, rtol=0)


def test_ood_cluster_split_gets_its_own_column(home):
    import yaml

    comp_file = home / "competition.yaml"
    conf = yaml.safe_load(comp_file.read_text())
    conf["folds"].update({"ood_split": "cluster", "ood_clusters": 4})
    comp_file.write_text(yaml.safe_dump(conf))
    smoke_experiment(home, "o1", data={"cache_dir": str(home / ".cache")})
    call_kit(home, "competition.experiment", "o1")
    folds = pd.read_csv(home / "folds" / "tiny_k2_s0_ood4.csv")
    assert {"fold", "ood_fold"} <= set(folds.columns) and folds["ood_fold"].nunique() == 2
    call_kit(home, "competition.experiment", "o1", "--ood")
    ood = json.loads((home / "experiments" / "o1" / "ood" / "metrics.json").read_text())
    ood_oof = pd.read_csv(home / "experiments" / "o1" / "ood" / "oof.csv").set_index("id")
    assert (ood_oof.loc[folds["id"], "fold"].values == folds["ood_fold"].values).all()
    board = (home / "experiments" / "LEADERBOARD.md").read_text()
    assert "OOD score" in board and f"{ood['oof_score']:.5f}" in board


def test_persistent_workers_resume_to_identical_oof(home, monkeypatch):
    """With 2 persistent DataLoader workers (reseeded per epoch through shared memory), a run interrupted
    after epoch 1 and resumed equals the uninterrupted run."""
    import competition.train as train_module

    sections = {"train": {"epochs": 3, "batch_size": 4, "threads": 1, "patience": 0, "folds": [0]},
                "data": {"num_workers": 2, "cache_dir": str(home / ".cache")}}
    smoke_experiment(home, "straight", **sections)
    smoke_experiment(home, "stopped", **sections)
    call_kit(home, "competition.experiment", "straight")
    real_epoch, calls = train_module._run_epoch, {"n": 0}

    def interrupted(state, runner, inputs, loaders, cfg, device, epoch, dist):
        calls["n"] += 1
        if epoch == 2 and calls["n"] == 3:
            raise KeyboardInterrupt
        return real_epoch(state, runner, inputs, loaders, cfg, device, epoch, dist)

    monkeypatch.setattr(train_module, "_run_epoch", interrupted)
    stopped = call_kit(home, "competition.experiment", "stopped", check=False)
    assert stopped.returncode == 130 and "rerun the same command to resume" in stopped.stderr
    resumed = call_kit(home, "competition.experiment", "stopped")
    assert "resuming after epoch 1" in resumed.stderr
    a = pd.read_csv(home / "experiments" / "straight" / "oof.csv")
    b = pd.read_csv(home / "experiments" / "stopped" / "oof.csv")
    np.testing.assert_allclose(a["prob"], b["prob"], atol=1e-6, rtol=0)
