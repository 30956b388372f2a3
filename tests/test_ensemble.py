"""Ensembling: nested CV keeps fitted blends honest; members must share folds; output is a valid submission."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from competition.blend import METHODS, Blend, nested_cv
from competition.ensemble import Members, evaluate, evaluate_method
from tests.conftest import call_kit


def noise_members(n=600, m=12, seed=0) -> Members:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return Members(names=[f"m{j}" for j in range(m)], oof=rng.uniform(0.01, 0.99, (n, m)),
                   test=rng.uniform(size=(10, m)), target=y, fold=np.arange(n) % 5, ids=pd.Series(range(n)).astype(str),
                   test_ids=pd.Series(range(10)).astype(str), metric="auc")


@pytest.mark.parametrize("method", ["hill", "optimize", "stack"])
def test_nested_score_of_fitted_blend_on_noise_stays_at_chance(method):
    members = noise_members()
    result = evaluate_method(method, members)
    assert abs(result["nested"]["mean"] - 0.5) < 0.04  # honest: noise blends score like a coin
    assert result["in_sample"] > result["nested"]["mean"] + 0.03  # the in-sample score flatters


@pytest.mark.slow  # over 5 s of CPU: kept out of the fast tier
def test_auto_pays_for_choosing_on_noise_members():
    """`auto` chooses inside the nested CV: on pure-noise members its nested AUC stays at chance."""
    members = noise_members(n=2000, m=5, seed=3)
    results, chosen, honest = evaluate(list(METHODS), members, "none")
    assert abs(honest["mean"] - 0.5) < 0.04, honest["mean"]
    assert len(honest["choices"]) == 5 and set(honest["choices"]) <= set(METHODS)


def test_nested_scores_recover_real_signal():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 1000)
    good = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, 1000), 0.01, 0.99)
    x = np.column_stack([good, rng.uniform(0.01, 0.99, 1000)])
    result = nested_cv("hill", x, y, np.arange(1000) % 5, "auc")
    assert result["pooled"] > 0.75 and result["mean"] > 0.75


def fake_experiment(home, name, folds, ids, target, test_ids, seed):
    rng = np.random.default_rng(seed)
    out = home / "experiments" / name
    out.mkdir(parents=True)
    prob = np.clip(0.5 + 0.3 * (target - 0.5) + rng.normal(0, 0.25, len(ids)), 0, 1)
    pd.DataFrame({"id": ids, "fold": folds, "target": target, "prob": prob}).to_csv(out / "oof.csv", index=False)
    pd.DataFrame({"id": test_ids, "prob": rng.uniform(size=len(test_ids))}).to_csv(out / "test.csv", index=False)
    (out / "metrics.json").write_text(json.dumps({"complete": True}))


@pytest.fixture
def blend_home(home):
    train = pd.read_csv(home / "data" / "train.csv", index_col=0)
    test_ids = pd.read_csv(home / "data" / "test.csv", index_col=0)["id"]
    folds = np.arange(len(train)) % 2
    for i, name in enumerate(("eA", "eB", "eC")):
        fake_experiment(home, name, folds, train["file_name"], train["label"].to_numpy(), test_ids.sample(frac=1, random_state=i), i)
    return home


def test_ensemble_cli_writes_valid_submission_and_sidecar(blend_home):
    proc = call_kit(blend_home, "competition.ensemble", "eA", "eB", "eC", "--method", "rank", "--name", "b1")
    for name in ("eA", "eB", "eC", "rank"):
        assert name in proc.stdout
    assert "nested" in proc.stdout and "in-sample (flatters)" in proc.stdout
    sub = pd.read_csv(blend_home / "submissions" / "b1.csv")
    sample = pd.read_csv(blend_home / "data" / "sample_submission.csv")
    assert sub["id"].tolist() == sample["id"].tolist() and sub["label"].between(0, 1).all()
    side = json.loads((blend_home / "submissions" / "b1.json").read_text())
    assert side["members"] == ["eA", "eB", "eC"] and side["method"] == "rank" and "std" in side["nested"]
    assert Blend.from_dict(side["blend"]).method == "rank" and len(side["blend"]["params"]["reference"]) == 3
    assert "## Blends" in (blend_home / "experiments" / "LEADERBOARD.md").read_text()


def test_members_with_different_folds_are_refused(blend_home):
    oof = pd.read_csv(blend_home / "experiments" / "eB" / "oof.csv")
    oof["fold"] = 1 - oof["fold"]
    oof.to_csv(blend_home / "experiments" / "eB" / "oof.csv", index=False)
    proc = call_kit(blend_home, "competition.ensemble", "eA", "eB", check=False)
    assert proc.returncode == 2 and "used different folds" in proc.stderr


@pytest.mark.parametrize("kind", ["platt", "temperature"])
def test_calibration_improves_logloss_of_overconfident_members(kind):
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 2000)
    z = 2.0 * (y - 0.5) + rng.normal(0, 1.0, 2000)
    overconfident = 1 / (1 + np.exp(-4 * z))  # right ranking, probabilities far too extreme
    members = Members(names=["a"], oof=overconfident[:, None], test=overconfident[:10, None], target=y,
                      fold=np.arange(2000) % 5, ids=pd.Series(range(2000)).astype(str),
                      test_ids=pd.Series(range(10)).astype(str), metric="logloss")
    raw = evaluate_method("mean", members)
    calibrated = evaluate_method("mean", members, kind)
    assert calibrated["nested"]["mean"] < raw["nested"]["mean"] - 0.05  # measured: 0.459 -> 0.373 (platt)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("calibration", ["none", "platt"])
def test_saved_blend_gives_each_image_the_submissions_label(method, calibration):
    """A blend saved to JSON and loaded back scores any single test row exactly as the whole-test submission did."""
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 500)
    oof = np.clip(0.5 + 0.25 * (y[:, None] - 0.5) + rng.normal(0, 0.2, (500, 3)), 0.01, 0.99)
    test = rng.uniform(0.05, 0.95, (300, 3))
    fitted = Blend.fit(["a", "b", "c"], method, "f1", oof, y, calibration).with_reference(test)
    submission = fitted.label(fitted.apply(test))
    loaded = Blend.from_dict(json.loads(json.dumps(fitted.to_dict())))
    one_by_one = np.array([loaded.label(loaded.apply(test[i:i + 1]))[0] for i in range(len(test))])
    np.testing.assert_array_equal(one_by_one, submission)
    assert 0 < submission.mean() < 1


def test_f1_threshold_is_exact_over_every_distinct_score():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 3000)
    p = np.round(np.clip(0.4 + 0.2 * y + rng.normal(0, 0.25, 3000), 0, 1), 3)  # ties included
    from competition.metrics import best_threshold, score
    for metric in ("f1", "accuracy"):
        t = best_threshold(metric, y, p)
        brute = max(score(metric, y, p, v) for v in np.unique(p))
        assert score(metric, y, p, t) == pytest.approx(brute, abs=1e-12)
