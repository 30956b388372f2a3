"""Test-time BatchNorm adaptation (competition/adapt.py, `tta.adapt_bn`) and the labelled shift benchmark
(benchmarks/shift.py): statistics move to the new images, no label is read, other layers stay in eval mode, a
model without BatchNorm is left alone, adapting on the training distribution keeps predictions, and the run's
outputs (fold oof.csv column, metrics.json `adapt_bn`) are written."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from competition import adapt
from competition.adapt import adapt_batchnorm, batchnorm_layers
from competition.config import Config
from tests.conftest import NO_TRAINING, REPO, call_kit

CPU = torch.device("cpu")


class Images(Dataset):
    """uint8 images (N, 3, 8, 8) drawn around `mean`, in the kit's (image, label, index, error) form."""

    def __init__(self, n: int, mean: float, std: float = 30.0, label: float = float("nan"), seed: int = 0,
                 errors: tuple[int, ...] = ()):
        rng = np.random.default_rng(seed)
        self.images = torch.from_numpy(rng.normal(mean, std, (n, 3, 8, 8)).clip(0, 255).astype(np.uint8))
        self.label, self.errors = label, set(errors)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = torch.zeros_like(self.images[i]) if i in self.errors else self.images[i]  # placeholder like the kit's
        return image, torch.tensor(self.label), i, "undecodable" if i in self.errors else ""


class Net(nn.Module):
    """uint8 -> float -> [dropout] -> BatchNorm (or none) -> pooled linear logit."""

    def __init__(self, norm: bool = True, dropout: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.norm = nn.BatchNorm2d(3) if norm else nn.Identity()
        self.head = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.drop(x.float())).mean((2, 3))).squeeze(1)


def config() -> Config:
    """Batches of 16 in this process, fp32, NCHW."""
    cfg = Config()
    return replace(cfg, train=replace(cfg.train, batch_size=16, channels_last=False, amp="off"),
                   data=replace(cfg.data, num_workers=0))


@pytest.mark.parametrize("mean", [40.0, 128.0, 220.0])
def test_running_stats_move_to_the_new_images_and_the_model_is_left_alone(mean):
    model = Net().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = Images(200, mean)
    adapted = adapt_batchnorm(model, data, config(), CPU)
    pixels = data.images.float()
    bn = adapted.norm
    assert torch.allclose(bn.running_mean, pixels.mean((0, 2, 3)), rtol=0.01)
    assert torch.allclose(bn.running_var, pixels.var((0, 2, 3)), rtol=0.1)
    assert not bn.training and bn.momentum == model.norm.momentum  # handed back in eval mode, momentum restored
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the original is untouched


def test_labels_are_never_read_and_undecodable_rows_are_left_out():
    model = Net().eval()
    nan = adapt_batchnorm(model, Images(64, 100.0, label=float("nan"), errors=(3, 7)), config(), CPU).norm
    ones = adapt_batchnorm(model, Images(64, 100.0, label=1.0, errors=(3, 7)), config(), CPU).norm
    assert torch.equal(nan.running_mean, ones.running_mean) and torch.isfinite(nan.running_mean).all()
    kept = torch.cat([Images(64, 100.0).images[:3], Images(64, 100.0).images[4:7], Images(64, 100.0).images[8:]])
    # the zero placeholders of undecodable rows do not drag the mean down (batch-weighted average of kept images)
    assert (nan.running_mean - kept.float().mean((0, 2, 3))).abs().max() < 1.0


def test_other_layers_stay_in_eval_mode():
    """Dropout in train mode would inflate the variance seen by BatchNorm ~2x at p=0.5."""
    data = Images(200, 128.0)
    bn = adapt_batchnorm(Net(dropout=0.5).eval(), data, config(), CPU).norm
    assert torch.allclose(bn.running_var, data.images.float().var((0, 2, 3)), rtol=0.1)


def test_a_model_without_batchnorm_is_returned_unchanged_with_one_warning(caplog, monkeypatch):
    monkeypatch.setattr(adapt, "_warned", set())
    model = Net(norm=False).eval()
    with caplog.at_level(logging.WARNING):
        first = adapt_batchnorm(model, Images(32, 100.0), config(), CPU)
        second = adapt_batchnorm(model, Images(32, 100.0), config(), CPU)
    assert first is model and second is model and batchnorm_layers(model) == []
    warnings = [r for r in caplog.records if "no BatchNorm" in r.getMessage()]
    assert len(warnings) == 1 and "Net" in warnings[0].getMessage()


def test_adapting_on_the_training_distribution_keeps_predictions():
    """Eval-mode parity: statistics learned with momentum over 'training' batches, re-estimated on fresh images of
    the same distribution, give nearly the same probabilities; a shifted set changes them."""
    torch.manual_seed(0)
    model = Net()
    model.train()
    with torch.no_grad():
        for seed in range(40):  # training-time running statistics (momentum 0.1)
            model(Images(16, 128.0, seed=seed).images)
    model.eval()
    probe = Images(64, 128.0, seed=99).images
    same = adapt_batchnorm(model, Images(256, 128.0, seed=7), config(), CPU)
    shifted = adapt_batchnorm(model, Images(256, 60.0, std=10.0, seed=7), config(), CPU)
    with torch.no_grad():
        p0, p1, p2 = (torch.sigmoid(m(probe)) for m in (model, same, shifted))
    assert (p1 - p0).abs().max() < 0.02
    assert (p2 - p0).abs().max() > 0.05


