"""Metrics against sklearn and a per-user loop."""
import numpy as np
import pytest
from sklearn.metrics import log_loss, roc_auc_score

from etarec.train.metrics import auc, gauc, logloss


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_logloss_equal_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(10, 3000))
    labels = (rng.random(n) < rng.uniform(0.1, 0.9)).astype(np.float32)
    labels[:2] = [0, 1]
    scores = np.round(rng.random(n), int(rng.integers(1, 4))).astype(np.float32)  # many ties
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    probabilities = np.clip(scores.astype(np.float64), 1e-7, 1 - 1e-7)
    assert logloss(labels, probabilities) == pytest.approx(log_loss(labels, probabilities), rel=1e-9)


def test_auc_single_class_is_nan():
    assert np.isnan(auc(np.ones(5), np.arange(5)))


def reference_gauc(users, labels, scores):
    total, weight = 0.0, 0
    for user in sorted(set(users.tolist())):
        rows = users == user
        if len(set(labels[rows].tolist())) < 2:
            continue
        total += roc_auc_score(labels[rows], scores[rows]) * rows.sum()
        weight += rows.sum()
    return total / weight


@pytest.mark.parametrize("seed", range(5))
def test_gauc_equals_per_user_reference(seed):
    rng = np.random.default_rng(seed)
    n = 2000
    users = rng.integers(0, 60, n)
    labels = (rng.random(n) < 0.5).astype(np.float32)
    labels[users == 7] = 1  # a single-class user is skipped
    scores = np.round(rng.random(n), 2)
    assert gauc(users, labels, scores) == pytest.approx(reference_gauc(users, labels, scores), abs=1e-12)
