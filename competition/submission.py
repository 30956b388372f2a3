"""Submission files: built in the sample submission's order and validated before they are written.

A submission is refused, with a message saying what is wrong, when its header, row count, id set or
id order differ from sample_submission.csv, when a value is missing/NaN, or when values are not what
the competition wants (probabilities in [0, 1], or 0/1 labels).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from competition.atomic import write_csv
from competition.config import CompetitionConfig
from competition.errors import KitError
from competition.project import Project
from competition.tables import load_sample_submission, load_test_table

log = logging.getLogger(__name__)


class SubmissionError(KitError, ValueError):
    """A submission that Kaggle would reject or score wrongly."""


def expected_frame(comp: CompetitionConfig, project: Project, test_ids: pd.Series | None = None) -> pd.DataFrame:
    """The sample submission, or, when the competition has none (image-folder layout), the test table's ids
    (paths relative to the data folder, in listing order) with the configured id/target columns."""
    sample = load_sample_submission(comp, project)
    if sample is not None:
        return sample
    if test_ids is None:
        test_ids = load_test_table(comp, project)["id"]
    return pd.DataFrame({comp.id_column: test_ids.astype(str).values, comp.target_column: 0})


def build_submission(comp: CompetitionConfig, project: Project, ids: pd.Series, values: np.ndarray) -> pd.DataFrame:
    """Put predictions keyed by test id into the sample submission's order and header."""
    expected = expected_frame(comp, project, ids)
    by_id = pd.Series(np.asarray(values), index=ids.astype(str).values)
    if by_id.index.duplicated().any():
        raise SubmissionError(f"duplicate test ids in the predictions: {list(by_id.index[by_id.index.duplicated()][:3])}")
    order = expected[comp.id_column].astype(str)
    missing = order[~order.isin(by_id.index)]
    if len(missing):
        raise SubmissionError(f"{len(missing)} sample-submission ids have no prediction, e.g. {missing.head(3).tolist()}")
    frame = expected[[comp.id_column]].copy()
    frame[comp.target_column] = by_id.reindex(order.values).values
    return frame


def validate_submission(frame: pd.DataFrame, comp: CompetitionConfig, project: Project,
                        test_ids: pd.Series | None = None) -> None:
    """Raise SubmissionError describing the first problem; return quietly for a valid submission."""
    expected = expected_frame(comp, project, test_ids)
    want_cols = [comp.id_column, comp.target_column]
    if list(frame.columns) != want_cols:
        raise SubmissionError(f"columns are {list(frame.columns)}; the competition wants exactly {want_cols}")
    if len(frame) != len(expected):
        raise SubmissionError(f"{len(frame)} rows; the sample submission has {len(expected)}")
    ids, want = frame[comp.id_column].astype(str), expected[comp.id_column].astype(str)
    if ids.duplicated().any():
        raise SubmissionError(f"duplicate ids: {ids[ids.duplicated()].head(3).tolist()}")
    extra, absent = set(ids) - set(want), set(want) - set(ids)
    if extra or absent:
        raise SubmissionError(f"ids differ from the sample submission: {len(extra)} unknown (e.g. {sorted(extra)[:3]}), "
                              f"{len(absent)} missing (e.g. {sorted(absent)[:3]})")
    if not (ids.values == want.values).all():
        first = int(np.flatnonzero(ids.values != want.values)[0])
        raise SubmissionError(f"ids are not in the sample submission's order (first difference at row {first + 1}: "
                              f"{ids.iloc[first]!r} vs {want.iloc[first]!r})")
    values = pd.to_numeric(frame[comp.target_column], errors="coerce")
    if values.isna().any():
        rows = np.flatnonzero(values.isna().to_numpy())[:3] + 1
        raise SubmissionError(f"{int(values.isna().sum())} missing/NaN/non-numeric values (rows {rows.tolist()})")
    if comp.submission_values == "label":
        if not values.isin([0, 1]).all():
            raise SubmissionError("values must be 0/1 labels (competition.submission_values=label); got "
                                  f"{sorted(values[~values.isin([0, 1])].unique()[:3].tolist())}")
    elif ((values < 0) | (values > 1)).any():
        raise SubmissionError(f"probabilities must lie in [0, 1]; range is [{values.min():.4g}, {values.max():.4g}]")


def write_submission(path: Path, frame: pd.DataFrame, comp: CompetitionConfig, project: Project) -> Path:
    """Validate, then write atomically; labels are written as integers."""
    validate_submission(frame, comp, project)
    if comp.submission_values == "label":
        frame = frame.assign(**{comp.target_column: frame[comp.target_column].astype(int)})
    write_csv(path, frame)
    log.info("wrote %s (%d rows)", path, len(frame))
    return path