def shift_test_images(home: Path) -> None:
    """Re-encode the tiny competition's test images in place (0.75x, JPEG q40): the test profile is shifted."""
    for path in (home / "data").rglob("*.jpg"):
        if "test" in str(path.relative_to(home / "data")).split("/")[0]:
            image = Image.open(path).convert("RGB")
            image.resize((24, 24)).save(path, "JPEG", quality=40)


@pytest.mark.slow
def test_a_finished_run_recomputes_its_predictions_with_adapt_bn_without_retraining(trained_project):
    home = trained_project
    out = home / "experiments" / "done"
    shift_test_images(home)
    before = {k: pd.read_csv(out / f"fold{k}" / "test.csv")["prob"].to_numpy() for k in (0, 1)}
    run = call_kit(home, "competition.experiment", "done", "tta.adapt_bn=true")
    recomputed = ("recomputing its predictions", "computed again from the fold checkpoints")  # setting / test files
    assert any(m in run.stderr for m in recomputed) and " epoch 0:" not in run.stderr  # nothing retrained
    metrics = json.loads((out / "metrics.json").read_text())
    bn = metrics["adapt_bn"]
    assert bn["batchnorm_layers"] > 0 and bn["gain"] == pytest.approx(bn["oof_test_like_adapted"] - bn["oof_test_like"])
    assert bn["oof_test_like"] == pytest.approx(metrics["oof_test_like"]["score"])
    for k in (0, 1):
        fold = pd.read_csv(out / f"fold{k}" / "oof.csv")
        assert fold["prob_test_like_adapted"].between(0, 1).all()
        assert not np.allclose(fold["prob_test_like_adapted"], fold["prob_test_like"])
        assert json.loads((out / f"fold{k}" / "result.json").read_text())["adapt_bn"]["batchnorm_layers"] > 0
        assert not np.allclose(pd.read_csv(out / f"fold{k}" / "test.csv")["prob"], before[k])  # adapted on test
    assert "prob_test_like_adapted" in pd.read_csv(out / "oof.csv")
    kept = call_kit(home, "competition.experiment", "done", "--assemble")  # YAML: adapt_bn off; the folds: on
    assert "assembling as its fold" in kept.stderr and "adapt_bn" in json.loads((out / "metrics.json").read_text())
    back = call_kit(home, "competition.experiment", "done")  # back off: recomputed again, unadapted
    assert "adapt_bn" not in json.loads((out / "metrics.json").read_text())
    assert "recomputing" in back.stderr
    for k in (0, 1):
        assert "adapt_bn" not in json.loads((out / f"fold{k}" / "result.json").read_text())


@pytest.mark.slow
def test_the_shift_benchmark_quick_mode(tmp_path):
    """benchmarks/shift.py --quick: every remedy row of its one shift, finite scores, the JSON and the table."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    env.pop(NO_TRAINING, None)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "shift.py"), str(tmp_path / "b"), "--quick"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "b" / "shift.json").read_text())
    rows = {(r["shift"], r["remedy"]): r for r in result["rows"]}
    shift = "resize0.75+jpeg65"
    assert set(rows) == {(shift, r) for r in ("none", "adapt_bn", "match_test", "match_test+adapt_bn", "pseudo",
                                                  "pseudo+adapt_bn")}
    for row in rows.values():
        assert all(0 <= row[k] <= 1 for k in ("clean_oof", "true_shifted", "oof_test_like"))
        assert row["test_like_error"] == pytest.approx(abs(row["oof_test_like"] - row["true_shifted"]))
    assert rows[(shift, "none")]["profile"]["shifted"] is True  # measured from the re-encoded test files
    assert rows[(shift, "none")]["profile"]["scale"] == pytest.approx(0.75, abs=0.02)
    assert f"| {shift} | adapt_bn |" in proc.stdout


@pytest.mark.parametrize("metric", ["auc", "logloss", "accuracy"])
@pytest.mark.parametrize("worse", [True, False])
def test_adaptation_that_hurts_the_test_like_oof_is_a_warning(caplog, metric, worse):
    from competition.assemble import adapt_bn_scores
    from competition.config import Config, CompetitionConfig

    rng = np.random.default_rng(0)
    target = rng.integers(0, 2, 200)
    good = np.clip(target * 0.6 + rng.random(200) * 0.4, 0.01, 0.99)
    bad = np.clip(0.5 + (good - 0.5) * 0.2 + rng.normal(0, 0.2, 200), 0.01, 0.99)
    oof = pd.DataFrame({"target": target, "prob_test_like": good if worse else bad,
                        "prob_test_like_adapted": bad if worse else good})
    cfg = Config(name="e1", competition=CompetitionConfig(metric=metric))
    with caplog.at_level("INFO"):
        out = adapt_bn_scores(cfg, oof, {"threshold": 0.5}, [{"adapt_bn": {"batchnorm_layers": 3}}], True)
    warned = [r for r in caplog.records if r.levelname == "WARNING" and "tta.adapt_bn" in r.getMessage()]
    assert (out["gain"] < 0) == worse and len(warned) == (1 if worse else 0)
