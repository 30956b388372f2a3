"""Tables and folds: the real CIFAKE tables, deterministic stratified/grouped folds, clear refusals."""

from __future__ import annotations

import dataclasses
import shutil

import pandas as pd
import pytest

from competition.config import CompetitionConfig, Config, FoldsConfig
from competition.folds import make_folds
from competition.tables import DataError, load_sample_submission, load_test_table, load_train_table
from competition.project import Project
from tests.conftest import CIFAKE, FACES, PROJECT, call_kit, run_kit


def comp_for(home, **changes) -> CompetitionConfig:
    return dataclasses.replace(CompetitionConfig(name="tiny", data_dir=str(home / "data")), **changes)


def test_real_cifake_tables():
    comp = CompetitionConfig(data_dir=str(CIFAKE))
    train, test = load_train_table(comp, PROJECT), load_test_table(comp, PROJECT)
    assert len(train) == 20000 and set(train["label"]) == {0, 1}
    assert train["label"].mean() == 0.5
    assert len(test) == 5500 and not test["missing"].any()
    assert list(test["id"]) == list(load_sample_submission(comp, PROJECT)["id"])


@pytest.mark.slow  # over 5 s of CPU (fresh interpreters): kept out of the fast tier
def test_folds_cli_is_deterministic_and_stratified(home):
    run_kit(home, "competition.folds")
    path = home / "folds" / "tiny_k2_s0.csv"
    first = path.read_bytes()
    call_kit(home, "competition.folds", "--force")
    assert path.read_bytes() == first  # same seed -> byte-identical folds file
    folds = pd.read_csv(path)
    assert list(folds.columns) == ["id", "label", "fold"]
    assert folds.groupby("fold")["label"].mean().tolist() == [0.5, 0.5]
    call_kit(home, "competition.folds", "folds.seed=1", "--force")
    assert (home / "folds" / "tiny_k2_s1.csv").read_bytes() != first


def test_group_column_keeps_groups_together(home):
    csv = home / "data" / "train.csv"
    train = pd.read_csv(csv, index_col=0)
    train["pair"] = [f"p{i // 4}" for i in range(len(train))]  # groups of 4 with mixed labels
    train.to_csv(csv)
    cfg = Config(competition=comp_for(home), folds=FoldsConfig(n_splits=2, seed=0, group_column="pair"))
    folds = make_folds(cfg, load_train_table(cfg.competition, Project(home), "pair"), Project(home))
    assert (folds.groupby("group")["fold"].nunique() == 1).all()


def test_image_folder_layout(tmp_path):
    for cls in ("real", "fake"):
        (tmp_path / cls).mkdir()
    faces = pd.read_csv(FACES / "train.csv")
    for _, row in faces.head(6).iterrows():
        shutil.copyfile(FACES / row["file_name"], tmp_path / ("fake" if row["label"] else "real") / row["file_name"].split("/")[-1])
    comp = CompetitionConfig(data_dir=str(tmp_path), train_csv="", class_folders={"real": 0, "fake": 1})
    train = load_train_table(comp, PROJECT)
    assert len(train) == 6
    assert all(train["label"] == train["id"].str.startswith("fake/").astype(int))


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.rename(columns={"label": "lable"}), "column 'label' missing (columns: file_name, lable); did you mean 'lable'?"),
    (lambda t: t.assign(label=[2] + list(t["label"][1:])), "must be 0 (human) or 1 (AI) in every row; bad values in row 1 ('2')"),
    (lambda t: t.assign(label=[None] + list(t["label"][1:])), "bad values in row 1 ('')"),
    (lambda t: pd.concat([t, t.head(1)]), "2 rows share an id"),
    (lambda t: t.assign(file_name=["../../etc/passwd"] + list(t["file_name"][1:])), "escape the data folder"),
    (lambda t: t.assign(file_name=["/etc/passwd"] + list(t["file_name"][1:])), "escape the data folder"),
    (lambda t: t.assign(file_name=["train_data/nope.jpg"] + list(t["file_name"][1:])), "1 image file(s) not found: row 1 ('train_data/nope.jpg')"),
])
def test_bad_train_tables_are_refused(home, edit, message):
    csv = home / "data" / "train.csv"
    edit(pd.read_csv(csv, index_col=0)).reset_index(drop=True).to_csv(csv, index=False)
    with pytest.raises(DataError) as err:
        load_train_table(comp_for(home), PROJECT)
    assert message in str(err.value) and str(csv) in str(err.value)


def test_test_table_must_match_sample_submission(home):
    sample = home / "data" / "sample_submission.csv"
    pd.read_csv(sample).iloc[1:].to_csv(sample, index=False)
    with pytest.raises(DataError, match="test ids do not match sample_submission.csv: 1 not in the sample"):
        load_test_table(comp_for(home), PROJECT)


def test_experiment_refuses_bad_table_before_training(home):
    csv = home / "data" / "train.csv"
    pd.read_csv(csv, index_col=0).rename(columns={"file_name": "path"}).to_csv(csv)
    (home / "experiments").mkdir()
    (home / "experiments" / "e1.yaml").write_text("train: {epochs: 1}\n")
    proc = call_kit(home, "competition.experiment", "e1", check=False)
    assert proc.returncode == 2
    assert "column 'file_name' missing" in proc.stderr and "competition.path_column" in proc.stderr
    assert not (home / "experiments" / "e1" / "fold0").exists()
