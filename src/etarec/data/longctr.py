"""FuxiCTR's LongCTR parquet layout (model_zoo/LongCTR: MicroVideo1.7M_x2, KuaiVideo_x2, EBNeRD ...).

A folder with
    train.parquet / valid.parquet / test.parquet   label, user_index, item_index (target), seq_len
    user_info.parquet                              full_item_seq (list), row i = user i
    item_info.parquet                              item_index and a category column (cate_id)
Samples already point into the user's sequence (history = full_item_seq[:seq_len]), which is the
canonical form; only the ids shift by one, because LongCTR uses 0 for padding and etarec keeps 1
for the unknown item (and user 0 for the unknown user). The layout has no timestamps: time gaps are 0.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from etarec.data.files import read_table, require_files
from etarec.data.schema import FIRST_ITEM_ID, SPLITS
from etarec.data.writer import Tables, items_table, users_table
from etarec.errors import EtarecError

FILES = ("train.parquet", "valid.parquet", "test.parquet", "user_info.parquet", "item_info.parquet")
SAMPLE_COLUMNS = ["label", "user_index", "item_index", "seq_len"]
CATEGORY_COLUMNS = ("cate_id", "category", "cate_index")
SHIFT = FIRST_ITEM_ID - 1  # LongCTR id 1 (its first real id) -> etarec id 2


def _category_column(item_info: pd.DataFrame, path: Path) -> np.ndarray:
    for name in CATEGORY_COLUMNS:
        if name in item_info:
            return pd.to_numeric(item_info[name]).to_numpy(np.int64)
    raise EtarecError(f"{path} has none of the category columns {list(CATEGORY_COLUMNS)}; add one (cate_id)")


def read_longctr(folder: Path) -> Tables:
    """The LongCTR folder as a prepared dataset in memory (ids shifted, user 0 = unknown prepended)."""
    files = require_files(folder, *FILES)
    *split_files, user_file, item_file = files
    item_info = read_table(item_file, columns=["item_index"], numeric=("item_index",)).sort_values("item_index")
    item_index = item_info["item_index"].to_numpy(np.int64)
    if not np.array_equal(item_index, np.arange(len(item_index))):
        raise EtarecError(f"{item_file}: item_index must run 0..n-1 with one row per item; re-export item_info")
    lc_category = _category_column(item_info, item_file)
    num_items = len(item_index) + SHIFT
    item_category = np.zeros(num_items, dtype=np.int64)
    # a real item without a category gets "unknown" (1): category 0 is reserved for padding
    item_category[SHIFT:] = np.where(lc_category > 0, lc_category + SHIFT, 1)
    item_category[0] = 0
    num_categories = int(item_category.max()) + 1

    sequences = pq.read_table(user_file, columns=["full_item_seq"])["full_item_seq"].combine_chunks()
    counts = np.diff(sequences.offsets.to_numpy()).astype(np.int64)
    flat = sequences.values.to_numpy().astype(np.int64)
    if flat.size and (flat.min() < 0 or flat.max() >= len(item_index)):
        raise EtarecError(f"{user_file}: full_item_seq holds ids outside item_info's 0..{len(item_index) - 1}")
    flat_items = np.where(flat > 0, flat + SHIFT, 0)
    samples = {}
    for split, path in zip(SPLITS, split_files):
        frame = read_table(path, columns=SAMPLE_COLUMNS, numeric=tuple(SAMPLE_COLUMNS))
        user = frame["user_index"].to_numpy(np.int64)
        position = frame["seq_len"].to_numpy(np.int64)
        if user.size and (user.max() >= len(counts) or (position > counts[user]).any() or position.min() < 0):
            raise EtarecError(f"{path}: a user_index or seq_len points outside user_info's sequences; re-export the split")
        target = frame["item_index"].to_numpy(np.int64) + SHIFT
        samples[split] = pd.DataFrame({
            "user": (user + 1).astype(np.int32), "position": position.astype(np.int32), "item": target.astype(np.int32),
            "category": item_category[target].astype(np.int32), "timestamp": np.zeros(len(frame), dtype=np.int64),
            "label": frame["label"].to_numpy().astype(np.int8),
        })
    # etarec user 0 is the unknown user: LongCTR user i becomes i + 1, behind an empty sequence
    users = users_table(np.concatenate([[0], counts]), np.arange(-1, len(counts)), flat_items, item_category[flat_items],
                        np.zeros_like(flat_items), np.zeros_like(flat_items), {})
    raw_ids = np.concatenate([["", ""], item_index[1:].astype(str)])
    category_names = ["<pad>", "unknown"] + [str(c - SHIFT) for c in range(FIRST_ITEM_ID, num_categories)]
    return Tables(folder.name, "longctr", users, items_table(raw_ids, item_category, category_names), samples,
                  np.concatenate([[0], counts]), num_categories, [], {})
