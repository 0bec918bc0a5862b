"""AUC, gAUC and logloss, exact and vectorised (ties get the average rank, as sklearn does)."""
from __future__ import annotations

import numpy as np
import pandas as pd

PROBABILITY_EPS = 1e-7


def _auc_from_ranks(ranks: np.ndarray, labels: np.ndarray) -> float:
    positives = labels > 0.5
    n_pos = positives.sum()
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U); nan when only one class is present."""
    ranks = pd.Series(np.asarray(scores, dtype=np.float64)).rank(method="average").to_numpy()
    return _auc_from_ranks(ranks, np.asarray(labels))


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Per-user AUC averaged with weights = the user's sample count; single-class users skipped."""
    frame = pd.DataFrame({"user": users, "label": np.asarray(labels) > 0.5, "score": np.asarray(scores, np.float64)})
    frame["rank"] = frame.groupby("user")["score"].rank(method="average")
    grouped = frame.groupby("user")
    n = grouped.size()
    n_pos = grouped["label"].sum()
    n_neg = n - n_pos
    rank_sum_pos = frame["rank"].where(frame["label"], 0.0).groupby(frame["user"]).sum()
    both = (n_pos > 0) & (n_neg > 0)
    if not both.any():
        return float("nan")
    per_user = (rank_sum_pos[both] - n_pos[both] * (n_pos[both] + 1) / 2) / (n_pos[both] * n_neg[both])
    return float((per_user * n[both]).sum() / n[both].sum())


def logloss(labels: np.ndarray, probabilities: np.ndarray) -> float:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), PROBABILITY_EPS, 1 - PROBABILITY_EPS)
    y = np.asarray(labels, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def all_metrics(users: np.ndarray, labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    return {"auc": auc(labels, probabilities), "gauc": gauc(users, labels, probabilities),
            "logloss": logloss(labels, probabilities)}
