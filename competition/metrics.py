"""The one place predictions are scored: AUC, F1, accuracy, log loss, and thresholds chosen on OOF."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

METRICS = ("auc", "f1", "accuracy", "logloss")
THRESHOLD_METRICS = ("f1", "accuracy")  # metrics scored on 0/1 labels
EPS = 1e-7


def greater_is_better(metric: str) -> bool:
    """True for metrics where higher is better (all but log loss)."""
    return metric != "logloss"


def score(metric: str, target: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> float:
    """Score probabilities with the named metric (threshold applies to f1/accuracy)."""
    target = np.asarray(target).astype(int)
    prob = np.clip(np.asarray(prob, dtype=np.float64), EPS, 1 - EPS)
    if metric == "auc":
        return float(roc_auc_score(target, prob)) if len(np.unique(target)) == 2 else float("nan")
    if metric == "logloss":
        return float(log_loss(target, prob, labels=[0, 1]))
    label = (prob >= threshold).astype(int)
    if metric == "f1":
        return float(f1_score(target, label, zero_division=0))
    if metric == "accuracy":
        return float(accuracy_score(target, label))
    raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def best_threshold(metric: str, target: np.ndarray, prob: np.ndarray) -> float:
    """Threshold maximising a threshold metric on these predictions (0.5 for threshold-free metrics)."""
    if metric not in THRESHOLD_METRICS:
        return 0.5
    candidates = np.unique(np.quantile(prob, np.linspace(0.01, 0.99, 197)))
    scores = [score(metric, target, prob, t) for t in candidates]
    return float(candidates[int(np.argmax(scores))])


def score_all(target: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Every metric at once (for metrics.json and logs)."""
    return {m: score(m, target, prob, threshold) for m in METRICS}


def is_better(metric: str, new: float, old: float | None) -> bool:
    """Whether `new` improves on `old` for this metric (None is beaten by anything finite)."""
    if old is None or np.isnan(old):
        return not np.isnan(new)
    return new > old if greater_is_better(metric) else new < old
