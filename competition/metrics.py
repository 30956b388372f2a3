"""The one place predictions are scored: the metric registry, and thresholds chosen on OOF.

Every metric is one function registered with `@register_metric(name, ...)` below; the registration says everything the
rest of the kit asks about it (direction, whether it scores 0/1 labels at a threshold, whether it reads the
probabilities' calibration, how to search its threshold), and `competition.metric` accepts exactly the
registered names. Adding a metric: one function + its registration here, plus its test (tests/test_registries.py).

The threshold story, for threshold metrics (f1, accuracy): epochs are chosen by a threshold-free
criterion (`train.select_by`), the threshold is chosen exactly over every distinct OOF score
(`best_threshold`), and every number reported for the metric is at the threshold of the file written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

EPS = 1e-7
SCAN_MAX = 4096  # generic threshold search: every distinct score up to this many, else this many quantiles
log = logging.getLogger(__name__)

Scorer = Callable[[np.ndarray, np.ndarray], float]  # (0/1 target, probabilities or 0/1 labels) -> score


@dataclass(frozen=True)
class Metric:
    """A registered metric and what other code must know about it."""

    name: str
    fn: Scorer  # threshold metrics get 0/1 labels (prob >= threshold), others probabilities clipped to [EPS, 1-EPS]
    higher_is_better: bool
    threshold: bool = False  # scored on 0/1 labels at a threshold tuned on OOF (epochs then chosen threshold-free)
    calibrated: bool = False  # reads the probabilities' calibration (ensembles fit Platt scaling for it)
    search: Callable[[np.ndarray, np.ndarray], float] | None = None  # fast exact threshold search (target, prob)


METRICS: dict[str, Metric] = {}  # name -> Metric, in registration order (the order config errors list them)


def register_metric(name: str, *, higher_is_better: bool, threshold: bool = False, calibrated: bool = False,
           search: Callable[[np.ndarray, np.ndarray], float] | None = None) -> Callable[[Scorer], Scorer]:
    """Register the decorated scorer as metric `name` (accepted by `competition.metric` from then on)."""
    def register(fn: Scorer) -> Scorer:
        METRICS[name] = Metric(name, fn, higher_is_better, threshold, calibrated, search)
        return fn
    return register


def metric_names() -> tuple[str, ...]:
    """The registered metric names: the allowed values of `competition.metric`."""
    return tuple(METRICS)


def get_metric(name: str) -> Metric:
    """The registered metric `name` (ValueError naming the choices otherwise)."""
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; choose one of {', '.join(METRICS)}")
    return METRICS[name]


def is_threshold_metric(name: str) -> bool:
    """True for metrics scored on 0/1 labels at a threshold (f1, accuracy)."""
    return get_metric(name).threshold


def greater_is_better(name: str) -> bool:
    """True for metrics where higher is better (all but log loss)."""
    return get_metric(name).higher_is_better


class _ThresholdNames:
    """`name in THRESHOLD_METRICS` read live from the registry (kept for callers written before it)."""

    def __contains__(self, name: object) -> bool:
        return name in METRICS and METRICS[name].threshold

    def __iter__(self) -> Iterator[str]:
        return (m.name for m in METRICS.values() if m.threshold)


THRESHOLD_METRICS = _ThresholdNames()


def _f1_threshold(target: np.ndarray, prob: np.ndarray) -> float:
    """The f1-maximising cut over every distinct score, from the precision-recall curve."""
    from sklearn.metrics import precision_recall_curve  # sklearn is imported lazily: config loading imports this module

    precision, recall, thresholds = precision_recall_curve(target, prob)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-300)
    return float(thresholds[int(np.argmax(f1))])


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


@register_metric("auc", higher_is_better=True)
def auc(target: np.ndarray, prob: np.ndarray) -> float:
    """ROC AUC (NaN when only one class is present)."""
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(target, prob)) if len(np.unique(target)) == 2 else float("nan")


@register_metric("f1", higher_is_better=True, threshold=True, search=_f1_threshold)
def f1(target: np.ndarray, label: np.ndarray) -> float:
    """F1 of the positive (AI) class; 0 when nothing is predicted positive."""
    from sklearn.metrics import f1_score

    return float(f1_score(target, label, zero_division=0))


@register_metric("accuracy", higher_is_better=True, threshold=True, search=_accuracy_threshold)
def accuracy(target: np.ndarray, label: np.ndarray) -> float:
    """Share of rows labelled correctly."""
    return float(np.mean(target == label))


@register_metric("logloss", higher_is_better=False, calibrated=True)
def logloss(target: np.ndarray, prob: np.ndarray) -> float:
    """Binary cross-entropy of the probabilities (natural log)."""
    from sklearn.metrics import log_loss

    return float(log_loss(target, prob, labels=[0, 1]))


def score(metric: str, target: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> float:
    """Score probabilities with the named metric (label = prob >= threshold for threshold metrics)."""
    entry = get_metric(metric)
    target = np.asarray(target).astype(int)
    raw = np.asarray(prob, dtype=np.float64)
    if entry.threshold:  # thresholds are chosen on raw scores: never clip before comparing
        return float(entry.fn(target, (raw >= threshold).astype(int)))
    return float(entry.fn(target, np.clip(raw, EPS, 1 - EPS)))


def best_threshold(metric: str, target: np.ndarray, prob: np.ndarray) -> float:
    """The threshold maximising a threshold metric, searched exactly over every distinct score (0.5 for others)."""
    entry = get_metric(metric)
    if not entry.threshold:
        return 0.5
    target, prob = np.asarray(target).astype(int), np.asarray(prob, dtype=np.float64)
    if entry.search is not None:
        return float(entry.search(target, prob))
    return _scan_threshold(entry, target, prob)


def _scan_threshold(entry: Metric, target: np.ndarray, prob: np.ndarray) -> float:
    """A threshold metric without a fast search: score every distinct cut (SCAN_MAX quantiles when there are more)."""
    values = np.unique(prob)
    if len(values) > SCAN_MAX:
        values = np.unique(np.quantile(prob, np.linspace(0, 1, SCAN_MAX)))
    cuts = np.append(values, np.nextafter(values[-1], np.inf))  # the last cut labels every row negative
    scores = np.array([entry.fn(target, (prob >= c).astype(int)) for c in cuts])
    best = int(np.nanargmax(scores) if entry.higher_is_better else np.nanargmin(scores))
    return float(cuts[best])


def positive_rate(prob: np.ndarray, threshold: float) -> float:
    """Share of rows labelled AI (prob >= threshold)."""
    return float(np.mean(np.asarray(prob, dtype=np.float64) >= threshold))


def selection_metric(metric: str, select_by: str = "auto") -> str:
    """What picks epochs and checkpoints: auto = log loss for threshold metrics (threshold-free), else the metric."""
    if select_by == "metric" or (select_by == "auto" and not is_threshold_metric(metric)):
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
    if not is_threshold_metric(metric):
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
