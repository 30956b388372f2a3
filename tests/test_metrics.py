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


def test_positive_rate_shift_is_flagged_loudly(caplog):
    from competition.metrics import positive_rates, warn_positive_rates
    oof, test = np.linspace(0, 1, 1000), np.linspace(0.3, 1, 500)  # test scores sit higher: more labelled AI
    same = positive_rates(oof, np.linspace(0, 1, 500), 0.5)
    assert not same["shifted"] and abs(same["oof"] - 0.5) < 0.01
    shifted = positive_rates(oof, test, 0.5)
    assert shifted["shifted"] and shifted["test"] > 0.7
    warn_positive_rates(shifted, 0.5, "exp")
    assert "!!!" in caplog.text and "labelled AI" in caplog.text


def test_selection_is_threshold_free_for_threshold_metrics():
    from competition.metrics import selection_metric
    assert selection_metric("f1") == "logloss" and selection_metric("accuracy") == "logloss"
    assert selection_metric("auc") == "auc" and selection_metric("f1", "metric") == "f1"
    assert selection_metric("f1", "auc") == "auc"
