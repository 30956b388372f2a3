"""Runs whose score would mean nothing are refused with the cause and the fix: a fold that validates on one class
(grouping that follows the label), a model whose weights diverged to NaN (a too-high train.lr), and a class whose
training images were mostly undecodable (its rows, predicted at the prior, made AUC 1.0)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch

from competition.assemble import check_classes_seen
from competition.errors import ConfigError, DataError
from competition.inference import predict
from tests.conftest import call_kit, smoke_experiment

# a group column whose groups follow the label, spelled several ways -> every fold validates on one class
LABEL_GROUPS = {"prefixed": lambda label, i: f"g{label}", "numbers": lambda label, i: label * 7 + 3,
                "booleans": lambda label, i: label == 1, "words": lambda label, i: ("real", "ai")[label]}


@pytest.mark.parametrize("name", LABEL_GROUPS)
@pytest.mark.parametrize("command", ["competition.folds", "competition.experiment"])
def test_groups_that_follow_the_label_are_refused_before_training(home, name, command):
    csv = home / "data" / "train.csv"
    train = pd.read_csv(csv, index_col=0)
    train["src"] = [LABEL_GROUPS[name](int(label), i) for i, label in enumerate(train["label"])]
    train.to_csv(csv)
    smoke_experiment(home, "e1")
    args = ["folds.group_column=src"] if command == "competition.folds" else ["e1", "folds.group_column=src"]
    result = call_kit(home, command, *args, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "would validate on one class only" in result.stderr
    assert "the groups follow the label: check the column folds.group_column: src" in result.stderr
    assert not list((home / "folds").glob("*.csv")) and not (home / "experiments" / "e1" / "fold0").exists()


def test_groups_with_both_classes_still_make_folds(home):
    csv = home / "data" / "train.csv"
    train = pd.read_csv(csv, index_col=0)
    train["src"] = [f"p{i // 4}" for i in range(len(train))]  # shuffled rows: groups of 4 hold both classes
    train.to_csv(csv)
    assert call_kit(home, "competition.folds", "folds.group_column=src").returncode == 0


class Constant(torch.nn.Module):
    """A model answering `value` (a logit) for every image: NaN or inf stands for diverged weights."""

    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, x):
        return torch.full((x.shape[0],), self.value)


class Images(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return torch.zeros(3, 8, 8, dtype=torch.uint8), 0.0, i, ""


class Linear(torch.nn.Module):
    """One linear layer over the pixels, its weights filled with `value` (NaN/inf: what divergence leaves)."""

    def __init__(self, value: float):
        super().__init__()
        self.layer = torch.nn.Linear(3 * 8 * 8, 1)
        torch.nn.init.constant_(self.layer.weight, value)

    def forward(self, x):
        return self.layer(x.float().flatten(1))[:, 0]


DIVERGED = {"nan logits": lambda: Constant(float("nan")), "nan weights": lambda: Linear(float("nan")),
            "inf weights": lambda: Linear(float("inf")), "-inf weights": lambda: Linear(float("-inf"))}


@pytest.mark.parametrize("name", DIVERGED)
def test_a_model_answering_nan_is_refused_with_the_learning_rate_fix(name):
    loader = torch.utils.data.DataLoader(Images(), batch_size=3)
    with pytest.raises(ConfigError, match=r"fold 3 validate: the model answered NaN/inf for 3 of 3 image\(s\).* "
                                          r"lower train.lr .* rerun with --restart"):
        predict(DIVERGED[name](), loader, torch.device("cpu"), desc="fold 3 validate")
    for model in (Constant(2.0), Linear(0.01)):  # finite weights: every row answered
        assert np.isfinite(predict(model, loader, torch.device("cpu")).prob).all()


# (human rows, unreadable human rows, AI rows, unreadable AI rows) -> refused naming that class?
SHARES = [((20, 20, 20, 0), "20 of 20 human (0)"), ((20, 0, 20, 11), "11 of 20 AI (1)"), ((10, 6, 30, 0), "6 of 10 human"),
          ((20, 10, 20, 10), None), ((20, 3, 20, 0), None), ((20, 0, 20, 0), None)]


@pytest.mark.parametrize("counts,refused", SHARES)
def test_a_class_mostly_undecodable_is_refused_a_few_bad_images_are_skipped(tmp_path, counts, refused):
    n0, bad0, n1, bad1 = counts
    oof = pd.DataFrame({"id": [f"i{k}" for k in range(n0 + n1)], "target": [0] * n0 + [1] * n1,
                        "error": ["cannot decode"] * bad0 + [""] * (n0 - bad0) + ["cannot decode"] * bad1
                        + [""] * (n1 - bad1)})
    listing = tmp_path / "bad_train_images.csv"
    if refused is None:
        check_classes_seen(oof, listing)
        return
    with pytest.raises(DataError, match=rf"bad_train_images.csv: {re.escape(refused)}.* could not be decoded, .* restore those "
                                        r"files \(or drop their rows from train.csv\), then rerun with --restart"):
        check_classes_seen(oof, listing)


@pytest.mark.slow  # trains a tiny experiment whose human images are all empty files
@pytest.mark.parametrize("damage", ["empty", "text"])
def test_a_run_whose_human_images_are_all_unreadable_gets_no_score(home, damage):
    train = pd.read_csv(home / "data" / "train.csv", index_col=0)
    for rel in train.loc[train["label"] == 0, "file_name"]:
        (home / "data" / rel).write_bytes(b"" if damage == "empty" else b"not an image\n")
    smoke_experiment(home, "e1")
    result = call_kit(home, "competition.experiment", "e1", check=False)
    assert result.returncode == 2 and "20 of 20 human (0) training images could not be decoded" in result.stderr
    out = home / "experiments" / "e1"
    assert (out / "bad_train_images.csv").is_file() and not (out / "metrics.json").exists()
    assert "| e1 |" not in ((home / "experiments" / "LEADERBOARD.md").read_text()
                            if (home / "experiments" / "LEADERBOARD.md").is_file() else "")
