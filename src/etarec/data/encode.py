"""Raw ids -> dense indices following the conventions in schema.py, and time order per user.

Time order and ties. A user's events are sorted by timestamp (or by `order` when the data has no
timestamps; timestamps are whole Unix seconds). Events of a user with the same sort key are a tie
group, and the reader's tie rule (RawEvents.ties) says what a group means:

* SIMULTANEOUS (own events, Taobao): the group keeps file order (a stable sort on the key alone), and
  its events are not each other's history: an event's history is the user's events strictly
  before its timestamp (`history` below), and the chronological split keeps a group in one split
  (`group`, see protocol.rating_protocol).
* ITEM_ORDER (the documented MovieLens protocol): the group is ordered by item id and is an ordinary
  sequence: an event's history is every event before it in (timestamp, item) order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from etarec.data.files import seconds_problem
from etarec.data.schema import FIRST_ITEM_ID, ITEM_ORDER, SIMULTANEOUS, UNKNOWN, RawEvents
from etarec.errors import EtarecError

REQUIRED = ("user", "item", "timestamp")


@dataclass
class Encoded:
    # user, item, category, timestamp, action, position, history, group[, action_value, label]; see tie_groups
    events: pd.DataFrame
    item_raw_ids: np.ndarray  # [num_items]: raw id of item index i (padding/unknown -> "")
    item_category: np.ndarray  # [num_items] int32
    category_values: list[str]  # category index -> raw value
    user_raw_ids: np.ndarray  # [num_users]
    profiles: dict[str, np.ndarray]  # feature -> [num_users] int32 codes (0 = unknown)
    profile_vocab: dict[str, int]
    action_values: list[float]  # action code - 1 -> raw value
    tied_share: float = 0.0  # share of events in a tie group of two or more (SIMULTANEOUS only)


def _codes(values: pd.Series, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes (offset + rank of the sorted unique value) and the uniques."""
    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int64) + offset, np.asarray(uniques)


def encode(raw: RawEvents) -> Encoded:
    events = raw.events
    missing = [c for c in REQUIRED if c not in events]
    if missing:
        raise EtarecError(f"{raw.name}: events lack column(s) {missing}; map them in data.columns")
    if events.empty:
        raise EtarecError(f"{raw.name}: no events were read; check the input file")
    for column in ("user", "item", "timestamp"):
        if events[column].isna().any():
            row = int(np.flatnonzero(events[column].isna().to_numpy())[0])
            raise EtarecError(f"{raw.name}: column '{column}' is empty at row {row}; fill or drop such rows")
    events = events.copy()
    if "category" not in events:
        events["category"] = "unknown"
    events["category"] = events["category"].fillna("unknown").astype(str)

    item_codes, item_raw = _codes(events["item"], FIRST_ITEM_ID)
    item_category_raw = pd.Series(events["category"].to_numpy(), index=item_codes)
    # an item keeps the category of its first occurrence (readers give one category per item)
    item_category_raw = item_category_raw[~item_category_raw.index.duplicated()].sort_index()
    category_codes, category_raw = _codes(item_category_raw, FIRST_ITEM_ID)
    item_category = np.zeros(len(item_raw) + FIRST_ITEM_ID, dtype=np.int32)
    item_category[item_category_raw.index.to_numpy()] = category_codes
    item_category[UNKNOWN] = UNKNOWN

    user_codes, user_raw = _codes(events["user"], 1)
    encoded = pd.DataFrame(
        {
            "user": user_codes,
            "item": item_codes,
            "category": item_category[item_codes],
            "timestamp": _seconds(events["timestamp"], raw.name),
        }
    )
    action_values: list[float] = []
    if "action" in events:
        action = pd.to_numeric(events["action"], errors="coerce")
        if action.isna().any():
            raise EtarecError(f"{raw.name}: action column has non-numeric values; map actions to numbers")
        action_codes, uniques = _codes(action, 1)
        encoded["action"] = action_codes
        encoded["action_value"] = action.to_numpy(dtype=np.float64)
        action_values = [float(v) for v in uniques]
    else:
        encoded["action"] = 0
    if "label" in events:
        encoded["label"] = events["label"].to_numpy().astype(np.int8)
    if raw.ties not in (SIMULTANEOUS, ITEM_ORDER):
        raise EtarecError(f"{raw.name}: unknown tie rule {raw.ties!r}; use {SIMULTANEOUS!r} or {ITEM_ORDER!r}")
    key = "timestamp"
    if "order" in events:
        encoded["order"] = pd.to_numeric(events["order"]).to_numpy()
        key = "order"
    sort_keys = ["user", key, "item"] if raw.ties == ITEM_ORDER else ["user", key]
    encoded = encoded.sort_values(sort_keys, kind="stable").reset_index(drop=True)
    position = encoded.groupby("user").cumcount().to_numpy(np.int64)
    encoded["position"] = position
    tied_share = 0.0
    if raw.ties == SIMULTANEOUS:
        history, group, tied = tie_groups(encoded["user"].to_numpy(), encoded[key].to_numpy(), position)
        encoded["history"], encoded["group"], tied_share = history, group, float(tied.mean())
    else:
        encoded["history"], encoded["group"] = position, position

    profiles, profile_vocab = _encode_profiles(raw.profiles, user_raw)
    return Encoded(
        events=encoded,
        item_raw_ids=np.concatenate([np.array(["", ""], dtype=object), item_raw.astype(object)]),
        item_category=item_category,
        category_values=["<pad>", "unknown"] + [str(v) for v in category_raw],
        user_raw_ids=np.concatenate([np.array([""], dtype=object), user_raw.astype(object)]),
        profiles=profiles,
        profile_vocab=profile_vocab,
        action_values=action_values,
        tied_share=tied_share,
    )


