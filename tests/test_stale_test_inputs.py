"""Stale test inputs (issue 25 sweep, findings 3, 4a, 4b, 5): test files changed in place under the same names, tiny
test sets in the shift check, and a hand-edited cached test profile.

Classes and their one mechanism each:
- content fingerprint (test_encoding.files_digest: path, size, mtime_ns of every test file): inputs.json records it
  (run_folder.check_inputs_unchanged -> forget_test_predictions), the shift report records it (shift.refresh_shift,
  triggered by folds.prepare_folds / build_folds), the cached profile's digest includes it;
- too few images for the shift check (shift.too_few): a skip with one WARNING in folds and run, an ERROR in the CLI;
- the cached profile validated when read (test_encoding.read_profile / profile_problem): one WARNING, re-measured.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from competition import shift as shift_module
from competition.config import load_config
from competition.errors import DataError, KitError
from competition.folds import load_tables
from competition.project import Project
from competition.run_folder import check_inputs_unchanged
from competition.tables import load_test_table, load_train_table
from competition.test_encoding import profile_file, profile_problem, test_profile
from conftest import call_kit, make_competition

# ---------------------------------------------------------------- helpers


def change_file(path: Path, how: str) -> None:
    """Change a file in place (same name): other bytes of the same size, other size, or only a newer mtime."""
    data = path.read_bytes()
    st = path.stat()
    if how == "same_size":
        path.write_bytes(data[:-1] + bytes([(data[-1] + 1) % 256]))
    elif how == "other_size":
        path.write_bytes(data + b"\0")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


CHANGES = ["same_size", "other_size", "touched"]


def fake_run(tmp_path: Path, n_test: int = 4, sub: str = "") -> tuple[Path, pd.DataFrame, pd.DataFrame]:
    """An experiment folder with two finished folds' test.csv, over generated train/test tables and files."""
    data = tmp_path / "data"
    data.mkdir()
    paths = []
    for i in range(n_test):
        (data / f"t{i}.png").write_bytes(bytes([i]) * (50 + i))
        paths.append(str(data / f"t{i}.png"))
    train = pd.DataFrame({"id": ["a", "b"], "label": [0, 1], "fold": [0, 1], "path": ["x", "y"]})
    test = pd.DataFrame({"id": [f"t{i}" for i in range(n_test)], "path": paths})
    out = tmp_path / "experiments" / "e1" / sub if sub else tmp_path / "experiments" / "e1"
    for k in (0, 1):
        (out / f"fold{k}").mkdir(parents=True)
        (out / f"fold{k}" / "test.csv").write_text("id,prob\n")
    (out / "test.csv").write_text("id,prob\n")
    check_inputs_unchanged(out, train, test)  # records the inputs
    return out, train, test


# ---------------------------------------------------------------- class 3: test files changed in place


