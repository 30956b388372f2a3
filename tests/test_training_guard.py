"""The suite's own speed rule (tests/conftest.py): a test not marked slow runs with $KIT_NO_TRAINING set, which
every process it starts inherits, and competition.train records and refuses any training under it."""

from __future__ import annotations

import os

import pytest

from competition.train import NO_TRAINING, refuse_forbidden_training
from tests import conftest


def test_conftest_and_the_kit_name_the_same_variable():
    assert conftest.NO_TRAINING == NO_TRAINING


def test_a_fast_test_and_its_child_processes_run_with_training_forbidden():
    assert os.environ.get(NO_TRAINING, "").endswith(".log")  # os.environ: what every subprocess inherits


@pytest.mark.slow
def test_a_slow_test_may_train():
    assert NO_TRAINING not in os.environ


def test_the_kit_records_the_attempt_and_refuses(tmp_path, monkeypatch):
    record = tmp_path / "trained.log"
    monkeypatch.setenv(NO_TRAINING, str(record))
    with pytest.raises(RuntimeError, match="training is forbidden"):
        refuse_forbidden_training()
    assert "started training" in record.read_text()  # read by conftest at teardown, even where the error was caught
    monkeypatch.delenv(NO_TRAINING)
    refuse_forbidden_training()  # unset: training goes ahead


def test_a_fast_test_cannot_use_the_shared_trained_project(tmp_path_factory):
    with pytest.raises(pytest.fail.Exception, match="only a test marked slow"):
        conftest.shared_project(tmp_path_factory, "never-built", lambda home: None)
