"""Pseudo-labelling without leaks: confident test predictions of a teacher experiment as extra training rows.

For fold k the rows come only from the teacher's fold-k model (`experiments/<teacher>/fold{k}/test.csv`). That
model never saw fold k's validation rows, and neither do the pseudo-labels it made, so the student's fold-k OOF
score stays honest. The fold-averaged `test.csv` would leak: four of its five models trained on fold k.

The teacher must have been trained on the same training rows, labels and folds (its inputs.json says so), and its
predictions must list the current test rows in order, made from the current test files (inputs.json's test_files).
The rows used are written to `fold{k}/pseudo.csv`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from torch.utils.data import ConcatDataset, Dataset

from competition.config import Config
from competition.errors import ConfigError
from competition.project import Project
from competition.tables import DataError

log = logging.getLogger(__name__)


def teacher_predictions(cfg: Config, project: Project, fold: int, test: pd.DataFrame, fingerprint: dict) -> pd.DataFrame:
    """The teacher's fold-`fold` test predictions (id, prob), checked against this run's folds and test rows."""
    teacher = project.experiment_dir(cfg.pseudo.teacher)
    inputs, preds = teacher / "inputs.json", teacher / f"fold{fold}" / "test.csv"
    if not preds.is_file():
        raise ConfigError(f"{preds} not found: pseudo.teacher={cfg.pseudo.teacher} has no fold-{fold} test "
                          f"predictions; run `./run.sh {cfg.pseudo.teacher}` first (every fold the student trains)")
    saved = json.loads(inputs.read_text()) if inputs.is_file() else {}
    if saved.get("train") != fingerprint["train"]:
        raise DataError(f"{inputs}: the teacher {cfg.pseudo.teacher} was trained on other training rows, labels or "
                        f"folds than this run; its fold-{fold} model may have seen fold {fold}'s validation rows. "
                        f"Retrain the teacher on the current folds file")
    if saved.get("test_files") and fingerprint.get("test_files") and saved["test_files"] != fingerprint["test_files"]:
        raise DataError(f"{inputs}: the teacher {cfg.pseudo.teacher} predicted other test files (same names, other "
                        f"content) than this run's, so its pseudo-labels would belong to other images; run "
                        f"`./run.sh {cfg.pseudo.teacher}` to predict them again from its checkpoints (no training)")
    frame = pd.read_csv(preds, dtype={"id": str}, keep_default_na=False)
    if len(frame) != len(test) or not (frame["id"].to_numpy() == test["id"].to_numpy()).all():
        raise DataError(f"{preds} does not list the current test rows in order; rerun the teacher "
                        f"(`./run.sh {cfg.pseudo.teacher} --restart`)")
    return frame


def select_pseudo(cfg: Config, teacher: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """Test rows the teacher is confident about: id, path, teacher_prob and the hard label it implies."""
    prob = teacher["prob"].to_numpy(dtype=float)
    decoded = (teacher["error"].to_numpy() == "") if "error" in teacher else np.ones(len(teacher), bool)
    t = cfg.pseudo.threshold
    keep = decoded & ((prob >= t) | (prob <= 1 - t))
    return pd.DataFrame({"id": test["id"].to_numpy()[keep], "path": test["path"].to_numpy()[keep],
                         "teacher_prob": prob[keep], "label": (prob[keep] >= 0.5).astype(int)})


def log_selection(fold: int, chosen: pd.DataFrame, n_test: int, teacher: str) -> None:
    """One line: how many test rows fold `fold` borrows, and their label balance."""
    log.info("fold %d: %d of %d test images pseudo-labelled by %s/fold%d (%d AI, %d human)", fold, len(chosen), n_test,
             teacher, fold, int(chosen["label"].sum()), int(len(chosen) - chosen["label"].sum()))


class Joined(ConcatDataset):
    """Training rows followed by pseudo-labelled rows, augmented alike (the epoch seed reaches both)."""

    def set_epoch_seed(self, seed: int, epoch: int = 0) -> None:
        """Seed every part's augmentation for the coming epoch."""
        for part in self.datasets:
            part.set_epoch_seed(seed, epoch)

    @property
    def cache(self):
        """The training part's image cache (decides the DataLoader's worker count)."""
        return getattr(self.datasets[0], "cache", None)


def join(train: Dataset, extra: Dataset | None) -> Dataset:
    """The training dataset, with the pseudo-labelled rows appended when there are any."""
    return train if extra is None or len(extra) == 0 else Joined([train, extra])


def pseudo_file(fold_dir: Path) -> Path:
    """Where a fold records the pseudo-labelled rows it trained on."""
    return fold_dir / "pseudo.csv"
