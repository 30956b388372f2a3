"""Submissions that carry no information never reach "valid", on every path that writes or checks one.

Variants are generated: kinds of empty submissions (all equal, all 0.5, prior fills on 60/90/100 % of rows,
constant 0/1 labels, NaN) x paths (ensemble writing from fake finished experiments, `submit --dry-run` on a
hand-written file, `submit` with a fake `kaggle` on PATH); sample submissions with 1-3 extra columns in
different orders. Fake experiments are the files a finished experiment writes, so nothing trains.
"""

from __future__ import annotations

import dataclasses
import json
import stat

import numpy as np
import pandas as pd
import pytest
import yaml

from competition.config import CompetitionConfig
from competition.submission import Evidence, SubmissionError, check_information, validate_submission
from competition.project import Project
from tests.conftest import call_kit, make_competition
from tests.test_submit import FAKE

PRIOR = 0.5


def fake_experiment(home, name, *, test_prob=None, error_share=0.0, competition="tiny", fingerprint="f" * 16,
                    metric="auc", score=0.9, seed=0, labels=None):
    """The files a finished experiment leaves (oof.csv, test.csv with `error`, bad_test_images.csv, metrics.json,
    inputs.json, config.yaml): informative OOF; test predictions as given, prior-filled on error rows."""
    rng = np.random.default_rng(seed)
    train = pd.read_csv(home / "data" / "train.csv", index_col=0)
    test_ids = pd.read_csv(home / "data" / "test.csv", index_col=0)["id"].astype(str)
    target = train["label"].to_numpy() if labels is None else labels
    out = home / "experiments" / name
    out.mkdir(parents=True, exist_ok=True)
    prob = np.clip(0.5 + 0.3 * (target - 0.5) + rng.normal(0, 0.2, len(target)), 0.01, 0.99)
    pd.DataFrame({"id": train["file_name"], "fold": np.arange(len(target)) % 2, "target": target,
                  "prob": prob}).to_csv(out / "oof.csv", index=False)
    test = rng.uniform(0.05, 0.95, len(test_ids)) if test_prob is None else np.broadcast_to(test_prob, len(test_ids)).copy()
    n_bad = int(round(error_share * len(test_ids)))
    errors = np.array([""] * len(test_ids), dtype=object)
    errors[:n_bad] = "missing file"
    test[:n_bad] = PRIOR
    pd.DataFrame({"id": test_ids, "prob": test, "error": errors}).to_csv(out / "test.csv", index=False)
    pd.DataFrame({"id": test_ids[:n_bad], "error": errors[:n_bad]}).to_csv(out / "bad_test_images.csv", index=False)
    metrics = {"experiment": name, "metric": metric, "oof_score": score, "fold_mean": score, "fold_std": 0.01,
               "oof": {"auc": score}, "model": "fake", "img_size": 32, "epochs": 1, "tta": {"gain": 0.0, "views": "hflip"},
               "wall_s": 60.0, "complete": True, "threshold": 0.5, "bad_test_images": n_bad}
    (out / "metrics.json").write_text(json.dumps(metrics))
    (out / "inputs.json").write_text(json.dumps({"train": fingerprint, "test": "t" * 16, "n_train": len(target),
                                                 "n_test": len(test_ids)}))
    (out / "config.yaml").write_text(yaml.safe_dump({"competition": {"name": competition, "metric": metric,
                                                                     "data_dir": str(home / "data")}}))
    return out


