"""Image files that sit in another folder than train.csv/test.csv says: each miss names the file found on disk
under the same name and the folder change to make; a truly missing test file is never advised to be dropped."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from tests.conftest import call_kit, smoke_experiment

FOLDERS = {"train.csv": "train_data", "test.csv": "test_data_v2"}


def rename_folder(home, table, new):
    """The table's image folder renamed to `new` (paths in the table unchanged)."""
    (home / "data" / FOLDERS[table]).rename(home / "data" / new)
    return repr(FOLDERS[table]), repr(new)


def strip_folder(home, table, _):
    """The folder dropped from every path in the table (file names kept, with extension)."""
    csv = home / "data" / table
    frame = pd.read_csv(csv, index_col=0)
    column = "file_name" if table == "train.csv" else "id"
    frame[column] = frame[column].str.split("/").str[-1]
    frame.to_csv(csv)
    if table == "test.csv":  # the sample submission lists the same ids
        pd.DataFrame({"id": frame["id"], "label": 0}).to_csv(home / "data" / "sample_submission.csv", index=False)
    return "no folder", repr(FOLDERS[table])


def nest_folder(home, table, new):
    """The image folder moved one level down, under `new`/."""
    (home / "data" / new).mkdir()
    shutil.move(str(home / "data" / FOLDERS[table]), str(home / "data" / new / FOLDERS[table]))
    return repr(FOLDERS[table]), repr(f"{new}/{FOLDERS[table]}")


MOVES = {"renamed": rename_folder, "stripped": strip_folder, "nested": nest_folder}


@pytest.mark.parametrize("table", list(FOLDERS))
@pytest.mark.parametrize("move", list(MOVES))
@pytest.mark.parametrize("command", ["competition.folds", "competition.experiment"])
def test_files_in_another_folder_are_named_with_the_folder_to_fix(home, table, move, command):
    smoke_experiment(home, "e1")
    was, now = MOVES[move](home, table, "images")
    result = call_kit(home, command, *(["e1"] if command == "competition.experiment" else []), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{table}: " in result.stderr and "image file(s) not found" in result.stderr
    assert "same name in another folder" in result.stderr
    assert f"fix the folder in the paths (here {was} -> {now}) or move the files back" in result.stderr
    assert "drop those rows" not in result.stderr


@pytest.mark.parametrize("missing", [1, 3])
def test_a_missing_test_file_is_to_be_restored_not_dropped(home, missing):
    smoke_experiment(home, "e1")
    test = pd.read_csv(home / "data" / "test.csv", index_col=0)
    for rel in test["id"].head(missing):
        (home / "data" / rel).unlink()
    result = call_kit(home, "competition.folds", check=False)  # a missing test image: warned, fallback prediction
    assert result.returncode == 0 and f"test.csv: {missing} image file(s) not found" in result.stderr
    assert ("restore the files (a test row cannot be dropped: the submission needs every id); they get the fallback "
            "prediction") in result.stderr and "drop those rows" not in result.stderr
    train = pd.read_csv(home / "data" / "train.csv", index_col=0)
    (home / "data" / train["file_name"].iloc[0]).unlink()
    result = call_kit(home, "competition.folds", "--force", check=False)
    assert result.returncode == 2 and "restore the files or drop those rows" in result.stderr
