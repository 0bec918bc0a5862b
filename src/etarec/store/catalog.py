"""The catalog: raw ids <-> the model's indices, item categories, user profiles, action values.

A request speaks raw ids (a movieId, a Taobao item id); the model speaks the indices that
`etarec prepare` assigned. The checkpoint carries this table (section "catalog") so a served model
needs no prepared dataset. Raw ids are stored as one NUL-separated UTF-8 byte tensor: loading
millions of Python strings through torch's weights_only unpickler would take seconds.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from etarec.config import Config
from etarec.data.prepare import default_prepared_dir
from etarec.data.schema import FIRST_ITEM_ID, UNKNOWN
from etarec.errors import EtarecError
from etarec.nn.embeddings import Vocab

_SEPARATOR = "\x00"


def encode_strings(values: list[str]) -> torch.Tensor:
    """list of str -> [bytes] uint8 tensor (NUL-separated UTF-8)."""
    return torch.frombuffer(bytearray(_SEPARATOR.join(values).encode("utf-8")), dtype=torch.uint8)


def decode_strings(data: torch.Tensor) -> list[str]:
    return bytes(data.numpy()).decode("utf-8").split(_SEPARATOR)


def catalog_payload(prepared: str | Path) -> dict:
    """The checkpoint section "catalog" of a prepared dataset folder (see data/schema.py)."""
    folder = Path(prepared)
    stamp = (folder / "meta.json").stat().st_mtime_ns  # a re-prepared folder is read again
    return _catalog_payload(str(folder), stamp)


@functools.lru_cache(maxsize=1)  # training saves a checkpoint per better epoch: read the tables once
def _catalog_payload(folder: str, _stamp: int) -> dict:
    meta = json.loads((Path(folder) / "meta.json").read_text())
    items = pq.read_table(Path(folder) / "items.parquet", columns=["raw_id", "category"])
    users = pq.read_table(Path(folder) / "users.parquet").drop_columns(["item", "category", "timestamp", "action"])
    profiles = [name for name in users.column_names if name.startswith("profile_")]
    profile_codes = np.stack([users[name].to_numpy().astype(np.int64) for name in profiles], axis=1) \
        if profiles else np.zeros((users.num_rows, 0), dtype=np.int64)
    if any(_SEPARATOR in value for value in items["raw_id"].to_pylist() + users["raw_id"].to_pylist()):
        raise EtarecError(f"raw ids in {folder} contain NUL characters; remove them from the source data")
    return {
        "item_raw_ids": encode_strings(items["raw_id"].to_pylist()),
        "item_category": torch.from_numpy(items["category"].to_numpy().astype(np.int64)),
        "user_raw_ids": encode_strings(users["raw_id"].to_pylist()),
        "user_profiles": torch.from_numpy(profile_codes),
        "action_values": [float(value) for value in meta["action_values"]],
    }


def training_catalog(config: Config, vocab: Vocab) -> dict | None:
    """The catalog of the prepared data a run trains on; None when that folder is absent or holds
    other data than the model's vocabulary says (a model trained on data built in memory)."""
    folder = default_prepared_dir(config.data)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if Vocab.from_meta(meta) != vocab:
            return None
        return catalog_payload(folder)
    except (OSError, ValueError, KeyError):
        return None


def _indices(raw_ids: list[str], first: int) -> dict[str, int]:
    return dict(zip(raw_ids[first:], range(first, len(raw_ids))))


@dataclass
class Lookup:
    index: np.ndarray  # [n] int64 model indices
    unknown: list[str]  # raw ids that are not in the catalog, in request order


class Catalog:
    def __init__(self, payload: dict):
        self.item_category = payload["item_category"].numpy()  # [num_items]
        self.user_profiles = payload["user_profiles"].numpy()  # [num_users, P]
        self.action_values = np.asarray(payload["action_values"], dtype=np.float64)  # sorted, action code - 1
        # raw id -> index; the rows before the first known one (padding, unknown) have raw id ""
        self._items = _indices(decode_strings(payload["item_raw_ids"]), FIRST_ITEM_ID)
        self._users = _indices(decode_strings(payload["user_raw_ids"]), 1)

    @property
    def num_items(self) -> int:
        return len(self.item_category)

    def items(self, raw_ids) -> Lookup:
        """Raw item ids (int or str) -> indices; unknown ids -> the out-of-vocabulary item."""
        position = self._items.get
        index = np.fromiter((position(str(raw), -1) for raw in raw_ids), dtype=np.int64, count=len(raw_ids))
        unknown = np.flatnonzero(index < 0)
        index[unknown] = UNKNOWN
        return Lookup(index, [str(raw_ids[i]) for i in unknown])

    def user(self, raw_id) -> int | None:
        """The index of a raw user id, None when unknown."""
        return self._users.get(str(raw_id))

    def actions(self, values) -> tuple[np.ndarray, list[float]]:
        """Raw action values -> (codes [n], the values the training data never had: code 0, no action)."""
        values = np.asarray(values, dtype=np.float64)
        slot = np.searchsorted(self.action_values, values).clip(max=max(len(self.action_values) - 1, 0))
        known = (self.action_values[slot] == values) if len(self.action_values) else np.zeros(len(values), dtype=bool)
        return np.where(known, slot + 1, 0).astype(np.int64), values[~known].tolist()