def set_competition(home, **keys):
    """Change keys of the competition section of home/competition.yaml."""
    conf = yaml.safe_load((home / "competition.yaml").read_text())
    conf["competition"].update(keys)
    (home / "competition.yaml").write_text(yaml.safe_dump(conf))


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One tiny competition (12 test rows), copied per test (copying beats rebuilding from the shared images)."""
    return make_competition(tmp_path_factory.mktemp("info"))


@pytest.fixture
def home(base, tmp_path):
    import shutil

    dest = tmp_path / "home"
    shutil.copytree(base, dest)
    conf = yaml.safe_load((dest / "competition.yaml").read_text())
    conf["competition"]["data_dir"] = str(dest / "data")
    (dest / "competition.yaml").write_text(yaml.safe_dump(conf))
    return dest


# ---- kinds of submissions that carry no information ---------------------------------------------------------------
# name: (competition keys, what each member predicts on test, share of test rows with decode errors, message)
EMPTY = {
    "all equal": ({}, 0.37, 0.0, "all 12 values are 0.37"),
    "all 0.5": ({}, 0.5, 0.0, "all 12 values are 0.5"),
    "60% no prediction": ({}, None, 0.6, "got no prediction"),
    "90% no prediction": ({}, None, 0.9, "got no prediction"),
    "100% no prediction": ({}, None, 1.0, "got no prediction"),
    "all label 0": ({"metric": "f1", "submission_values": "label"}, 0.02, 0.0, "all 12 rows are label 0"),
    "all label 1": ({"metric": "f1", "submission_values": "label"}, 0.98, 0.0, "all 12 rows are label 1"),
}


@pytest.mark.parametrize("method", ["mean", "rank"])
@pytest.mark.parametrize("kind", list(EMPTY))
def test_ensemble_refuses_to_write_a_submission_without_information(home, kind, method):
    comp, test_prob, share, message = EMPTY[kind]
    set_competition(home, **comp)
    for i, name in enumerate(("eA", "eB")):
        fake_experiment(home, name, test_prob=test_prob, error_share=share, seed=i, metric=comp.get("metric", "auc"))
    proc = call_kit(home, "competition.ensemble", "eA", "eB", "--method", method, "--name", "b", check=False)
    if method == "rank" and kind.startswith("all"):
        message = "all 12 " + ("rows are label 1" if "label" in kind else "values are 1")  # tied ranks: all at the top
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "submissions/b.csv" in proc.stderr and "rerun" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (home / "submissions" / "b.csv").exists() and not (home / "submissions" / "b.json").exists()


def test_some_rows_without_prediction_warn_with_count_and_list_on_every_path(home):
    for i, name in enumerate(("eA", "eB")):
        fake_experiment(home, name, error_share=0.25, seed=i)
    proc = call_kit(home, "competition.ensemble", "eA", "eB", "--method", "mean", "--name", "b")
    ids = pd.read_csv(home / "data" / "test.csv", index_col=0)["id"].head(3).tolist()
    for stderr in (proc.stderr, call_kit(home, "competition.submit", "submissions/b.csv", "--dry-run").stderr):
        assert "3 of 12 test rows got no prediction" in stderr and all(i in stderr for i in ids)
        assert "eA/test.csv" in stderr or "submissions/b.json" in stderr
    assert json.loads((home / "submissions" / "b.json").read_text())["no_prediction"] == sorted(ids)


def test_member_with_nan_predictions_is_refused_naming_its_file(home):
    fake_experiment(home, "eA")
    fake_experiment(home, "eB", seed=1)
    test = pd.read_csv(home / "experiments" / "eB" / "test.csv")
    test.loc[:4, "prob"] = np.nan
    test.to_csv(home / "experiments" / "eB" / "test.csv", index=False)
    proc = call_kit(home, "competition.ensemble", "eA", "eB", "--name", "b", check=False)
    assert proc.returncode == 2 and "eB/test.csv: 5 of 12 rows have no probability" in proc.stderr
    assert not (home / "submissions" / "b.csv").exists()


# ---- hand-written files: submit --dry-run and submit with a fake kaggle on PATH ------------------------------------
def hand_written(home, kind: str, fill: float = PRIOR) -> tuple[str, str]:
    """A submission file of one empty kind, written as a person would (no sidecar); (path, expected message)."""
    sample = pd.read_csv(home / "data" / "sample_submission.csv")
    n = len(sample)
    values = np.linspace(0.03, 0.97, n)
    if kind.startswith("fill"):
        k = int(kind[4:])
        values[: int(np.ceil(k / 100 * n))] = fill
        message = f"have the same value {fill:.6g}" if k < 100 else f"all {n} values are {fill:.6g}"
    elif kind == "constant":
        values[:], message = 0.73, f"all {n} values are 0.73"
    elif kind == "nearly constant":
        values = 0.6 + np.linspace(0, 1e-7, n)
        message = f"all {n} values are 0.6"
    elif kind in ("label0", "label1"):
        set_competition(home, metric="f1", submission_values="label")
        values = np.full(n, int(kind[-1]))
        message = f"all {n} rows are label {kind[-1]} while the training labels have both classes"
    else:  # NaN
        values[[1, 4]] = np.nan
        message = "2 missing/NaN/non-numeric values (rows [2, 5])"
    path = home / "hand.csv"
    sample.assign(label=values).to_csv(path, index=False)
    return str(path), message


HAND = ["fill60", "fill90", "fill100", "constant", "nearly constant", "label0", "label1", "nan"]
HAND_CASES = [(k, PRIOR) for k in HAND] + [(k, fill) for k in HAND if k.startswith("fill") for fill in (0.475, 0.31)]


@pytest.mark.parametrize("kind, fill", HAND_CASES)
def test_submit_dry_run_refuses_hand_written_files_without_information(home, kind, fill):
    path, message = hand_written(home, kind, fill)
    proc = call_kit(home, "competition.submit", path, "--dry-run", check=False)
    assert proc.returncode == 2 and message in proc.stderr and "hand.csv" in proc.stderr, proc.stderr
    assert "valid (" not in proc.stderr


@pytest.fixture
def fake_kaggle(home, tmp_path, monkeypatch):
    """A fake `kaggle` on PATH that records its calls (tests/test_submit.py's), in this process."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "kaggle"
    exe.write_text(FAKE)
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "kaggle.log"
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.setenv("FAKE_KAGGLE_LOG", str(log))
    monkeypatch.setenv("FAKE_KAGGLE_MODE", "ok")
    set_competition(home, slug="tiny-comp")
    return log


@pytest.mark.parametrize("kind", ["fill60", "fill100", "constant", "label1"])
def test_upload_never_happens_for_files_without_information(home, fake_kaggle, kind):
    path, message = hand_written(home, kind)
    proc = call_kit(home, "competition.submit", path, "-m", "x", check=False)
    assert proc.returncode == 2 and message in proc.stderr and not fake_kaggle.exists()


def test_informative_files_still_pass_every_path(home, fake_kaggle):
    """No false refusal: many rows saturated at exactly 1.0 (a confident model) or a few prior fills are fine."""
    sample = pd.read_csv(home / "data" / "sample_submission.csv")
    values = np.r_[np.ones(8), [0.5, 0.2, 0.01, 0.3]]
    sample.assign(label=values).to_csv(home / "ok.csv", index=False)
    assert "valid (12 rows)" in call_kit(home, "competition.submit", "ok.csv", "--dry-run").stderr
    call_kit(home, "competition.submit", "ok.csv", "-m", "x")
    assert fake_kaggle.read_text().count("competitions\tsubmit") == 1


@pytest.mark.parametrize("rate, refused", [(None, True), (0.4, True), (1.0, False)])
def test_one_class_labels_are_refused_unless_oof_is_one_class_too(rate, refused):
    comp = CompetitionConfig(submission_values="label")
    ids = pd.Series([f"i{k}" for k in range(20)])
    call = lambda: check_information(np.ones(20), ids, comp, Evidence(oof_positive_rate=rate))  # noqa: E731
    if refused:
        with pytest.raises(SubmissionError, match="all 20 rows are label 1"):
            call()
    else:
        call()


# ---- sample submissions with extra columns ------------------------------------------------------------------------
LAYOUTS = [["id", "label", "Usage"], ["Usage", "id", "label"], ["id", "extra_a", "label", "extra_b"],
           ["label", "x1", "id", "x2", "x3"], ["x3", "x2", "x1", "label", "id"]]


def write_sample(home, layout: list[str]) -> pd.DataFrame:
    """Rewrite the sample submission with extra columns (text values) in the given column order."""
    sample = pd.read_csv(home / "data" / "sample_submission.csv")
    for k, col in enumerate(c for c in layout if c not in ("id", "label")):
        sample[col] = [f"{col}-{i % (k + 2)}" for i in range(len(sample))]
    sample = sample[layout]
    sample.to_csv(home / "data" / "sample_submission.csv", index=False)
    return sample


@pytest.mark.parametrize("layout", LAYOUTS, ids=["-".join(x) for x in LAYOUTS])
def test_extra_sample_columns_are_kept_in_order_with_the_samples_values(home, layout):
    sample = write_sample(home, layout)
    fake_experiment(home, "eA")
    call_kit(home, "competition.ensemble", "eA", "--method", "mean", "--name", "b")
    sub = pd.read_csv(home / "submissions" / "b.csv", dtype=str)
    assert list(sub.columns) == layout
    extra = [c for c in layout if c not in ("id", "label")]
    assert (sub[["id", *extra]].values == sample[["id", *extra]].astype(str).values).all()
    assert call_kit(home, "competition.submit", "submissions/b.csv", "--dry-run").returncode == 0


@pytest.mark.parametrize("layout", LAYOUTS, ids=["-".join(x) for x in LAYOUTS])
@pytest.mark.parametrize("edit", ["dropped", "reordered"])
def test_files_that_drop_or_reorder_sample_columns_are_refused(home, layout, edit):
    sample = write_sample(home, layout)
    sub = sample.assign(label=np.linspace(0, 1, len(sample)))
    sub = sub[["id", "label"]] if edit == "dropped" else sub[list(reversed(layout))]
    sub.to_csv(home / "hand.csv", index=False)
    proc = call_kit(home, "competition.submit", "hand.csv", "--dry-run", check=False)
    message = "of the sample submission are missing" if edit == "dropped" else "the sample submission's order is"
    assert proc.returncode == 2 and message in proc.stderr and str(layout) in proc.stderr, proc.stderr


def test_validation_is_shared_by_write_and_submit(home):
    """The same function decides for every path: a valid frame passes, a constant one fails, naming the cause."""
    comp = dataclasses.replace(CompetitionConfig(), data_dir=str(home / "data"), name="tiny")
    sample = pd.read_csv(home / "data" / "sample_submission.csv", dtype=str)
    validate_submission(sample.assign(label=np.linspace(0, 1, len(sample))), comp, Project(home))
    with pytest.raises(SubmissionError, match="test ids that match no image file"):
        validate_submission(sample.assign(label=0.5), comp, Project(home))
