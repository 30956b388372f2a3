"""Byte-identical training images: with contradicting labels the fold builder refuses them naming two rows; with
one label it warns that the copies leak across folds unless grouped."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from tests.conftest import call_kit, smoke_experiment

# how a copy is named and where it sits -> its train.csv path
COPIES = {"suffix": lambda rel: rel.replace(".jpg", "_copy.jpg"), "other folder": lambda rel: "dupes/" + rel.split("/")[-1],
          "other extension": lambda rel: rel.replace(".jpg", ".jpeg"), "unicode name": lambda rel: "dupes/é " + rel.split("/")[-1]}


def add_copies(home, n: int, name: str, flip: bool) -> None:
    """n copies of class-1 images appended to train.csv, labelled 0 when flip (a contradiction), else 1."""
    csv = home / "data" / "train.csv"
    train = pd.read_csv(csv, index_col=0)
    rows = []
    for rel in train.loc[train["label"] == 1, "file_name"].head(n):
        new = COPIES[name](rel)
        (home / "data" / new).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(home / "data" / rel, home / "data" / new)
        rows.append({"file_name": new, "label": 0 if flip else 1})
    pd.concat([train, pd.DataFrame(rows)], ignore_index=True).to_csv(csv)


@pytest.mark.parametrize("name", list(COPIES))
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("command", ["competition.folds", "competition.experiment"])
def test_identical_images_with_contradicting_labels_are_refused(home, name, n, command):
    add_copies(home, n, name, flip=True)
    smoke_experiment(home, "e1")
    result = call_kit(home, command, *(["e1"] if command == "competition.experiment" else []), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train.csv: row " in result.stderr and "are the same image (identical bytes) with contradicting labels" \
        in result.stderr
    assert ("such files in all" in result.stderr) is (n > 1)
    assert not list((home / "folds").glob("*.csv"))


@pytest.mark.parametrize("name", ["suffix", "other folder"])
def test_identical_images_with_one_label_are_warned_and_the_folds_built(home, name):
    add_copies(home, 2, name, flip=False)
    result = call_kit(home, "competition.folds")
    assert "2 training images are byte-identical copies of another with the same label" in result.stderr
    assert "set folds.groups: phash" in result.stderr and list((home / "folds").glob("*.csv"))


def test_distinct_images_are_not_warned(home):
    result = call_kit(home, "competition.folds")
    assert "byte-identical" not in result.stderr and "identical bytes" not in result.stderr


@pytest.mark.parametrize("copy_into", ["fake", "real"])
def test_a_copy_in_the_other_class_folder_is_refused_with_the_folder_fix(tmp_path, copy_into):
    from competition.config import CompetitionConfig
    from competition.errors import DataError
    from competition.project import Project
    from competition.tables import check_identical_files, load_train_table
    from tests.conftest import FACES

    faces = pd.read_csv(FACES / "train.csv")
    for cls, label in (("real", 0), ("fake", 1)):
        (tmp_path / cls).mkdir()
        for rel in faces.loc[faces["label"] == label, "file_name"].head(3):
            shutil.copyfile(FACES / rel, tmp_path / cls / rel.split("/")[-1])
    source = next((tmp_path / ("real" if copy_into == "fake" else "fake")).iterdir())
    shutil.copyfile(source, tmp_path / copy_into / f"copy_{source.name}")
    comp = CompetitionConfig(data_dir=str(tmp_path), train_csv="", class_folders={"real": 0, "fake": 1})
    train = load_train_table(comp, Project(tmp_path))
    with pytest.raises(DataError, match=r"are the same image \(identical bytes\) with contradicting labels - delete "
                                        r"the copy in the wrong class folder"):
        check_identical_files(train, tmp_path)
