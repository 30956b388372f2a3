"""Pseudo-labelling without leaks: fold k's extra rows come from the teacher's fold-k model only, are recorded,
reach training, and a teacher trained on other folds is refused."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from competition.config import load_config
from competition.folds import load_tables
from competition.run_folder import inputs_fingerprint
from competition.project import Project
from tests.conftest import call_kit, make_competition, smoke_experiment


def fake_teacher(home, fingerprint: dict, test: pd.DataFrame) -> None:
    """Teacher outputs whose fold models disagree: fold 0 is sure rows 0-3 are AI, fold 1 sure rows 4-7 are human;
    the fold-averaged test.csv (a leak for the student's OOF) is sure of every row."""
    out = home / "experiments" / "teacher"
    (out / "fold0").mkdir(parents=True)
    (out / "fold1").mkdir()
    (out / "inputs.json").write_text(json.dumps(fingerprint))
    ids = test["id"].to_numpy()
    for fold, rows, prob in ((0, slice(0, 4), 0.995), (1, slice(4, 8), 0.004)):
        p = np.full(len(ids), 0.6)
        p[rows] = prob
        pd.DataFrame({"id": ids, "prob": p, "error": ""}).to_csv(out / f"fold{fold}" / "test.csv", index=False)
    pd.DataFrame({"id": ids, "prob": 0.999}).to_csv(out / "test.csv", index=False)


@pytest.mark.slow
def test_fold_k_pseudo_labels_come_only_from_the_teachers_fold_k_model(tmp_path):
    home = make_competition(tmp_path)
    smoke_experiment(home, "student")
    project = Project(home)
    cfg = load_config("student", [], project)
    train, test = load_tables(cfg, project)
    fake_teacher(home, inputs_fingerprint(train, test), test)
    result = call_kit(home, "competition.experiment", "student", "pseudo=teacher")  # shorthand of pseudo.teacher
    out = home / "experiments" / "student"
    ids = test["id"].to_numpy()
    fold0 = pd.read_csv(out / "fold0" / "pseudo.csv", dtype={"id": str})
    fold1 = pd.read_csv(out / "fold1" / "pseudo.csv", dtype={"id": str})
    assert fold0["id"].tolist() == list(ids[0:4]) and fold0["label"].tolist() == [1] * 4
    assert fold1["id"].tolist() == list(ids[4:8]) and fold1["label"].tolist() == [0] * 4
    assert json.loads((out / "fold0" / "result.json").read_text())["pseudo_rows"] == 4
    assert "fold 0: 4 of 12 test images pseudo-labelled by teacher/fold0 (4 AI, 0 human)" in result.stderr
    assert json.loads((out / "metrics.json").read_text())["n_oof"] == len(train)  # OOF still the training rows


@pytest.mark.slow  # the missing fold-1 teacher is found after fold 0 trained
def test_a_teacher_trained_on_other_folds_or_missing_a_fold_is_refused(tmp_path):
    home = make_competition(tmp_path)
    smoke_experiment(home, "student")
    project = Project(home)
    train, test = load_tables(load_config("student", [], project), project)
    other = inputs_fingerprint(train.assign(fold=1 - train["fold"]), test)
    fake_teacher(home, other, test)
    result = call_kit(home, "competition.experiment", "student", "pseudo.teacher=teacher", check=False)
    assert result.returncode != 0 and "other training rows, labels or folds" in result.stderr
    (home / "experiments" / "teacher" / "inputs.json").write_text(json.dumps(inputs_fingerprint(train, test)))
    (home / "experiments" / "teacher" / "fold1" / "test.csv").unlink()
    result = call_kit(home, "competition.experiment", "student", "pseudo.teacher=teacher", "--restart", check=False)
    assert result.returncode != 0 and "no fold-1 test predictions" in result.stderr and "./run.sh teacher" in result.stderr


# the teacher's recorded test files digest -> accepted? (None / absent: records older than the digest are trusted)
TEACHER_TEST_FILES = {"same": (lambda now: now, True), "absent": (None, True), "null": (lambda now: None, True),
                      "other content": (lambda now: now[::-1], False), "other shape": (lambda now: "x" * 8, False)}


@pytest.mark.parametrize("name", TEACHER_TEST_FILES)
def test_a_teacher_that_predicted_other_test_files_is_refused(tmp_path, name):
    from competition.pseudo import teacher_predictions
    from competition.tables import DataError

    home = make_competition(tmp_path)
    smoke_experiment(home, "student")
    project = Project(home)
    cfg = load_config("student", ["pseudo.teacher=teacher"], project)
    train, test = load_tables(cfg, project)
    now = inputs_fingerprint(train, test)
    change, accepted = TEACHER_TEST_FILES[name]
    saved = {k: v for k, v in now.items() if k != "test_files"}
    fake_teacher(home, saved if change is None else {**saved, "test_files": change(now["test_files"])}, test)
    if accepted:
        assert len(teacher_predictions(cfg, project, 0, test, now)) == len(test)
    else:
        with pytest.raises(DataError, match=r"teacher/inputs.json: the teacher teacher predicted other test files .* "
                                            r"run `./run.sh teacher` to predict them again"):
            teacher_predictions(cfg, project, 0, test, now)


def test_select_pseudo_keeps_only_confident_decoded_rows():
    from competition.config import Config, replace
    from competition.pseudo import select_pseudo

    test = pd.DataFrame({"id": list("abcde"), "path": list("ABCDE")})
    teacher = pd.DataFrame({"id": list("abcde"), "prob": [0.99, 0.01, 0.5, 0.97, 0.999],
                            "error": ["", "", "", "", "undecodable"]})
    chosen = select_pseudo(replace(Config(), pseudo={"threshold": 0.98}), teacher, test)
    assert chosen["id"].tolist() == ["a", "b"] and chosen["label"].tolist() == [1, 0]
