"""Submission files: built in the sample submission's order and validated before they are written.

A submission is refused, with a message saying what is wrong, when its header, row count, id set or
id order differ from sample_submission.csv, when a value is missing/NaN, or when values are not what
the competition wants (probabilities in [0, 1], or 0/1 labels).

It is also refused when it carries no information (`check_information`, part of the same validation that
ensemble and `submit` / `submit --dry-run` use): most test rows got no prediction (decode errors, ids that
matched no image file: the writer passes them as `Evidence`), every value is (nearly) the same, most values
are one in-between value (the prior / 0.5 given to rows without a prediction), or a label file is all one
class while OOF, at the same threshold, has both. Some rows without a prediction only warn, with the list.

Columns of the sample submission beyond id and target are kept, in the sample's order, with the sample's
values (`build_submission`); a file without them is refused, never silently valid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from competition.atomic import write_csv
from competition.config import CompetitionConfig
from competition.errors import KitError
from competition.metrics import THRESHOLD_METRICS
from competition.project import Project
from competition.tables import load_sample_submission, load_test_table

log = logging.getLogger(__name__)

MOST = 0.5  # more than this share of rows without a prediction, or sharing one fill value: no information
FLAT = 1e-6  # values whose whole range is at most this are "all equal"
LISTED = 10  # ids named in a message


class SubmissionError(KitError, ValueError):
    """A submission that Kaggle would reject or score wrongly."""


@dataclass
class Evidence:
    """What the writer of a submission knows about how its values were made (empty for a hand-written file)."""

    no_prediction: list[str] = field(default_factory=list)  # test ids that got no prediction (filled with the prior)
    where: str = ""  # the file(s) that list those rows
    oof_positive_rate: float | None = None  # share of label 1 on OOF at the submission's threshold
    reasons: str = ""  # the commonest reasons rows got no prediction, with counts ("file not found: 9")


LIKELY_CAUSE = ("likely test ids that match no image file (e.g. a test.csv of bare ids: check competition.test_csv, "
                "competition.test_path_column and that each id names a file under data_dir, like test/<id>.jpg) or "
                "unreadable images")
FIX = ("fix the test table or images, rerun the experiments (`./run.sh expNNN --restart`) and blend again; check "
       "experiments/<exp>/bad_test_images.csv")


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
    """Put predictions keyed by test id into the sample submission's order and header; columns beyond id and
    target are kept in place with the sample's values."""
    expected = expected_frame(comp, project, ids)
    by_id = pd.Series(np.asarray(values), index=ids.astype(str).values)
    if by_id.index.duplicated().any():
        raise SubmissionError(f"duplicate test ids in the predictions: {list(by_id.index[by_id.index.duplicated()][:3])}")
    order = expected[comp.id_column].astype(str)
    missing = order[~order.isin(by_id.index)]
    if len(missing):
        raise SubmissionError(f"{len(missing)} sample-submission ids have no prediction, e.g. {missing.head(3).tolist()}")
    frame = expected.copy()
    frame[comp.id_column] = order.values
    frame[comp.target_column] = by_id.reindex(order.values).values
    extra = [c for c in frame.columns if c not in (comp.id_column, comp.target_column)]
    if extra:
        log.info("sample submission's extra column(s) %s kept with the sample's values", extra)
    return frame


def check_columns(frame: pd.DataFrame, expected: pd.DataFrame, comp: CompetitionConfig) -> None:
    """The header must be the sample submission's, in its order (extra sample columns included)."""
    want, got = list(expected.columns), list(frame.columns)
    if got == want:
        return
    extra = [c for c in want if c not in (comp.id_column, comp.target_column)]
    absent = [c for c in want if c not in got]
    if extra and absent and set(absent) <= set(extra) and set(got) <= set(want):
        raise SubmissionError(f"column(s) {absent} of the sample submission are missing (columns are {got}; the "
                              f"sample's are {want}) - keep every sample column, in its order, with the sample's "
                              f"values (competition.ensemble does)")
    if sorted(got) == sorted(want):
        raise SubmissionError(f"columns are {got}; the sample submission's order is {want} - write them in that order")
    hint = column_hint(got, want)
    raise SubmissionError(f"columns are {got}; the competition wants exactly {want}{' - ' + hint if hint else ''}")


def column_hint(got: list[str], want: list[str]) -> str:
    """How a header came to differ, for two common accidents: a saved pandas index ('Unnamed: 0', or an unnamed
    first column), and names that differ only by case/whitespace ('' when neither)."""
    index = [c for i, c in enumerate(got) if c not in want and (str(c).startswith("Unnamed: ") or
                                                                (i == 0 and not str(c).strip()))]
    rest = [c for c in got if c not in index]
    hints = [f"column(s) {index}: the file was saved with the pandas index: write it with index=False (or drop that "
             f"column)"] if index else []
    if rest != want and [str(c).strip().lower() for c in rest] == [c.strip().lower() for c in want]:
        hints.append(f"{rest} differ from {want} only by case/whitespace: write the names exactly as the sample's")
    return "; ".join(hints)


def check_ids(ids: pd.Series, want: pd.Series) -> None:
    """Same ids as the sample submission, each once, in its order."""
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


def check_values(values: pd.Series, comp: CompetitionConfig) -> None:
    """Numbers everywhere, in [0, 1] or 0/1 as the competition wants."""
    if values.isna().any():
        rows = np.flatnonzero(values.isna().to_numpy())[:3] + 1
        every = " (every value)" if values.isna().all() else ""
        raise SubmissionError(f"{int(values.isna().sum())} missing/NaN/non-numeric values (rows {rows.tolist()}){every} "
                              f"- every row needs a number; rewrite the file with competition.ensemble")
    if comp.submission_values == "label":
        if not values.isin([0, 1]).all():
            raise SubmissionError("values must be 0/1 labels (competition.submission_values=label); got "
                                  f"{sorted(values[~values.isin([0, 1])].unique()[:3].tolist())}")
    elif ((values < 0) | (values > 1)).any():
        raise SubmissionError(f"probabilities must lie in [0, 1]; range is [{values.min():.4g}, {values.max():.4g}]")


