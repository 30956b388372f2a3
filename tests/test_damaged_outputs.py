"""Damaged outputs are refused with one line naming the file and the command that truly remakes it: a member's
oof.csv or test.csv cut, emptied or with rows doubled (`./run.sh assemble <exp>` when its fold files are whole, else
a rerun), and a submission CSV saved with the pandas index or with its column names' case changed.

The finished experiment is tests/fixtures/old_run (no training): `--assemble` rebuilds its outputs from its folds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

from tests.conftest import call_kit, copy_project, make_competition
from tests.test_old_runs import old_run

NAME = "old001"  # the fixture's experiment: 24 OOF rows (2 folds of 12), 8 test rows


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The old run's competition (12 + 12 train images, 8 test), its folds file and the run, built once."""
    home = make_competition(tmp_path_factory.mktemp("damaged") / "home", n_per_class=12, n_test=8)
    call_kit(home, "competition.folds")  # the folds the run was made on: its inputs.json fingerprint matches
    old_run(home, "as saved", NAME)
    shutil.copy(home / "experiments" / NAME / "config.yaml", home / "experiments" / f"{NAME}.yaml")  # for assemble
    return home


@pytest.fixture
def project(base: Path, tmp_path: Path) -> Path:
    """This test's own copy of the base project."""
    return copy_project(base, tmp_path / "home")


def lines_of(file: Path) -> list[str]:
    """The file's lines, with their line ends."""
    return file.read_text().splitlines(keepends=True)


