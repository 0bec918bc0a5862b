"""The prepared dataset in memory: per-user sequences as flat arrays with offsets (one copy each)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from etarec.data.schema import FORMAT_VERSION, SPLITS
from etarec.errors import EtarecError


@dataclass
class Samples:
    """One split: sample i's history is the user's sequence[:position[i]]."""

    user: np.ndarray  # [N] int64
    position: np.ndarray  # [N] int64
    item: np.ndarray  # [N] int64
    category: np.ndarray  # [N] int64
    timestamp: np.ndarray  # [N] int64
    label: np.ndarray  # [N] float32

    def __len__(self) -> int:
        return len(self.label)


@dataclass
class Sequences:
    """All users' behaviour sequences concatenated; user u owns flat[offsets[u]:offsets[u+1]]."""

    offsets: np.ndarray  # [U + 1] int64
    item: np.ndarray  # [E] int32 (int64 past 2^31 - 1 ids): half the bytes for every window copied from it
    category: np.ndarray  # [E] int32 (as item)
    timestamp: np.ndarray  # [E] int64
    action: np.ndarray  # [E] int32 (as item)


@dataclass
class PreparedData:
    meta: dict
    sequences: Sequences
    profiles: np.ndarray  # [U, P] int64 user profile codes (P may be 0)
    profile_names: list[str]
    item_category: np.ndarray  # [num_items] int64
    splits: dict[str, Samples]

    @property
    def profile_vocab(self) -> list[int]:
        return [self.meta["profile_vocab"][name] for name in self.profile_names]


def _flat(file: Path, name: str, ids: bool) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [U + 1], values [E]) of one list column, read alone, so that only one column's
    Arrow buffers are alive beside the arrays kept. ids: int32 where every value fits."""
    array = pq.read_table(file, columns=[name])[name].combine_chunks()
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.values.to_numpy()[offsets[0] : offsets[-1]]
    fits = ids and (len(values) == 0 or int(values.max()) <= np.iinfo(np.int32).max)
    return offsets - offsets[0], values.astype(np.int32 if fits else np.int64)


def load_prepared(folder: str | Path) -> PreparedData:
    folder = Path(folder)
    meta_file = folder / "meta.json"
    if not meta_file.is_file():
        raise EtarecError(f"{folder} holds no prepared dataset (no meta.json); run `etarec prepare` first")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError:
        raise EtarecError(f"{meta_file} is corrupt; run `etarec prepare` again") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise EtarecError(f"{folder} was prepared by another etarec version; run `etarec prepare` again")
    try:
        users_file = folder / "users.parquet"
        users = pq.read_table(users_file, columns=[name for name in pq.read_schema(users_file).names
                                                   if name.startswith("profile_")])
        offsets, item = _flat(users_file, "item", ids=True)
        sequences = Sequences(
            offsets=offsets,
            item=item,
            category=_flat(users_file, "category", ids=True)[1],
            timestamp=_flat(users_file, "timestamp", ids=False)[1],
            action=_flat(users_file, "action", ids=True)[1],
        )
        items = pq.read_table(folder / "items.parquet", columns=["category"])
        splits = {split: _samples(pq.read_table(folder / "samples" / f"{split}.parquet")) for split in SPLITS}
    except (OSError, pa.ArrowInvalid, KeyError) as error:
        raise EtarecError(f"prepared data in {folder} is incomplete or corrupt ({error}); run `etarec prepare` again") from None
    profile_names = [name.removeprefix("profile_") for name in users.column_names if name.startswith("profile_")]
    profiles = np.stack(
        [users[f"profile_{name}"].to_numpy().astype(np.int64) for name in profile_names], axis=1
    ) if profile_names else np.zeros((users.num_rows, 0), dtype=np.int64)
    return PreparedData(
        meta=meta,
        sequences=sequences,
        profiles=profiles,
        profile_names=profile_names,
        item_category=items["category"].to_numpy().astype(np.int64),
        splits=splits,
    )


def _samples(table: pa.Table) -> Samples:
    column = lambda name: table[name].to_numpy()  # noqa: E731
    return Samples(
        user=column("user").astype(np.int64),
        position=column("position").astype(np.int64),
        item=column("item").astype(np.int64),
        category=column("category").astype(np.int64),
        timestamp=column("timestamp").astype(np.int64),
        label=column("label").astype(np.float32),
    )
