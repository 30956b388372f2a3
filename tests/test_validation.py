"""Validation on a threshold metric, end to end: F1 with 0/1 submissions, every blend method, predict = submission.

One small real competition (CIFAKE images, `metric: f1`, `submission_values: label`), two real tiny
experiments, then every blend method through ensemble, predict and submit --dry-run.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import f1_score

from competition.blend import METHODS
from tests.conftest import call_kit, copy_project, make_competition, shared_project, smoke_experiment

pytestmark = pytest.mark.slow


def board_row(home, first_cell: str) -> list[str]:
    """The LEADERBOARD.md table row whose second cell is `first_cell`, split into cells."""
    for line in (home / "experiments" / "LEADERBOARD.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) > 2 and cells[1] == first_cell:
            return cells
    raise AssertionError(f"{first_cell} not on the leaderboard")


def build_f1_runs(home):
    """An F1 competition with 0/1 submissions and two finished experiments, s1 and s2."""
    make_competition(home, n_per_class=30, n_test=16, metric="f1", submission_values="label")
    smoke_experiment(home, "s1", train={"epochs": 2, "patience": 0})
    smoke_experiment(home, "s2", model="regnetx_002")
    call_kit(home, "competition.experiment", "s1")
    call_kit(home, "competition.experiment", "s2")


@pytest.fixture(scope="module")
def f1_home(tmp_path_factory):
    """This module's copy of the F1 project (trained once per test run, whichever xdist worker asks first)."""
    return copy_project(shared_project(tmp_path_factory, "f1", build_f1_runs), tmp_path_factory.mktemp("f1") / "home")


def test_leaderboard_number_is_f1_of_the_written_oof_labels(f1_home):
    out = f1_home / "experiments" / "s1"
    metrics = json.loads((out / "metrics.json").read_text())
    oof = pd.read_csv(out / "oof.csv")
    f1 = f1_score(oof["target"], (oof["prob"] >= metrics["threshold"]).astype(int))
    assert metrics["oof_score"] == pytest.approx(f1, abs=1e-12)
    row = board_row(f1_home, "s1")
    assert float(row[3]) == pytest.approx(f1, abs=5e-6) and row[2].startswith("f1 @ ")
    assert metrics["select_by"] == "logloss" and "threshold" in metrics["score_note"]
    assert set(metrics["positive_rate"]) == {"oof", "test", "shifted"}
    log = pd.read_csv(out / "fold0" / "log.csv")  # epochs chosen by validation log loss, not F1 at 0.5
    best = json.loads((out / "fold0" / "result.json").read_text())["best_epoch"]
    assert best == int(log["val_loss"].idxmin())


@pytest.mark.parametrize("method", METHODS)
def test_predict_labels_equal_the_submission_for_every_method(f1_home, method):
    name = f"b_{method}"
    call_kit(f1_home, "competition.ensemble", "s1", "s2", "--method", method, "--name", name)
    sub = pd.read_csv(f1_home / "submissions" / f"{name}.csv")
    assert set(sub["label"]) <= {0, 1} and len(sub) == 16
    side = json.loads((f1_home / "submissions" / f"{name}.json").read_text())
    nested = pd.read_csv(f1_home / "submissions" / f"{name}.oof.csv")
    per_fold = [f1_score(g["target"], g["nested"].astype(int)) for _, g in nested.groupby("fold")]
    assert side["nested"]["mean"] == pytest.approx(np.mean(per_fold), abs=1e-12)  # the number is its written labels'
    assert float(board_row(f1_home, f"{name}.csv")[4].split("±")[0]) == pytest.approx(np.mean(per_fold), abs=5e-6)
    call_kit(f1_home, "competition.predict", str(f1_home / "submissions" / f"{name}.json"),
             str(f1_home / "data" / "test_data_v2"), "--csv", str(f1_home / f"{name}_pred.csv"))
    pred = pd.read_csv(f1_home / f"{name}_pred.csv")
    pred["id"] = pred["path"].str.replace(str(f1_home / "data") + "/", "", regex=False)
    want = sub.set_index("id").loc[pred["id"], "label"].to_numpy()
    np.testing.assert_array_equal(pred["label"].to_numpy(), want)
    dry = call_kit(f1_home, "competition.submit", str(f1_home / "submissions" / f"{name}.csv"), "--dry-run")
    assert "valid (16 rows)" in dry.stderr
