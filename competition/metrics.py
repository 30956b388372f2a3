"""The one place predictions are scored: AUC, F1, accuracy, log loss, and thresholds chosen on OOF.

The threshold story, for threshold metrics (f1, accuracy): epochs are chosen by a threshold-free
criterion (`train.select_by`), the threshold is chosen exactly over every distinct OOF score
(`best_threshold`), and every number reported for the metric is at the threshold of the file written.
"""

from __future__ import annotations

import logging

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_recall_curve, roc_auc_score

METRICS = ("auc", "f1", "accuracy", "logloss")
THRESHOLD_METRICS = ("f1", "accuracy")  # metrics scored on 0/1 labels
EPS = 1e-7
log = logging.getLogger(__name__)


def greater_is_better(metric: str) -> bool:
    """True for metrics where higher is better (all but log loss)."""
    return metric != "logloss"


def score(metric: str, target: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> float:
    """Score probabilities with the named metric (label = prob >= threshold for f1/accuracy)."""
    target = np.asarray(target).astype(int)
    raw = np.asarray(prob, dtype=np.float64)
    if metric in THRESHOLD_METRICS:  # thresholds are chosen on raw scores: never clip before comparing
        label = (raw >= threshold).astype(int)
        if metric == "f1":
            return float(f1_score(target, label, zero_division=0))
        return float(accuracy_score(target, label))
    prob = np.clip(raw, EPS, 1 - EPS)
    if metric == "auc":
        return float(roc_auc_score(target, prob)) if len(np.unique(target)) == 2 else float("nan")
    if metric == "logloss":
        return float(log_loss(target, prob, labels=[0, 1]))
    raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def best_threshold(metric: str, target: np.ndarray, prob: np.ndarray) -> float:
    """The threshold maximising f1/accuracy, searched exactly over every distinct score (0.5 for other metrics)."""
    if metric not in THRESHOLD_METRICS:
        return 0.5
    target, prob = np.asarray(target).astype(int), np.asarray(prob, dtype=np.float64)
    if metric == "f1":
        precision, recall, thresholds = precision_recall_curve(target, prob)
        f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-300)
        return float(thresholds[int(np.argmax(f1))])
    return _accuracy_threshold(target, prob)


def _accuracy_threshold(target: np.ndarray, prob: np.ndarray) -> float:
    """Accuracy at every cut `prob >= v` for each distinct v (and 'all negative'), by cumulative counts."""
    values, inverse = np.unique(prob, return_inverse=True)
    pos_at = np.bincount(inverse, weights=target, minlength=len(values))
    neg_at = np.bincount(inverse, weights=1 - target, minlength=len(values))
    tp = np.cumsum(pos_at[::-1])[::-1]  # positives with prob >= values[i]
    fp = np.cumsum(neg_at[::-1])[::-1]
    correct = tp + (neg_at.sum() - fp)
    all_negative = neg_at.sum()
    i = int(np.argmax(correct))
    return float(values[i]) if correct[i] >= all_negative else float(np.nextafter(values[-1], np.inf))


def positive_rate(prob: np.ndarray, threshold: float) -> float:
    """Share of rows labelled AI (prob >= threshold)."""
    return float(np.mean(np.asarray(prob, dtype=np.float64) >= threshold))


def selection_metric(metric: str, select_by: str = "auto") -> str:
    """What picks epochs and checkpoints: auto = log loss for threshold metrics (threshold-free), else the metric."""
    if select_by == "metric" or (select_by == "auto" and metric not in THRESHOLD_METRICS):
        return metric
    return "logloss" if select_by == "auto" else select_by


def score_all(target: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Every metric at once (for metrics.json and logs)."""
    return {m: score(m, target, prob, threshold) for m in METRICS}


def is_better(metric: str, new: float, old: float | None) -> bool:
    """Whether `new` improves on `old` for this metric (None is beaten by anything finite)."""
    if old is None or np.isnan(old):
        return not np.isnan(new)
    return new > old if greater_is_better(metric) else new < old


def score_note(metric: str, threshold: float) -> str:
    """How a reported score was taken (for threshold metrics: at which threshold)."""
    if metric not in THRESHOLD_METRICS:
        return f"{metric} (threshold-free)"
    return f"{metric} at threshold {threshold:.6g}, tuned over every distinct OOF score: the submission's threshold"


def positive_rates(oof_prob: np.ndarray, test_prob: np.ndarray, threshold: float) -> dict:
    """Share labelled AI on OOF and on test at the threshold, and whether they differ by over 10 points."""
    rates = {"oof": positive_rate(oof_prob, threshold), "test": positive_rate(test_prob, threshold)}
    rates["shifted"] = bool(abs(rates["oof"] - rates["test"]) > 0.10)
    return rates


def warn_positive_rates(rates: dict, threshold: float, where: str) -> None:
    """A loud warning when the test set is labelled AI at a very different rate than OOF."""
    if rates["shifted"]:
        log.warning("!!! %s: at threshold %.4f, %.1f%% of OOF rows but %.1f%% of test rows are labelled AI (> 10 points "
                    "apart): the test set differs from training (run `./run.sh audit --shift`) or the fold-averaged "
                    "test probabilities are narrower than single-model OOF ones; a tuned threshold may not transfer",
                    where, threshold, 100 * rates["oof"], 100 * rates["test"])
