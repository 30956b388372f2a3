"""Folds in parallel: one process per device (`--devices cpu,cpu`), or folds spread over machines sharing a
folder (`--folds K --no-assemble`, then `assemble`): assembled once, equal to the sequential run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.conftest import call_kit, run_kit, smoke_experiment

pytestmark = pytest.mark.slow


def oof(home, name) -> pd.DataFrame:
    return pd.read_csv(home / "experiments" / name / "oof.csv").sort_values("id").reset_index(drop=True)


def test_one_process_per_device_equals_the_sequential_run(trained_project):
    home = trained_project  # `done`: the same smoke experiment, trained folds one after the other in one process
    smoke_experiment(home, "par")
    proc = run_kit(home, "competition.experiment", "par", "--devices", "cpu,cpu")
    assert proc.stderr.count("worker on cpu") == 2
    assert proc.stderr.count("assembled 2 fold(s)") == 1  # once, by the parent, after both workers
    a, b = oof(home, "done"), oof(home, "par")
    assert (a["id"] == b["id"]).all() and (a["fold"] == b["fold"]).all()
    np.testing.assert_allclose(a["prob"], b["prob"], atol=1e-6, rtol=0)
    ta = pd.read_csv(home / "experiments" / "done" / "test.csv")
    tb = pd.read_csv(home / "experiments" / "par" / "test.csv")
    np.testing.assert_allclose(ta["prob"], tb["prob"], atol=1e-6, rtol=0)


def test_folds_on_separate_machines_then_assemble(home):
    smoke_experiment(home, "m")
    first = call_kit(home, "competition.experiment", "m", "--folds", "0", "--no-assemble")
    assert "fold0 done" in first.stderr and not (home / "experiments" / "m" / "oof.csv").exists()
    early = call_kit(home, "competition.experiment", "m", "--assemble", check=False)
    assert early.returncode == 2 and "fold(s) [1] not finished" in early.stderr
    call_kit(home, "competition.experiment", "m", "--folds", "1", "--no-assemble")
    done = call_kit(home, "competition.experiment", "m", "--assemble")
    assert "assembled 2 fold(s)" in done.stderr
    assert len(oof(home, "m")) == 40 and set(oof(home, "m")["fold"]) == {0, 1}
    assert "| m |" in (home / "experiments" / "LEADERBOARD.md").read_text()