@pytest.mark.parametrize("sub", ["", "ood"])
@pytest.mark.parametrize("how", CHANGES)
@pytest.mark.parametrize("which", [0, -1])
def test_changed_test_file_forgets_the_test_predictions(tmp_path, caplog, how, which, sub):
    out, train, test = fake_run(tmp_path, sub=sub)
    change_file(Path(test["path"].iloc[which]), how)
    with caplog.at_level(logging.INFO, logger="competition.run_folder"):
        check_inputs_unchanged(out, train, test)
    assert not list(out.glob("fold*/test.csv")) and not (out / "test.csv").exists()
    lines = [r for r in caplog.records if "test files changed" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO and "fold0, fold1" in lines[0].getMessage()
    saved = json.loads((out / "inputs.json").read_text())
    caplog.clear()
    check_inputs_unchanged(out, train, test)  # recorded: a second run does not forget again
    assert json.loads((out / "inputs.json").read_text()) == saved
    assert not [r for r in caplog.records if "test files changed" in r.getMessage()]


@pytest.mark.parametrize("record", ["current", "older_without_content"])
def test_unchanged_or_older_record_keeps_the_test_predictions(tmp_path, caplog, record):
    out, train, test = fake_run(tmp_path)
    if record == "older_without_content":  # inputs.json of a run made before the content was recorded
        saved = json.loads((out / "inputs.json").read_text())
        saved.pop("test_files")
        (out / "inputs.json").write_text(json.dumps(saved))
    with caplog.at_level(logging.INFO):
        check_inputs_unchanged(out, train, test)
    assert len(list(out.glob("fold*/test.csv"))) == 2 and (out / "test.csv").is_file()
    assert "test_files" in json.loads((out / "inputs.json").read_text())
    assert not [r for r in caplog.records if "test files changed" in r.getMessage()]


def test_other_test_ids_are_still_refused(tmp_path):
    out, train, test = fake_run(tmp_path)
    with pytest.raises(DataError, match="test rows changed"):
        check_inputs_unchanged(out, train, test.iloc[:-1])


@pytest.fixture
def comp(tmp_path: Path) -> Path:
    """The tiny competition (12 + 12 train, n_test 6)."""
    return make_competition(tmp_path / "home", n_per_class=12, n_test=6)


def tables(home: Path, *overrides: str):
    """(cfg, project, train, test) of a make_competition project."""
    project = Project(home)
    cfg = load_config("", list(overrides), project, check_model=False)
    return cfg, project, load_train_table(cfg.competition, project), load_test_table(cfg.competition, project)


@pytest.mark.parametrize("how", CHANGES)
def test_changed_test_file_remeasures_the_profile_and_labels_its_digest(comp, how):
    cfg, project, train, test = tables(comp)
    first = test_profile(cfg, project, train, test)
    assert first["summary"]["digest"] == first["digest"]  # what metrics.json oof_test_like.profile carries
    change_file(Path(test["path"].iloc[2]), how)
    second = test_profile(cfg, project, train, test)
    assert second["digest"] != first["digest"] and second["summary"]["digest"] == second["digest"]
    assert json.loads(profile_file(cfg, project).read_text())["digest"] == second["digest"]


def test_metrics_test_like_score_carries_the_profile_digest(comp):
    """metrics.json oof_test_like.profile.digest: which profile the score was computed with (a reader compares it
    with the current profile's digest; it changes with the test files' content)."""
    from competition.assemble import test_like_scores

    cfg, project, train, test = tables(comp)
    profile = test_profile(cfg, project, train, test)
    oof = pd.DataFrame({"target": [0, 1, 0, 1], "prob_test_like": [0.2, 0.7, 0.4, 0.6]})
    scores = test_like_scores(cfg, oof, {"threshold": 0.5, "oof_score": 1.0}, profile)
    assert scores["profile"]["digest"] == profile["digest"]
    change_file(Path(test["path"].iloc[0]), "touched")
    assert test_profile(cfg, project, train, test)["summary"]["digest"] != scores["profile"]["digest"]


# ---------------------------------------------------------------- shift report: refreshed, tiny test sets


@pytest.fixture
def fast_pixels(monkeypatch):
    """The shift check's pixel view on seeded random embeddings (the real logistic regression and CV, no backbone);
    counts the checks run."""
    calls = []
    real = shift_module.check_shift

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(shift_module, "embed_config",
                        lambda cfg, paths, project: np.random.default_rng(0).normal(size=(len(paths), 8)))
    monkeypatch.setattr(shift_module, "check_shift", counted)
    return calls


def run_folds(home: Path, command: str) -> tuple[int, str]:
    """Build/read the folds with the shift check on, as `./run.sh folds` or as a run does (load_tables)."""
    if command == "folds":
        res = call_kit(home, "competition.folds", "folds.shift_check=true", check=False)
        return res.returncode, res.stderr
    cfg = load_config("", ["folds.shift_check=true"], Project(home), check_model=False)
    load_tables(cfg, Project(home))
    return 0, ""


@pytest.mark.parametrize("command", ["folds", "run"])
@pytest.mark.parametrize("how", CHANGES)
def test_shift_report_is_measured_again_when_the_test_files_change(comp, fast_pixels, caplog, command, how):
    report = comp / "folds" / "tiny_k2_s0_shift.json"
    run_folds(comp, command)
    assert len(fast_pixels) == 1 and report.is_file()
    run_folds(comp, command)  # unchanged: not measured again
    assert len(fast_pixels) == 1
    _, test = tables(comp)[2:]
    change_file(Path(test["path"].iloc[0]), how)
    with caplog.at_level(logging.INFO):
        code, err = run_folds(comp, command)
    assert code == 0 and len(fast_pixels) == 2
    assert "measured another test set" in err + caplog.text
    assert json.loads(report.read_text())["test_digest"] == shift_module.test_digest(tables(comp)[0], test)


def test_shift_report_without_a_recorded_test_set_is_measured_again(comp, fast_pixels):
    run_folds(comp, "folds")
    report = comp / "folds" / "tiny_k2_s0_shift.json"
    data = json.loads(report.read_text())
    data.pop("test_digest")
    report.write_text(json.dumps(data))
    run_folds(comp, "folds")
    assert len(fast_pixels) == 2 and "test_digest" in json.loads(report.read_text())


@pytest.mark.parametrize("command", ["folds", "run"])
@pytest.mark.parametrize("n_test", [0, 1, 2, 3])
def test_tiny_test_sets_skip_the_shift_check_with_one_line(tmp_path, fast_pixels, caplog, command, n_test):
    home = make_competition(tmp_path / "home", n_per_class=12, n_test=max(n_test, 1))
    if n_test == 0:  # an empty test table (header only)
        (home / "data" / "test.csv").write_text(",id\n")
    if n_test == 0:  # an empty test table is the table loader's one-line refusal, in both commands
        with caplog.at_level(logging.INFO):
            try:
                code, err = run_folds(home, command)
            except KitError as exc:
                code, err = 2, f"ERROR {exc}"
        assert code == 2 and "Traceback" not in err and "no rows" in err + caplog.text
        return
    with caplog.at_level(logging.INFO):
        code, err = run_folds(home, command)
    assert code == 0 and "Traceback" not in err
    skipped = [r for r in caplog.records if "shift check SKIPPED" in r.getMessage()]
    md = home / "folds" / "tiny_k2_s0_shift.md"
    if n_test == 1:
        assert len(skipped) == 1 and skipped[0].levelno == logging.WARNING and not md.exists()
        assert "too few images to compare" in skipped[0].getMessage()
    else:
        assert not skipped and md.exists() == (n_test >= 2)


@pytest.mark.parametrize("n_test", [1])
def test_shift_cli_refuses_a_one_image_test_set_in_one_line(tmp_path, fast_pixels, n_test):
    home = make_competition(tmp_path / "home", n_per_class=12, n_test=n_test)
    res = call_kit(home, "competition.shift", check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "too few images to compare" in errors[0]


def test_shift_report_of_a_bigger_test_set_goes_when_it_shrinks_to_one(comp, fast_pixels, caplog):
    run_folds(comp, "folds")
    md = comp / "folds" / "tiny_k2_s0_shift.md"
    assert md.is_file()
    test_csv = comp / "data" / "test.csv"
    frame = pd.read_csv(test_csv, index_col=0)
    frame.head(1).to_csv(test_csv)  # ids change too: the folds stay (train unchanged), the report measured 6
    sample = comp / "data" / "sample_submission.csv"
    pd.read_csv(sample).head(1).to_csv(sample, index=False)
    with caplog.at_level(logging.INFO):
        code, _ = run_folds(comp, "folds")
    assert code == 0 and not md.exists()
    assert len([r for r in caplog.records if "shift check SKIPPED" in r.getMessage()]) == 1


# ---------------------------------------------------------------- cached profile validated when read

VARIANTS = {  # (path in the profile, value; DROP = the key removed)
    "scale": ["half", 0, 0.0, -1, 40, None, True, float("nan"), "DROP"],
    "shifted": ["yes", 1, None, "DROP", "FLIP"],
    "rows": ["x", None, 3, "DROP"],
    "rows.0": ["row", None],
    "rows.0.quality": ["sixty", 0, 101, 60.5, -3, True],
    "rows.0.pixels": [0, -5, "big", 1.5, None, "DROP"],
    "rows.0.format": [3, "", None, "DROP"],
    "rows.0.subsampling": [7, -2, "a", None, "DROP"],
    "summary": ["x", None, "DROP"],
    "summary.n": [-1, "3", 2.5, None, "DROP", 999],
    "summary.median_pixels": [-1, "x", None, "DROP"],
    "summary.formats": ["JPEG", None, {"PNG": 1.5}, {"PNG": -0.1}, {"PNG": "all"}, "DROP"],
    "summary.subsampling": [[], {"2": 2}],
    "summary.jpeg_quality_median": [0, 200, "q"],
    "train": ["x", None, "DROP"],
    "train.n": [-1, "x", "DROP"],
    "train.median_pixels": [-1, "x", "DROP"],
    "train.formats": [{"PNG": 7}, "DROP"],
    "train.jpeg_quality_median": [0, 101, "q"],
}
CASES = [(path, value) for path, values in VARIANTS.items() for value in values]


def mutate(profile: dict, path: str, value) -> dict:
    """A copy of a profile with one field set (DROP: removed; FLIP: a bool negated)."""
    bad = copy.deepcopy(profile)
    *parents, last = path.split(".")
    node = bad
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    key = int(last) if isinstance(node, list) else last
    if value == "DROP":
        del node[key]
    else:
        node[key] = (not node[key]) if value == "FLIP" else value
    return bad


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> tuple[Path, dict]:
    """A tiny competition and its measured, valid test profile (PNG train and test images, one row per image)."""
    home = make_competition(tmp_path_factory.mktemp("prof") / "home", n_per_class=6, n_test=4)
    cfg, project, train, test = tables(home)
    profile = test_profile(cfg, project, train, test)
    assert profile_problem(profile) is None and profile["rows"]
    return home, profile


@pytest.mark.parametrize("path,value", CASES, ids=[f"{p}={v!r}" for p, v in CASES])
def test_bad_cached_profile_is_reported_and_measured_again(measured, caplog, path, value):
    home, good = measured
    cfg, project, train, test = tables(home)
    file = profile_file(cfg, project)
    bad = mutate(good, path, value)
    file.write_text(json.dumps(bad))  # digest kept: only the validation can tell
    assert profile_problem(bad) is not None
    with caplog.at_level(logging.WARNING):
        again = test_profile(cfg, project, train, test)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and str(file) in warnings[0].getMessage()
    assert profile_problem(again) is None and again == good
    assert json.loads(file.read_text()) == json.loads(json.dumps(good))  # re-measured and written back


def test_valid_cached_profile_is_used_without_measuring(measured, caplog, monkeypatch):
    home, good = measured
    cfg, project, train, test = tables(home)
    profile_file(cfg, project).write_text(json.dumps(good))
    monkeypatch.setattr("competition.test_encoding.measure_encoding", lambda *a, **k: pytest.fail("measured"))
    with caplog.at_level(logging.WARNING):
        assert test_profile(cfg, project, train, test) == good
    assert not caplog.records


@pytest.mark.parametrize("text", ["{", "[1, 2]", "", "null"])
def test_unparsable_cached_profile_is_measured_again(measured, caplog, text):
    home, good = measured
    cfg, project, train, test = tables(home)
    profile_file(cfg, project).write_text(text)
    with caplog.at_level(logging.WARNING):
        assert test_profile(cfg, project, train, test) == good
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) <= 1


# ---------------------------------------------------------------- end to end: a run re-predicts, never retrains


@pytest.mark.slow
def test_run_repredicts_a_test_file_changed_in_place(trained_project):
    """One test image replaced by another image's bytes (same name): the rerun predicts the test set again from
    the fold checkpoints (no epoch trained), says why in one line, and test.csv holds the new prediction."""
    home, out = trained_project, trained_project / "experiments" / "done"
    before = pd.read_csv(out / "test.csv", dtype={"id": str})
    _, _, train, test = tables(home)
    target, donor = Path(test["path"].iloc[0]), Path(train["path"].iloc[0])
    target.write_bytes(donor.read_bytes())
    res = call_kit(home, "competition.experiment", "done")
    log = res.stderr
    assert log.count("the test files changed since these outputs were made") == 1
    assert "already done, skipping" not in log and "epoch 0: loss" not in log  # re-predicted, not retrained
    after = pd.read_csv(out / "test.csv", dtype={"id": str})
    changed = after.set_index("id")["prob"] - before.set_index("id")["prob"]
    assert abs(changed.loc[test["id"].iloc[0]]) > 1e-6
    assert json.loads((out / "inputs.json").read_text())["test_files"] != ""
    again = call_kit(home, "competition.experiment", "done")
    assert "test files changed" not in again.stderr and again.stderr.count("already done, skipping") == 2