def tie_groups(user: np.ndarray, key: np.ndarray, position: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For events sorted by (user, key) with `position` = rank in the user's sequence:
    (history: the user's events before the event's tie group, i.e. its history length;
     group: the rank of its tie group in the user's sequence; tied: whether the group holds two or more).

        user [1, 1, 1, 1], key [5, 9, 9, 12] -> history [0, 1, 1, 3], group [0, 1, 1, 2], tied [F, T, T, F]
    """
    n = len(user)
    index = np.arange(n)
    new = np.ones(n, dtype=bool)  # an event that starts a tie group
    new[1:] = (user[1:] != user[:-1]) | (key[1:] != key[:-1])
    group_start = np.maximum.accumulate(np.where(new, index, 0))  # flat index of the group's first event
    history = position - (index - group_start)
    global_group = np.cumsum(new) - 1
    group = global_group - global_group[index - position]  # minus the user's first group
    sizes = np.diff(np.append(np.flatnonzero(new), n))
    return history.astype(np.int64), group.astype(np.int64), np.repeat(sizes > 1, sizes)


def _seconds(values: pd.Series, name: str) -> np.ndarray:
    """Timestamps as int64 Unix seconds; a fractional value or one beyond int64 is refused, never
    truncated (readers check their files with row numbers first: files.read_table(timestamps=...))."""
    numbers = pd.to_numeric(values, errors="raise")
    problem = seconds_problem(numbers)
    if problem:
        raise EtarecError(f"{name}: timestamp column has {problem[1]} at row {problem[0]}; "
                          "timestamps are whole Unix seconds (etarec never rounds them): store whole seconds")
    return numbers.to_numpy().astype(np.int64)


def _encode_profiles(profiles: pd.DataFrame | None, user_raw: np.ndarray) -> tuple[dict, dict]:
    if profiles is None:
        return {}, {}
    table = profiles.drop_duplicates("user").set_index("user").reindex(user_raw)
    encoded, vocab = {}, {}
    for feature in table.columns:
        codes, uniques = pd.factorize(table[feature], sort=True)  # missing users -> -1
        encoded[feature] = np.concatenate([[0], codes + 1]).astype(np.int32)
        vocab[feature] = len(uniques) + 1
    return encoded, vocab