def validate_submission(frame: pd.DataFrame, comp: CompetitionConfig, project: Project,
                        test_ids: pd.Series | None = None, evidence: Evidence | None = None) -> None:
    """Raise SubmissionError describing the first problem; return quietly for a valid submission."""
    expected = expected_frame(comp, project, test_ids)
    check_columns(frame, expected, comp)
    if len(frame) != len(expected):
        raise SubmissionError(f"{len(frame)} rows; the sample submission has {len(expected)}")
    ids = frame[comp.id_column].astype(str)
    check_ids(ids, expected[comp.id_column].astype(str))
    values = pd.to_numeric(frame[comp.target_column], errors="coerce")
    check_values(values, comp)
    check_information(values.to_numpy(dtype=float), ids, comp, evidence or Evidence())


def _listed(ids: list[str]) -> str:
    """A few ids, with '...' when there are more."""
    return ", ".join(map(str, ids[:LISTED])) + (", ..." if len(ids) > LISTED else "")


def check_no_prediction(ids: pd.Series, evidence: Evidence) -> None:
    """Refuse when most rows got no prediction; warn, listing them, when some did."""
    empty = set(map(str, evidence.no_prediction))
    lacking = [i for i in ids if i in empty]
    if not lacking:
        return
    n = len(ids)
    where = f" ({'; '.join(filter(None, [evidence.reasons, evidence.where and 'listed in ' + evidence.where]))})" \
        if evidence.reasons or evidence.where else ""
    if len(lacking) > MOST * n:
        raise SubmissionError(f"{len(lacking)} of {n} test rows ({len(lacking) / n:.0%}) got no prediction{where}, "
                              f"only the prior fill: the file carries no information - {LIKELY_CAUSE}; {FIX}")
    log.warning("%d of %d test rows got no prediction and carry the training prior%s: %s", len(lacking), n, where,
                _listed(lacking))


def check_information(values: np.ndarray, ids: pd.Series, comp: CompetitionConfig, evidence: Evidence) -> None:
    """Refuse a submission that carries no information (see the module docstring); warn about a few empty rows."""
    check_no_prediction(ids, evidence)
    n = len(values)
    if n and values.max() - values.min() <= FLAT:
        check_one_class(values, comp, evidence)
        return
    if comp.submission_values == "label" or not n:
        return
    warn_hard_labels(values, comp)
    inside = values[(values > 0) & (values < 1)]
    fills, counts = np.unique(inside, return_counts=True)
    if len(counts) and counts.max() > MOST * n:
        fill = float(fills[counts.argmax()])
        raise SubmissionError(f"{int(counts.max())} of {n} rows ({counts.max() / n:.0%}) have the same value {fill:.6g}, "
                              f"the fill given to test images without a prediction (the training prior or 0.5) - "
                              f"{LIKELY_CAUSE}; {FIX}")


def warn_hard_labels(values: np.ndarray, comp: CompetitionConfig) -> None:
    """Warn when a probability file holds only 0s and 1s and the metric scores probabilities (AUC, log loss)."""
    if comp.metric not in THRESHOLD_METRICS and np.isin(values, (0.0, 1.0)).all():  # auc, logloss
        cost = "AUC scores the ranking, which hard labels throw away" if comp.metric == "auc" else \
            "log loss punishes every wrong 0/1 without limit"
        log.warning("every value is 0 or 1, though competition.submission_values is prob and the metric is %s: %s - "
                    "submit the probabilities (competition.ensemble writes them), or set "
                    "competition.submission_values: label if the competition wants labels", comp.metric, cost)


def check_one_class(values: np.ndarray, comp: CompetitionConfig, evidence: Evidence) -> None:
    """All values (nearly) equal: refused, except a label file whose OOF labels are one class too (warned)."""
    n, value = len(values), float(values[0])
    spread = f" (range {values.max() - values.min():.2g})" if values.max() > values.min() else ""
    if comp.submission_values == "label":
        rate = evidence.oof_positive_rate
        if rate is not None and rate in (0.0, 1.0) and float(rate) == value:
            log.warning("all %d rows are label %d, as every OOF row is at this threshold: the model separates "
                        "nothing at it", n, int(value))
            return
        oof = f"while OOF at the same threshold has {rate:.1%} label 1" if rate is not None else \
            "while the training labels have both classes"
        raise SubmissionError(f"all {n} rows are label {int(value)} {oof}: a one-class file carries no information - "
                              f"every test row got the same fallback ({LIKELY_CAUSE}), or the "
                              f"threshold lies outside the test scores; {FIX}")
    raise SubmissionError(f"all {n} values are {value:.6g}{spread}: a constant submission carries no information "
                          f"(AUC 0.5) - {LIKELY_CAUSE}, or a member that predicts a constant; {FIX}")


def write_submission(path: Path, frame: pd.DataFrame, comp: CompetitionConfig, project: Project,
                     evidence: Evidence | None = None) -> Path:
    """Validate, then write atomically; labels are written as integers. Errors name the file."""
    try:
        validate_submission(frame, comp, project, evidence=evidence)
    except SubmissionError as err:
        raise SubmissionError(f"{path}: not written: {err}") from None
    if comp.submission_values == "label":
        frame = frame.assign(**{comp.target_column: frame[comp.target_column].astype(int)})
    write_csv(path, frame)
    log.info("wrote %s (%d rows)", path, len(frame))
    return path
