"""tta.adapt_bn is honoured by every inference entry point (findings 1 and 6 of s9): predict, kaggle_predict and
Kit.predict adapt each fold model on the images they predict (competition.adapt.adapt_models, through
inference.predict_experiment) when at least adapt.MIN_IMAGES are usable, else predict unadapted with ONE warning
naming the setting, the count and the fix; serve and --onnx say once that they are unadapted; the adaptation
messages name the real cause, and a run that adapted nothing records no adapted layers and no gain.
Fast tests use tests/fixtures/old_run (a finished run, no training) with tta.adapt_bn switched on in its saved config."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from competition.adapt import MIN_IMAGES, NOISY_BELOW, adapt_batchnorm, adapt_counted, adapt_models
from competition.inference import eval_dataset, load_experiment, predict_dataset
from competition.project import Project
from tests.conftest import REPO, call_kit, make_competition, smoke_experiment
from tests.test_adapt import Images, Net, config
from tests.test_old_runs import edit_saved, old_run

CPU = torch.device("cpu")
ENOUGH = 20  # test images for the "enough to adapt" variants (>= MIN_IMAGES)
FEW = [2, 3, MIN_IMAGES - 1]  # too few: predicted unadapted with one warning (1 image: kaggle_predict refuses a constant file)


def set_adapt(on: bool):
    """A change to a saved config: tta.adapt_bn on or off."""
    def change(cfg: dict) -> None:
        cfg.setdefault("tta", {})["adapt_bn"] = on
    return change


def project_with_run(tmp_path: Path, n_test: int, adapt_bn: bool = True) -> tuple[Path, list[str]]:
    """The old run (old001) in a project with `n_test` test images, tta.adapt_bn set; (home, test image paths)."""
    home = make_competition(tmp_path / "home", n_per_class=2, n_test=n_test)
    old_run(home, "as saved")
    edit_saved(home / "experiments" / "old001", set_adapt(adapt_bn))
    test = pd.read_csv(home / "data" / "test.csv")
    return home, [str(home / "data" / rel) for rel in test["id"]]


def reference(home: Path, paths: list[str], adapted: bool) -> np.ndarray:
    """What the run itself does per fold (experiment.adapted_predictions), averaged over folds: each fold model
    adapted (or not) on `paths`, then predicted with TTA."""
    exp = load_experiment(Project(home), "old001", CPU)
    probs = []
    for model in exp.models:
        if adapted:
            model = adapt_batchnorm(model, eval_dataset(exp.cfg, paths, tta=False), exp.cfg, CPU)
        probs.append(predict_dataset(model, eval_dataset(exp.cfg, paths), exp.cfg, CPU, exp.prior, desc="ref").prob)
    return np.mean(probs, axis=0)


def run_command(command: str, home: Path, paths: list[str]) -> tuple[np.ndarray, list[str]]:
    """Probabilities of `paths` (the project's whole test set, in table order) by one entry point, and the
    warning lines it logged that name tta.adapt_bn."""
    if command == "kit":
        from competition.notebook import Kit

        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger().addHandler(handler)
        try:
            frame = Kit(home).predict("old001", paths)
        finally:
            logging.getLogger().removeHandler(handler)
        warned = [r.getMessage() for r in records if r.levelno >= logging.WARNING and "tta.adapt_bn" in r.getMessage()]
        return frame["prob"].to_numpy(float), warned
    if command == "predict":
        result = call_kit(home, "competition.predict", "old001", *paths, "--csv", str(home / "p.csv"))
        prob = pd.read_csv(home / "p.csv")["prob"].to_numpy(float)
    else:
        result = call_kit(home, "competition.kaggle_predict", "old001", "--out", str(home / "sub.csv"))
        prob = pd.read_csv(home / "sub.csv")["label"].to_numpy(float)
    return prob, [line for line in result.stderr.splitlines() if "WARNING" in line and "tta.adapt_bn" in line]


COMMANDS = ["predict", "kaggle_predict", "kit"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_entry_point_adapts_on_the_images_it_predicts(tmp_path, command):
    home, paths = project_with_run(tmp_path, ENOUGH)
    got, warned = run_command(command, home, paths)
    want, plain = reference(home, paths, adapted=True), reference(home, paths, adapted=False)
    assert np.abs(got - want).max() < 1e-5, (got, want)
    assert np.abs(want - plain).max() > 1e-3  # adaptation changed something: the comparison can fail
    assert len(warned) == 1 and "noisy" in warned[0] and str(ENOUGH) in warned[0]  # 20 < NOISY_BELOW: one line


@pytest.mark.parametrize("n", FEW)
@pytest.mark.parametrize("command", COMMANDS)
def test_too_few_images_are_predicted_unadapted_with_one_warning(tmp_path, command, n):
    home, paths = project_with_run(tmp_path, n)
    got, warned = run_command(command, home, paths)
    assert np.abs(got - reference(home, paths, adapted=False)).max() < 1e-5
    assert len(warned) == 1, warned  # one line for both fold models
    assert f"only {n} image(s)" in warned[0] and "whole test set" in warned[0] and "unadapted" in warned[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_a_run_without_adapt_bn_predicts_as_before_and_says_nothing(tmp_path, command):
    home, paths = project_with_run(tmp_path, ENOUGH, adapt_bn=False)
    got, warned = run_command(command, home, paths)
    assert np.abs(got - reference(home, paths, adapted=False)).max() < 1e-5 and warned == []


@pytest.mark.parametrize("adapt_bn", [True, False])
def test_serve_warns_once_at_start_that_requests_are_unadapted(tmp_path, caplog, adapt_bn):
    from competition.serve import Predictor

    home, _ = project_with_run(tmp_path, 2, adapt_bn)
    with caplog.at_level(logging.WARNING):
        Predictor(Project(home), "old001")
    warned = [r.getMessage() for r in caplog.records if "tta.adapt_bn" in r.getMessage()]
    assert len(warned) == (1 if adapt_bn else 0)
    assert all("NOT applied per request" in w and "old001" in w for w in warned)


class FakeSession:
    """An onnxruntime session stand-in: probability 0.5 for every image (no export needed)."""

    def run(self, _, feeds: dict) -> list[np.ndarray]:
        return [np.full(len(feeds["images"]), 0.5, dtype=np.float32)]


@pytest.mark.parametrize("adapt_bn", [True, False])
def test_predict_onnx_says_once_that_the_export_is_unadapted(tmp_path, monkeypatch, adapt_bn):
    import competition.inference as inference

    home, paths = project_with_run(tmp_path, ENOUGH, adapt_bn)
    monkeypatch.setattr(inference, "onnx_file", lambda *a, **k: home / "model.onnx")
    monkeypatch.setattr(inference, "onnx_session", lambda *a, **k: FakeSession())
    result = call_kit(home, "competition.predict", "old001", *paths[:3], "--onnx")
    warned = [line for line in result.stderr.splitlines() if "WARNING" in line and "tta.adapt_bn" in line]
    assert len(warned) == (1 if adapt_bn else 0) and all("NOT applied" in w and "--onnx" in w for w in warned)


@pytest.mark.parametrize("n,errors,cause,seen", [
    (1, (), "needs at least", 0), (3, (), "needs at least", 0), (MIN_IMAGES - 1, (), "needs at least", 0),
    (MIN_IMAGES + 2, (0, 1, 2), "usable", 0), (MIN_IMAGES + 1, tuple(range(MIN_IMAGES)), "usable", 0),
    (33, (), None, 32),  # batches of 32: the last holds 1 image (no variance, skipped) -> 32 used, adapted
    (40, (1, 2), None, 38),
])
def test_adaptation_messages_name_the_real_cause(caplog, n, errors, cause, seen):
    model = Net().eval()
    with caplog.at_level(logging.WARNING):
        adapted, used = adapt_counted(model, Images(n, 100.0, errors=errors), config(), CPU, "probe")
    text = " | ".join(r.getMessage() for r in caplog.records)
    assert "no decodable image" not in text and used == seen
    if cause is None:
        assert adapted is not model and "noisy" in text and f"only {seen} image(s)" in text
        return
    assert adapted is model and cause in text and f"at least {MIN_IMAGES}" in text
    assert len(caplog.records) == 1


@pytest.mark.parametrize("n,noisy", [(MIN_IMAGES, True), (NOISY_BELOW - 1, True), (NOISY_BELOW, False), (200, False)])
def test_a_small_sample_is_adapted_with_one_noisy_warning_for_all_folds(caplog, n, noisy):
    models = [Net().eval() for _ in range(3)]
    cfg = replace(config(), tta=replace(config().tta, adapt_bn=True))
    with caplog.at_level(logging.WARNING):
        out = adapt_models(models, Images(n, 100.0), cfg, CPU, "exp")
    assert all(a is not m for a, m in zip(out, models)) and len(out) == 3
    assert sum("noisy" in r.getMessage() for r in caplog.records) == (1 if noisy else 0)


def fake_run(paths: list[str]) -> SimpleNamespace:
    """What experiment.adapted_predictions reads of a Run: the test table, caches, device, ranks, profile."""
    from competition.distributed import SINGLE

    return SimpleNamespace(test=pd.DataFrame({"path": paths}), caches={"test": None}, device=CPU, dist=SINGLE,
                           encoding={"shifted": False})


@pytest.mark.parametrize("n", [1, 3])
def test_a_run_that_adapted_nothing_records_no_layers_and_no_gain(tmp_path, caplog, n):
    """Finding 6: too few test images -> unadapted test predictions, batchnorm_layers 0 (so metrics.json adapt_bn
    has no gain and no 'test predictions are adapted too' warning), the real cause in the one warning."""
    from competition.assemble import adapt_bn_scores
    from competition.experiment import adapted_predictions

    home, paths = project_with_run(tmp_path, n)
    exp = load_experiment(Project(home), "old001", CPU)
    cfg = replace(exp.cfg, data=replace(exp.cfg.data, test_like_oof="on"))
    with caplog.at_level(logging.WARNING):
        out = adapted_predictions(cfg, fake_run(paths), exp.models[0], pd.DataFrame(), SimpleNamespace(prior=0.5), 0)
        oof = pd.DataFrame({"target": [0, 1, 0, 1], "prob_test_like": [0.2, 0.8, 0.3, 0.6]})
        scores = adapt_bn_scores(cfg, oof, {"threshold": 0.5}, [{"adapt_bn": {"batchnorm_layers": out["batchnorm_layers"]}}],
                                 "prob_test_like_adapted" in oof)
    assert out["batchnorm_layers"] == 0 and out["test_like"] is None
    plain = predict_dataset(exp.models[0], eval_dataset(cfg, paths), cfg, CPU, 0.5, desc="plain").prob
    assert np.allclose(out["test"].prob, plain)
    assert scores["gain"] is None and scores["batchnorm_layers"] == 0
    text = [r.getMessage() for r in caplog.records]
    assert not any("adapted too" in t or "no decodable" in t for t in text)
    assert sum(f"got {n}" in t for t in text) == 1


def test_the_inference_side_never_imports_training():
    code = ("import sys, competition.adapt, competition.inference, competition.predict, competition.serve, "
            "competition.kaggle_predict; bad = [m for m in sys.modules if m == 'competition.train']; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


@pytest.mark.slow
def test_kaggle_predict_equals_the_runs_own_adapted_test_csv(tmp_path):
    """One tiny adapt_bn run: the kernel path (kaggle_predict on the whole test set) gives its test.csv."""
    home = make_competition(tmp_path / "home", n_test=ENOUGH)
    smoke_experiment(home, "ad001", tta={"views": "hflip", "adapt_bn": True})
    call_kit(home, "competition.experiment", "ad001")
    out = home / "experiments" / "ad001"
    assert all(json.loads((out / f"fold{k}" / "result.json").read_text())["adapt_bn"]["batchnorm_layers"] > 0
               for k in (0, 1))
    call_kit(home, "competition.kaggle_predict", "ad001", "--out", str(home / "sub.csv"))
    sub, own = pd.read_csv(home / "sub.csv"), pd.read_csv(out / "test.csv")
    assert list(sub["id"].astype(str)) == list(own["id"].astype(str))
    assert np.abs(sub["label"].to_numpy(float) - own["prob"].to_numpy(float)).max() < 1e-5
