"""AUC, gAUC and logloss, exact and vectorised (ties get the average rank, as sklearn does)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from etarec.errors import EtarecError

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


# ------------------------------------------------------------------------------------------------
# metrics by history length
# ------------------------------------------------------------------------------------------------

DEFAULT_LENGTH_EDGES = (50, 200, 1000)  # buckets < 50, 50-200, 200-1000, >= 1000


def length_edges(values) -> tuple[int, ...]:
    """Bucket edges from "50,200,1000" or a list of ints: positive, strictly increasing; one line otherwise."""
    texts = values.split(",") if isinstance(values, str) else list(values)
    try:
        edges = tuple(int(str(text).strip()) for text in texts)
    except ValueError:
        edges = ()
    if not edges or any(e <= 0 for e in edges) or any(a >= b for a, b in zip(edges, edges[1:])):
        raise EtarecError(f"length buckets {values!r}: give positive, strictly increasing history lengths, "
                          "e.g. 50,200,1000 (buckets < 50, 50-200, 200-1000, >= 1000)")
    return edges


def bucket_names(edges) -> list[str]:
    """[50, 200, 1000] -> ['< 50', '50-200', '200-1000', '>= 1000'] (a bucket holds its lower edge)."""
    return [f"< {edges[0]}"] + [f"{a}-{b}" for a, b in zip(edges, edges[1:])] + [f">= {edges[-1]}"]


def _null(value: float) -> float | None:
    return None if np.isnan(value) else value


def metrics_by_length(users: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, lengths: np.ndarray,
                      edges=DEFAULT_LENGTH_EDGES) -> dict:
    """AUC, gAUC and logloss per bucket of real history length (a sample's number of real behaviours
    before it, not capped by any window: `Samples.position`).

    Bucket b holds edges[b-1] <= length < edges[b]. gAUC is taken over the bucket's rows only (a
    user whose samples straddle two buckets counts in each with those samples). A metric that has
    no value (a bucket without samples, with one class, or without a user of both classes) is None
    and `why_null` says why: never a crash, never NaN in the JSON."""
    edges = tuple(int(e) for e in edges)
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    users = np.asarray(users)
    bucket = np.searchsorted(np.asarray(edges), np.asarray(lengths), side="right")  # [N]
    lows, highs = (0,) + edges, edges + (None,)
    buckets = []
    for b, name in enumerate(bucket_names(edges)):
        rows = bucket == b
        n = int(rows.sum())
        entry = {"bucket": name, "min": lows[b], "max": highs[b], "samples": n,
                 "positive_rate": float(labels[rows].mean()) if n else None, "auc": None, "gauc": None, "logloss": None}
        why = {}
        if n == 0:
            why = {"auc": "no samples", "gauc": "no samples", "logloss": "no samples"}
        else:
            y, p, u = labels[rows], probabilities[rows], users[rows]
            entry["logloss"] = logloss(y, p)
            entry["auc"] = _null(auc(y, p))
            if entry["auc"] is None:
                why["auc"] = f"one class only (all {'positive' if y.min() > 0.5 else 'negative'})"
            entry["gauc"] = _null(gauc(u, y, p))
            if entry["gauc"] is None:
                why["gauc"] = "no user with both classes in this bucket"
        if why:
            entry["why_null"] = why
        buckets.append(entry)
    return {"edges": list(edges), "buckets": buckets}
