"""The metrics module against hand-checkable cases."""

import numpy as np
import pytest

from competition.metrics import best_threshold, is_better, score


def test_scores():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    assert score("auc", y, p) == pytest.approx(0.75)
    assert score("accuracy", y, p) == pytest.approx(0.5)
    assert score("f1", y, p) == pytest.approx(0.5)
    assert score("logloss", y, p) == pytest.approx(-np.mean(np.log([0.9, 0.4, 0.4, 0.9])))


def test_threshold_and_direction():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.35, 0.8, 0.9])
    t = best_threshold("accuracy", y, p)
    assert 0.3 < t <= 0.35 and score("accuracy", y, p, t) == 1.0
    assert is_better("auc", 0.9, 0.8) and is_better("logloss", 0.2, 0.3) and is_better("auc", 0.5, None)
