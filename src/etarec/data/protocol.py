"""Task protocols: which behaviours become samples, their labels and their split.

`rating_protocol` (DIN's MovieLens experiment): every event is a sample, label = rating >= a
threshold, split chronologically per user. `last_behaviour_protocol` (MIMN / ETA on Taobao): a
user's last behaviour is a positive target, a random item of the same category a negative one.
Both work on encoded, time-ordered events (see encode.py) and return sample tables that point into
the user's sequence by position: a sample's `position` is its history length (encode.py's
`history`: under the SIMULTANEOUS tie rule the events of its own timestamp are not in it).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from etarec.data.schema import FIRST_ITEM_ID
from etarec.errors import EtarecError

SAMPLE_COLUMNS = ["user", "position", "item", "category", "timestamp", "label"]


def split_sizes(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(valid, test) counts for users with n events: max(1, round(0.1 n)) each, at most n.

    Python's round() halves to even; np.round does the same, so the split is the documented one.
    """
    held_out = np.maximum(1, np.round(0.1 * n).astype(np.int64))
    n_test = np.minimum(n, held_out)
    n_valid = np.minimum(n - n_test, held_out)
    return n_valid, n_test


def rating_protocol(events: pd.DataFrame, threshold: float) -> dict[str, pd.DataFrame]:
    """Every event is a sample; its history is the user's events before it.

    events: encoded and time-ordered per user (encode.py), with `history` (the sample's history
    length) and `group` (the rank of its tie group in the user's sequence; = rank when ties are
    ordinary order), and `action_value` (the raw rating) or `label`. The split counts a user's
    tie groups: of G groups the last max(1, round(0.1 G)) go to test and as many before them to
    valid, so a group of simultaneous events is never cut (without ties G = n events).
    """
    if "label" in events:
        label = events["label"].to_numpy().astype(np.int8)
    elif "action_value" in events:
        label = (events["action_value"].to_numpy() >= threshold).astype(np.int8)
    else:
        raise EtarecError(
            "the rating protocol needs a rating (action) or a label column; map one in data.columns"
        )
    user = events["user"].to_numpy()
    group = events["group"].to_numpy()
    groups = np.zeros(user.max() + 1, dtype=np.int64)
    np.maximum.at(groups, user, group + 1)
    n = groups[user]
    n_valid, n_test = split_sizes(n)
    rank_from_end = n - 1 - group
    split = np.where(rank_from_end < n_test, 2, np.where(rank_from_end < n_test + n_valid, 1, 0))
    samples = pd.DataFrame(
        {
            "user": user.astype(np.int32),
            "position": events["history"].to_numpy().astype(np.int32),
            "item": events["item"].to_numpy().astype(np.int32),
            "category": events["category"].to_numpy().astype(np.int32),
            "timestamp": events["timestamp"].to_numpy().astype(np.int64),
            "label": label,
        }
    )
    return {name: samples[split == code].reset_index(drop=True) for code, name in enumerate(("train", "valid", "test"))}


def last_behaviour_protocol(
    events: pd.DataFrame, item_category: np.ndarray, seed: int
) -> dict[str, pd.DataFrame]:
    """MIMN/ETA protocol: per user, target = last behaviour (label 1) and a random other item of the
    same category (label 0; any other item when it is alone in its category), both with the whole
    earlier sequence as history (`history` events: simultaneous ones are not history). Users are
    split 80/10/10 into train/valid/test by a seeded permutation.
    """
    rng = np.random.default_rng(seed)
    last = events.groupby("user", sort=True).tail(1)
    last = last[last["history"] > 0]  # a user with one behaviour (or one timestamp) has no history to learn from
    if last.empty:
        raise EtarecError("no user has behaviours at two or more times; the last-behaviour protocol needs history")
    positives = last[["user", "history", "item", "category", "timestamp"]].rename(columns={"history": "position"})
    positives["label"] = 1
    negatives = positives.copy()
    negatives["item"] = _same_category_items(positives["item"].to_numpy(), item_category, rng,
                                             np.random.default_rng([seed, 1]))
    negatives["category"] = item_category[negatives["item"].to_numpy()]  # differs only for a lone item
    negatives["label"] = 0
    users = positives["user"].to_numpy()
    order = rng.permutation(len(users))
    n_test = max(1, round(0.1 * len(users)))
    part = np.zeros(len(users), dtype=np.int64)
    part[order[:n_test]] = 2
    part[order[n_test : 2 * n_test]] = 1
    part_of_user = dict(zip(users.tolist(), part.tolist()))
    samples = pd.concat([positives, negatives]).sort_values(["user", "label"], kind="stable")
    split = samples["user"].map(part_of_user).to_numpy()
    samples = samples.astype({"user": np.int32, "position": np.int32, "item": np.int32,
                              "category": np.int32, "timestamp": np.int64, "label": np.int8})
    return {name: samples[split == code][SAMPLE_COLUMNS].reset_index(drop=True)
            for code, name in enumerate(("train", "valid", "test"))}


def _same_category_items(items: np.ndarray, item_category: np.ndarray, rng: np.random.Generator,
                         fallback_rng: np.random.Generator) -> np.ndarray:
    """For each item, a uniformly drawn different item of its category; an item alone in its category
    gets a uniformly drawn different item of any category (a negative equal to its positive would be
    the same sample with both labels). Only with a single known item at all is the item itself returned."""
    by_category = np.argsort(item_category, kind="stable")
    rank_in_sorted = np.empty_like(by_category)
    rank_in_sorted[by_category] = np.arange(len(by_category))
    sorted_categories = item_category[by_category]
    categories = item_category[items]
    start = np.searchsorted(sorted_categories, categories, side="left")
    count = np.searchsorted(sorted_categories, categories, side="right") - start
    own_rank = rank_in_sorted[items] - start
    # draw among the count - 1 others, then step over the positive's own rank
    draw = (rng.random(len(items)) * np.maximum(count - 1, 1)).astype(np.int64)
    draw = np.where((draw >= own_rank) & (count > 1), draw + 1, draw)
    negatives = by_category[start + np.minimum(draw, count - 1)]
    # alone in its category: any other known item (ids FIRST_ITEM_ID..), from its own generator so
    # that `rng` (and with it the other negatives and the user split) is unchanged
    known = len(item_category) - FIRST_ITEM_ID
    other = FIRST_ITEM_ID + (fallback_rng.random(len(items)) * max(known - 1, 1)).astype(np.int64)
    other = np.where((other >= items) & (known > 1), other + 1, other)
    return np.where(count > 1, negatives, other)
