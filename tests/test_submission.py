"""Submission validation: every kind of invalid file is refused with a message saying what is wrong."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from competition.config import CompetitionConfig
from competition.submission import SubmissionError, build_submission, validate_submission, write_submission
from tests.conftest import CIFAKE, PROJECT

COMP = CompetitionConfig(data_dir=str(CIFAKE))


@pytest.fixture(scope="module")
def valid() -> pd.DataFrame:
    sample = pd.read_csv(CIFAKE / "sample_submission.csv")
    return sample.assign(label=np.linspace(0, 1, len(sample)))


def test_valid_submission_passes_and_is_written(valid, tmp_path):
    validate_submission(valid, COMP, PROJECT)
    path = write_submission(tmp_path / "s.csv", valid, COMP, PROJECT)
    assert pd.read_csv(path).shape == (5500, 2)


def test_build_puts_rows_in_sample_order(valid):
    shuffled = valid.sample(frac=1, random_state=0)
    built = build_submission(COMP, PROJECT, shuffled["id"], shuffled["label"].to_numpy())
    assert built["id"].tolist() == valid["id"].tolist() and np.allclose(built["label"], valid["label"])


@pytest.mark.parametrize("edit, message", [
    (lambda f: f.rename(columns={"label": "prob"}), "columns are ['id', 'prob']; the competition wants exactly ['id', 'label']"),
    (lambda f: f.iloc[:-1], "5499 rows; the sample submission has 5500"),
    (lambda f: f.assign(id=["x.jpg"] + f["id"].tolist()[1:]), "ids differ from the sample submission: 1 unknown"),
    (lambda f: f.iloc[[1, 0] + list(range(2, len(f)))], "not in the sample submission's order (first difference at row 1"),
    (lambda f: f.assign(label=[np.nan] + f["label"].tolist()[1:]), "1 missing/NaN/non-numeric values (rows [1])"),
    (lambda f: f.assign(label=[1.5] + f["label"].tolist()[1:]), "probabilities must lie in [0, 1]"),
    (lambda f: pd.concat([f.iloc[:-1], f.iloc[:1]]), "duplicate ids"),
])
def test_invalid_submissions_are_refused(valid, tmp_path, edit, message):
    bad = edit(valid.copy()).reset_index(drop=True)
    with pytest.raises(SubmissionError) as err:
        write_submission(tmp_path / "bad.csv", bad, COMP, PROJECT)
    assert message in str(err.value)
    assert not (tmp_path / "bad.csv").exists()


def test_label_competitions_need_zero_one(valid):
    comp = dataclasses.replace(COMP, submission_values="label")
    with pytest.raises(SubmissionError, match="0/1 labels"):
        validate_submission(valid, comp, PROJECT)
    validate_submission(valid.assign(label=(valid["label"] > 0.5).astype(int)), comp, PROJECT)
