"""Raw ids -> dense indices following the conventions in schema.py, and time order per user."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from etarec.data.schema import FIRST_ITEM_ID, UNKNOWN, RawEvents
from etarec.errors import EtarecError

REQUIRED = ("user", "item", "timestamp")


@dataclass
class Encoded:
    events: pd.DataFrame  # user, item, category, timestamp, action, position[, action_value, label]
    item_raw_ids: np.ndarray  # [num_items]: raw id of item index i (padding/unknown -> "")
    item_category: np.ndarray  # [num_items] int32
    category_values: list[str]  # category index -> raw value
    user_raw_ids: np.ndarray  # [num_users]
    profiles: dict[str, np.ndarray]  # feature -> [num_users] int32 codes (0 = unknown)
    profile_vocab: dict[str, int]
    action_values: list[float]  # action code - 1 -> raw value


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
            "timestamp": pd.to_numeric(events["timestamp"], errors="raise").to_numpy().astype(np.int64),
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
    if "order" in events:
        encoded["order"] = events["order"].to_numpy()
        sort_keys = ["user", "order", "item"]
    else:
        sort_keys = ["user", "timestamp", "item"]
    encoded = encoded.sort_values(sort_keys, kind="stable").reset_index(drop=True)
    encoded["position"] = encoded.groupby("user").cumcount().astype(np.int64)

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
    )


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
