"""Results made from other data than the competition's current data are never blended or ranked as current; blend
names are understood however they are spelled; a member that is a blend, unknown or missing files is named exactly.

Variants are generated: changes of the training data (labels flipped, a row removed, a row added, the folds file
changed) x commands (ensemble, leaderboard, submit of a blend made before the change); --name spellings (extensions
in any case, submissions/ and ./ prefixes, the folder's full path, foreign folders) x ensemble; missing member files
(oof.csv, metrics.json, test.csv, the folder; with and without finished folds) x leaderboard and ensemble.
Experiments are faked by writing the files a finished experiment writes, with a real inputs.json fingerprint and
folds file, so nothing trains.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from competition.config import load_config, save_config
from competition.project import Project
from competition.run_folder import inputs_fingerprint
from competition.tables import load_train_table
from tests.conftest import call_kit
from tests.test_leaderboard_scope import board_sections
from tests.test_submission_information import base, fake_experiment, home  # noqa: F401 - fixtures


def finished(home, name, seed=0):
    """A fake finished experiment whose config.yaml, folds file and inputs.json are those of the current data."""
    project = Project(home)
    cfg = load_config("", [], project, check_model=False)
    out = fake_experiment(home, name, seed=seed)
    save_config(cfg, out / "config.yaml")
    train = load_train_table(cfg.competition, project)
    folds = project.folds_file(cfg)
    if not folds.is_file():
        folds.parent.mkdir(parents=True, exist_ok=True)
        train.assign(fold=np.arange(len(train)) % 2)[["id", "label", "fold"]].to_csv(folds, index=False)
    merged = train.merge(pd.read_csv(folds, dtype={"id": str})[["id", "fold"]], on="id", how="left")
    (out / "inputs.json").write_text(json.dumps(inputs_fingerprint(merged, pd.DataFrame({"id": []}))))
    return out


def flip_labels(home):
    table = pd.read_csv(home / "data" / "train.csv", index_col=0)
    table.loc[table.index[:6], "label"] = 1 - table.loc[table.index[:6], "label"]
    table.to_csv(home / "data" / "train.csv")


def remove_row(home):
    table = pd.read_csv(home / "data" / "train.csv", index_col=0)
    table.iloc[1:].reset_index(drop=True).to_csv(home / "data" / "train.csv")


def add_row(home):
    table = pd.read_csv(home / "data" / "train.csv", index_col=0)
    src = home / "data" / table["file_name"].iloc[0]
    shutil.copyfile(src, src.with_name("extra_" + src.name))
    row = table.iloc[[0]].assign(file_name=str(src.with_name("extra_" + src.name).relative_to(home / "data")))
    pd.concat([table, row], ignore_index=True).to_csv(home / "data" / "train.csv")


def change_folds(home):
    path = next((home / "folds").glob("*.csv"))
    folds = pd.read_csv(path, dtype={"id": str})
    folds.loc[:3, "fold"] = 1 - folds.loc[:3, "fold"]
    folds.to_csv(path, index=False)


# change: (edit of the data, what the message says changed, whether the folds file must be rebuilt first)
CHANGES = {"labels flipped": (flip_labels, "labels of 6 row(s)", True),
           "row removed": (remove_row, "rows 1 removed", True),
           "row added": (add_row, "rows 1 added", True),
           "folds changed": (change_folds, "folds of 4 row(s)", False)}


@pytest.fixture
def blended(home):
    """Two current experiments and a blend of them made before any change."""
    finished(home, "eA")
    finished(home, "eB", seed=1)
    call_kit(home, "competition.ensemble", "eA", "eB", "--method", "mean", "--name", "before")
    return home


def test_current_data_blends_ranks_and_submits_without_a_word(blended):
    result = call_kit(blended, "competition.ensemble", "eA", "eB", "--method", "mean", "--name", "again")
    assert "stale" not in result.stderr and "not checked" not in result.stderr
    rows = {name: rank for rows in board_sections(blended).values() for rank, name, _ in rows}
    assert rows["eA"] != "-" and rows["eB"] != "-" and rows["again.csv"] != "-"
    sub = call_kit(blended, "competition.submit", "submissions/before.csv", "--dry-run")
    assert "stale" not in sub.stderr and "WARNING" not in sub.stderr


@pytest.mark.parametrize("change", list(CHANGES))
def test_ensemble_refuses_members_made_from_other_data(blended, change):
    edit, what, rebuild = CHANGES[change]
    edit(blended)
    result = call_kit(blended, "competition.ensemble", "eA", "eB", "--method", "mean", "--name", "lab", check=False)
    assert result.returncode == 2, result.stderr
    error = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(error) == 1 and "member eA" in error[0] and what in error[0] and "--restart" in error[0]
    assert ("delete folds/" in error[0]) == rebuild
    assert not (blended / "submissions" / "lab.csv").exists()


@pytest.mark.parametrize("change", list(CHANGES))
def test_leaderboard_marks_experiments_and_blends_of_other_data_stale(blended, change):
    edit, what, _ = CHANGES[change]
    edit(blended)
    call_kit(blended, "competition.leaderboard")
    rows = {name: (rank, last) for rows in board_sections(blended).values() for rank, name, last in rows}
    for name in ("eA", "eB", "before.csv"):
        assert rows[name][0] == "-" and "stale: training data changed since" in rows[name][1] and what in rows[name][1]


@pytest.mark.parametrize("change", list(CHANGES))
def test_submit_warns_about_a_blend_of_members_made_from_other_data(blended, change):
    edit, what, _ = CHANGES[change]
    edit(blended)
    result = call_kit(blended, "competition.submit", "submissions/before.csv", "--dry-run")
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line and "stale" in line]
    assert {w.split("member ")[1].split()[0] for w in warnings} == {"eA", "eB"}
    assert all(what in w and "not a refusal" in w for w in warnings)


def test_unreadable_data_says_data_not_checked(blended):
    shutil.move(blended / "data" / "train.csv", blended / "data" / "train.moved")
    result = call_kit(blended, "competition.leaderboard")
    assert "data not checked" in result.stdout
    rows = {name: rank for rows in board_sections(blended).values() for rank, name, _ in rows}
    assert rows["eA"] != "-"


# ---- --name spellings ----------------------------------------------------------------------------------------------
UNDERSTOOD = ["mix.csv", "mix.CSV", "mix.json", "mix.oof.csv", "mix.csv.csv", "submissions/mix", "./mix",
              "submissions/mix.csv", "ABS/mix.Json"]
REFUSED = ["/tmp/elsewhere/mix", "other/mix", "mix.oof", "../submissions2/mix"]


@pytest.mark.parametrize("spelling", UNDERSTOOD)
def test_blend_names_with_the_kits_extension_or_folder_are_understood(blended, spelling):
    spelling = spelling.replace("ABS", str(blended / "submissions"))
    result = call_kit(blended, "competition.ensemble", "eA", "eB", "--method", "mean", "--name", spelling)
    files = sorted(p.name for p in (blended / "submissions").iterdir() if p.name.startswith("mix"))
    assert files == ["mix.csv", "mix.json", "mix.oof.csv"]
    assert f"--name {spelling}: writing submissions/mix.csv" in result.stderr


@pytest.mark.parametrize("spelling", REFUSED)
def test_blend_names_in_other_folders_are_refused(blended, spelling):
    result = call_kit(blended, "competition.ensemble", "eA", "eB", "--method", "mean", "--name", spelling, check=False)
    assert result.returncode == 2 and f"--name {spelling}" in result.stderr and "--name mix" in result.stderr
    assert not any(p.name.startswith("mix") for p in (blended / "submissions").iterdir())


# ---- members that are blends, unknown, or missing files ------------------------------------------------------------
@pytest.mark.parametrize("member, says, not_says", [
    ("before", "before is a blend in submissions/", "did you mean"),
    ("EA", "did you mean eA?", "is a blend"),
    ("eb", "did you mean eB?", "is a blend"),
    ("zzzz", "no experiment zzzz", "did you mean")])
def test_members_that_are_blends_or_unknown_are_named(blended, member, says, not_says):
    result = call_kit(blended, "competition.ensemble", member, "eA", "--method", "mean", check=False)
    assert result.returncode == 2 and says in result.stderr and not_says not in result.stderr
    if member == "before":
        assert "blend its members instead: `./run.sh ensemble eA eB" in result.stderr


def finish_folds(out):
    for k in (0, 1):
        (out / f"fold{k}").mkdir(exist_ok=True)
        for f in ("result.json", "oof.csv", "test.csv"):
            (out / f"fold{k}" / f).write_text("{}")


# what is removed: (the text naming it, the fix) with and without finished folds
MISSING = {"oof.csv": "experiments/eB/oof.csv missing", "metrics.json": "experiments/eB/metrics.json missing",
           "test.csv": "experiments/eB/test.csv missing", "": "member eB is gone: experiments/eB/ was deleted"}


@pytest.mark.parametrize("folds_done", [True, False])
@pytest.mark.parametrize("missing", list(MISSING))
@pytest.mark.parametrize("command", ["ensemble", "leaderboard"])
def test_missing_member_files_are_named_with_their_fix(blended, missing, folds_done, command):
    out = blended / "experiments" / "eB"
    if folds_done:
        finish_folds(out)
    shutil.rmtree(out) if not missing else (out / missing).unlink()
    if command == "ensemble":
        result = call_kit(blended, "competition.ensemble", "eA", "eB", "--method", "mean", check=False)
        assert result.returncode == 2
        text = result.stderr
    else:
        call_kit(blended, "competition.leaderboard")
        text = {name: last for rows in board_sections(blended).values() for _, name, last in rows}["before.csv"]
    if command == "ensemble" and not missing:  # no folder, no yaml: an unknown name, said so
        assert "no experiment eB (no experiments/eB/ or eB.yaml)" in text
        return
    assert MISSING[missing] in text
    fix = "`./run.sh assemble eB`" if folds_done and missing else "`./run.sh eB`"
    assert fix in text
