"""The canonical dataset: what every reader produces and every model reads.

On disk (one directory, Parquet):
    users.parquet    one row per user: user, item[], category[], timestamp[], action[] (time order),
                     and profile_<name> columns (categorical user features, where the data has them)
    items.parquet    one row per item index: item, raw_id, category
    samples/{train,valid,test}.parquet
                     user, position, item, category, timestamp, label; `position` points into the
                     user's sequence: the sample's history is sequence[:position]. Histories are
                     never copied into sample rows.
    meta.json        format marker and version, vocabulary sizes, protocol, split statistics, and
                     what it was made from (the data config and the raw input files' fingerprints)

Id conventions (shared by all readers, the model and the scorer):
    item / category: 0 = padding, 1 = unknown (out of vocabulary), 2.. = known values
    user / profile values: 0 = unknown, 1.. = known values
    action: 0 = padding, 1.. = index into meta["action_values"]
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

PAD = 0
UNKNOWN = 1
FIRST_ITEM_ID = 2
SPLITS = ("train", "valid", "test")
FORMAT_VERSION = 1
# users.parquet rows (users) per row group: a reader holds one row group of a column at a time, so a
# load's transient is a slice of a column, not all of it (older files with one row group still load)
USERS_PER_ROW_GROUP = 512
FORMAT = "etarec-prepared"  # meta.json's "format": how a folder is recognised as a prepared dataset
# Tie rules (see encode.py): what events of a user with the same timestamp mean
SIMULTANEOUS = "simultaneous"  # file order kept; not each other's history; one split
ITEM_ORDER = "item"  # the MovieLens protocol: ordered by item id, each other's history like any order


@dataclass
class RawEvents:
    """A reader's output before encoding: raw ids, one row per behaviour.

    events columns: user, item, category (str or int), timestamp (int64 Unix seconds), action
    (float, optional), label (0/1, optional: overrides the rating threshold), order (optional: the
    sequence order when there are no timestamps).
    protocol: see protocol.py. ties: SIMULTANEOUS or ITEM_ORDER (see encode.py).
    profiles (optional): one row per raw user id, column `user` plus categorical feature columns.
    items (optional): raw item -> category for items that may never occur in events.
    """

    name: str
    events: pd.DataFrame
    protocol: str = "rating"  # "rating" (every event a sample) or "last_behaviour" (MIMN/ETA)
    ties: str = SIMULTANEOUS
    profiles: pd.DataFrame | None = None
    items: pd.DataFrame | None = None
