"""A run of some folds on a finished experiment (`--folds 0`, `train.folds=[1]`, `--folds 0 --assemble`) keeps every
finished fold in the outputs: it never rewrites metrics.json/oof.csv with fewer folds (a blend holding the experiment
would then be refused as rerun)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.conftest import call_kit

WAYS = [("--folds", "0"), ("--folds", "1"), ("train.folds=[1]",), ("--folds", "0", "--assemble"),
        ("--folds", "0", "--no-assemble")]


@pytest.mark.slow  # the shared trained run
@pytest.mark.parametrize("way", WAYS, ids=" ".join)
def test_a_run_of_some_folds_keeps_every_finished_fold(trained_project, way):
    out = trained_project / "experiments" / "done"
    before = json.loads((out / "metrics.json").read_text())
    oof_before = pd.read_csv(out / "oof.csv")
    assert before["complete"] and before["folds_run"] == [0, 1]
    call_kit(trained_project, "competition.experiment", "done", *way)
    after = json.loads((out / "metrics.json").read_text())
    assert after["complete"] and after["folds_run"] == [0, 1] and after["n_oof"] == before["n_oof"]
    assert after["oof_score"] == pytest.approx(before["oof_score"], abs=1e-12)
    assert len(pd.read_csv(out / "oof.csv")) == len(oof_before)


@pytest.mark.slow  # the shared trained run, then a 1-epoch retrain of its 2 folds
def test_restart_says_what_it_deletes(trained_project):
    result = call_kit(trained_project, "competition.experiment", "done", "--restart")
    warned = [line for line in result.stderr.splitlines() if "--restart: deleting" in line]
    assert len(warned) == 1 and "experiments/done" in warned[0] and "metrics.json" in warned[0], warned
