"""What runs beside a freshly built folds file: the shortcut audit and the train-vs-test shift check."""

from __future__ import annotations

import pandas as pd

from competition.audit import audit_folds
from competition.config import Config
from competition.project import Project
from competition.shift import shift_beside_folds


def check_new_folds(cfg: Config, project: Project, train: pd.DataFrame, test: pd.DataFrame, folds: pd.DataFrame) -> None:
    """Audit a new split for file-level shortcuts, then check whether the test set looks like the training set."""
    if cfg.folds.audit:
        audit_folds(train, folds, project.folds_file(cfg))
    if cfg.folds.shift_check and len(test):
        shift_beside_folds(cfg, project, train, test)