def keep(rows: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    """A damage: rewrite the file's data lines (the header kept) as rows(lines)."""
    def damage(file: Path) -> None:
        lines = lines_of(file)
        file.write_text("".join(lines[:1] + rows(lines[1:])))
    return damage


def renamed(file: Path) -> None:
    """Two ids of the file changed (same row count)."""
    frame = pd.read_csv(file, dtype=str, keep_default_na=False)
    frame.loc[:1, "id"] = ["test_data_v2/gone_a.jpg", "test_data_v2/gone_b.jpg"]
    frame.to_csv(file, index=False)


OOF_DAMAGE = {  # damage -> (what the message says)
    "header only": (keep(lambda rows: []), "no rows (header only)"),
    "truncated": (keep(lambda rows: rows[:17]), "17 rows, but the experiment recorded 24"),
    "one row short": (keep(lambda rows: rows[:-1]), "23 rows, but the experiment recorded 24"),
    "rows duplicated": (keep(lambda rows: rows[:-3] + rows[:3]), "3 id(s) listed twice"),
    "rows appended twice": (keep(lambda rows: rows + rows[:2]), "2 id(s) listed twice"),
    "extra rows": (keep(lambda rows: rows + [r.replace(".jpg", "_x.jpg", 1) for r in rows[:4]]),
                   "28 rows, but the experiment recorded 24"),
    "empty file": (lambda file: file.write_text(""), "unreadable (EmptyDataError)"),
}
TEST_DAMAGE = {
    "rows cut": (keep(lambda rows: rows[:5]), "3 sample-submission ids have no prediction"),
    "header only": (keep(lambda rows: []), "8 sample-submission ids have no prediction"),
    "ids changed": (renamed, "2 sample-submission ids have no prediction"),
    "one row left": (keep(lambda rows: rows[:1]), "7 sample-submission ids have no prediction"),
}


def error_line(result) -> str:
    """The one ERROR line of a refused command (exit 2, no traceback)."""
    errors = [ln for ln in result.stderr.splitlines() if " ERROR " in ln]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return errors[0]


def blend(home: Path, check: bool = False):
    """`python -m competition.ensemble old001` (mean, to submissions/b.csv)."""
    return call_kit(home, "competition.ensemble", NAME, "--method", "mean", "--name", "b", "--force", check=check)


@pytest.mark.parametrize("file, damage, says", [("oof.csv", *OOF_DAMAGE[k]) for k in OOF_DAMAGE] +
                         [("test.csv", *TEST_DAMAGE[k]) for k in TEST_DAMAGE],
                         ids=[f"oof-{k}" for k in OOF_DAMAGE] + [f"test-{k}" for k in TEST_DAMAGE])
def test_damaged_member_file_is_refused_and_assemble_repairs_it(project, file, damage, says):
    target = project / "experiments" / NAME / file
    good = target.read_text()
    damage(target)
    line = error_line(blend(project))
    assert f"{target}:" in line and says in line and f"`./run.sh assemble {NAME}` rebuilds {file}" in line, line
    assert not (project / "submissions" / "b.csv").exists()
    call_kit(project, "competition.experiment", NAME, "--assemble")  # the advised command, no training
    assert len(lines_of(target)) == len(good.splitlines())
    blend(project, check=True)
    assert (project / "submissions" / "b.csv").is_file()


def test_notebook_loader_refuses_a_truncated_oof_too(project):
    from competition.ensemble import load_oof
    from competition.errors import DataError
    from competition.project import Project

    target = project / "experiments" / NAME / "oof.csv"
    keep(lambda rows: rows[:10])(target)
    with pytest.raises(DataError, match=r"10 rows, but the experiment recorded 24 \(metrics.json n_oof\)"):
        load_oof(Project(project), NAME)


OLDER_KIT = {  # metrics.json without n_oof: the count is inputs.json's n_train
    "truncated": (keep(lambda rows: rows[:17]), "17 rows, but the experiment recorded 24 (inputs.json n_train)"),
    "extra rows": (keep(lambda rows: rows + [r.replace(".jpg", "_x.jpg", 1) for r in rows[:1]]),
                   "25 rows, but the experiment recorded 24 (inputs.json n_train)"),
    "header only": (keep(lambda rows: []), "no rows (header only)"),
}


@pytest.mark.parametrize("kind", list(OLDER_KIT))
def test_without_n_oof_the_count_is_inputs_n_train(project, kind):
    damage, says = OLDER_KIT[kind]
    out = project / "experiments" / NAME
    metrics = json.loads((out / "metrics.json").read_text())
    del metrics["n_oof"]  # an older kit's metrics.json
    (out / "metrics.json").write_text(json.dumps(metrics))
    damage(out / "oof.csv")
    line = error_line(blend(project))
    assert f"{out / 'oof.csv'}:" in line and says in line and f"`./run.sh assemble {NAME}`" in line, line


def no_prob(file: Path) -> None:
    """Every probability of the file emptied."""
    pd.read_csv(file, dtype=str, keep_default_na=False).assign(prob="").to_csv(file, index=False)


FOLD_DAMAGE = {  # the fold files are damaged too: assemble would rebuild the damage, so the advice is a rerun
    "fold oof cut": ("fold0/oof.csv", keep(lambda rows: rows[:5])),
    "fold oof rows doubled": ("fold1/oof.csv", keep(lambda rows: rows + rows[:2])),
    "fold oof gone": ("fold0/oof.csv", lambda file: file.unlink()),
    "fold oof empty": ("fold1/oof.csv", lambda file: file.write_text("")),
    "fold test cut": ("fold0/test.csv", keep(lambda rows: rows[:5])),
    "fold test NaN": ("fold1/test.csv", no_prob),
}


@pytest.mark.parametrize("kind", list(FOLD_DAMAGE))
def test_damaged_fold_files_too_mean_rerun(project, kind):
    fold_file, damage = FOLD_DAMAGE[kind]
    out = project / "experiments" / NAME
    file = fold_file.split("/")[1]
    damage(out / fold_file)
    keep(lambda rows: rows[:5])(out / file)
    line = error_line(blend(project))
    assert f"{out / file}:" in line and f"rerun `./run.sh {NAME} --restart`" in line, line
    assert "assemble" not in line


def test_intact_member_still_blends(project):
    blend(project, check=True)
    assert len(pd.read_csv(project / "submissions" / "b.csv")) == 8


# ---- submission files saved with the pandas index or with renamed columns -----------------------------------------
def twice(frame: pd.DataFrame, path: Path) -> None:
    """Saved with the index, read back without index_col, saved with the index again."""
    frame.to_csv(path)
    pd.read_csv(path).to_csv(path)


INDEX = "the file was saved with the pandas index: write it with index=False (or drop that column)"
CASE = "only by case/whitespace"
HEADERS = {  # how the file is written -> phrases of the refusal
    "to_csv default index": (lambda f, p: f.to_csv(p), [INDEX, "'Unnamed: 0'"]),
    "saved with index twice": (lambda f, p: twice(f, p), [INDEX, "'Unnamed: 0.1'"]),
    "named index column": (lambda f, p: f.rename_axis("Unnamed: 0").to_csv(p), [INDEX]),
    "blank first header": (lambda f, p: p.write_text(" " + f.to_csv()), [INDEX, "[' ', 'id', 'label']"]),
    "upper case": (lambda f, p: f.rename(columns=str.upper).to_csv(p, index=False), [CASE, "['ID', 'LABEL']"]),
    "title case": (lambda f, p: f.rename(columns=str.title).to_csv(p, index=False), [CASE]),
    "spaces": (lambda f, p: f.rename(columns=lambda c: f" {c} ").to_csv(p, index=False), [CASE]),
    "index and case": (lambda f, p: f.rename(columns=str.title).to_csv(p), [INDEX, CASE]),
}


@pytest.mark.parametrize("kind", list(HEADERS))
def test_submit_explains_an_index_column_or_renamed_header(home, kind):
    write, phrases = HEADERS[kind]
    sample = pd.read_csv(home / "data" / "sample_submission.csv")
    path = home / "mine.csv"
    write(sample.assign(label=np.linspace(0.05, 0.95, len(sample))), path)
    line = error_line(call_kit(home, "competition.submit", str(path), "--dry-run", check=False))
    assert str(path) in line and "the competition wants exactly ['id', 'label']" in line
    assert all(p in line for p in phrases), line


@pytest.mark.parametrize("columns", [["id", "prob"], ["id", "label", "extra"], ["file", "label"]])
def test_other_headers_get_no_index_or_case_hint(columns):
    from competition.submission import column_hint

    assert column_hint(columns, ["id", "label"]) == ""


@pytest.mark.parametrize("damage", list(TEST_DAMAGE))
@pytest.mark.parametrize("damaged", ["first", "second"])
def test_two_members_with_different_test_ids_name_both_files_and_the_fix(project, damage, damaged):
    old_run(project, "as saved", "old002")
    saved = project / "experiments" / "old002" / "config.yaml"
    saved.write_text(saved.read_text().replace(f"name: {NAME}", "name: old002", 1))
    shutil.copy(saved, project / "experiments" / "old002.yaml")
    names = [NAME, "old002"]
    victim = names[0] if damaged == "first" else names[1]
    TEST_DAMAGE[damage][0](project / "experiments" / victim / "test.csv")
    result = call_kit(project, "competition.ensemble", *names, "--method", "mean", "--name", "b2", check=False)
    line = error_line(result)
    files = [str(project / "experiments" / n / "test.csv") for n in names]
    assert f"{files[0]} and {files[1]}" in line and "list different test ids" in line
    assert f"{victim}: `./run.sh assemble {victim}` rebuilds test.csv from its fold files" in line
    call_kit(project, "competition.experiment", victim, "--assemble")  # the advised command repairs it
    assert call_kit(project, "competition.ensemble", *names, "--method", "mean", "--name", "b2").returncode == 0
