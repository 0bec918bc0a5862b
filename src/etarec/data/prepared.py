"""The prepared dataset in memory: per-user sequences as flat arrays with offsets (one copy each).

By share (load_prepared(..., share=(rank, size))): a process keeps only the users u with
u % size == rank, their sequences and the samples of every split that point into them, so the
data part of its memory falls as 1 / size; each split remembers which global samples it holds.
"""
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


@dataclass(frozen=True)
class SplitShare:
    """The samples of a split one process holds (data by share)."""

    ids: np.ndarray  # [n] int64, increasing: the process's sample i is sample ids[i] of the whole split
    total: int  # samples in the whole split


@dataclass
class PreparedData:
    meta: dict
    sequences: Sequences
    profiles: np.ndarray  # [U, P] int64 user profile codes (P may be 0)
    profile_names: list[str]
    item_category: np.ndarray  # [num_items] int64
    splits: dict[str, Samples]
    shares: dict[str, SplitShare] | None = None  # by share: which samples each split holds; None: all

    @property
    def profile_vocab(self) -> list[int]:
        return [self.meta["profile_vocab"][name] for name in self.profile_names]

    def split_size(self, split: str) -> int:
        """Samples in the whole split (more than this process holds when loaded by share)."""
        return self.shares[split].total if self.shares else len(self.splits[split])


def _flat(file: Path, name: str, ids: bool, owned: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(offsets [U + 1], values [E]) of one list column, read alone, so that only one column's
    Arrow buffers are alive beside the arrays kept. ids: int32 where every value fits. owned [U]:
    keep only these users' values (the others' ranges become empty)."""
    array = pq.read_table(file, columns=[name])[name].combine_chunks()
    offsets = array.offsets.to_numpy().astype(np.int64)
    values = array.values.to_numpy()[offsets[0] : offsets[-1]]
    offsets = offsets - offsets[0]
    if owned is not None:
        lengths = np.diff(offsets)
        values = values[np.repeat(owned, lengths)]
        offsets = np.concatenate([[0], np.cumsum(np.where(owned, lengths, 0))])
    fits = ids and (len(values) == 0 or int(values.max()) <= np.iinfo(np.int32).max)
    return offsets, values.astype(np.int32 if fits else np.int64)


def load_prepared(folder: str | Path, share: tuple[int, int] | None = None) -> PreparedData:
    """The prepared dataset in `folder`; share=(rank, size): only that process's share (see above)."""
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
        owned = None if share is None else np.arange(users.num_rows) % share[1] == share[0]  # [U]
        offsets, item = _flat(users_file, "item", ids=True, owned=owned)
        sequences = Sequences(
            offsets=offsets,
            item=item,
            category=_flat(users_file, "category", ids=True, owned=owned)[1],
            timestamp=_flat(users_file, "timestamp", ids=False, owned=owned)[1],
            action=_flat(users_file, "action", ids=True, owned=owned)[1],
        )
        items = pq.read_table(folder / "items.parquet", columns=["category"])
        splits, shares = {}, {}
        for split in SPLITS:
            splits[split], shares[split] = _samples(folder / "samples" / f"{split}.parquet", owned)
    except (OSError, pa.ArrowInvalid, KeyError) as error:
        raise EtarecError(f"prepared data in {folder} is incomplete or corrupt ({error}); run `etarec prepare` again") from None
    if share is not None:  # the whole columns read for the share go back to the system, not to Arrow's pool
        pa.default_memory_pool().release_unused()
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
        shares=None if share is None else shares,
    )


def _samples(file: Path, owned: np.ndarray | None) -> tuple[Samples, SplitShare]:
    """One split (only the owned users' samples when owned [U] is given) and which samples those are."""
    user = pq.read_table(file, columns=["user"])["user"].to_numpy().astype(np.int64)
    ids = np.arange(len(user)) if owned is None else np.flatnonzero(owned[user])
    table = pq.read_table(file, columns=["position", "item", "category", "timestamp", "label"])
    column = lambda name: table[name].to_numpy()[ids] if owned is not None else table[name].to_numpy()  # noqa: E731
    samples = Samples(
        user=user[ids] if owned is not None else user,
        position=column("position").astype(np.int64),
        item=column("item").astype(np.int64),
        category=column("category").astype(np.int64),
        timestamp=column("timestamp").astype(np.int64),
        label=column("label").astype(np.float32),
    )
    return samples, SplitShare(ids, len(user))
