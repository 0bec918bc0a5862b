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


def _read(file: Path, columns: list[str]) -> pa.Table:
    """These columns of a Parquet file. Not pq.read_table: its dataset layer costs ~50 MB of
    resident memory per process on first use (the libraries it loads), more than a share of data."""
    return pq.ParquetFile(file).read(columns=columns)


def _batches(file: Path, name: str):
    """(first user, lengths [rows] int64, values [events]) of one list column, a row group at a time
    (read_row_group holds one group; iter_batches buffers several)."""
    first, reader = 0, pq.ParquetFile(file)
    for group in range(reader.num_row_groups):
        array = reader.read_row_group(group, columns=[name], use_threads=False)[name].combine_chunks()
        offsets = array.offsets.to_numpy()
        yield first, np.diff(offsets).astype(np.int64), array.values.to_numpy()[offsets[0] : offsets[-1]]
        first += len(array)


def _offsets(file: Path, owned: np.ndarray | None) -> np.ndarray:
    """[U + 1] offsets of the kept users' sequences (the others' ranges empty). It decodes the item
    column once more than needed, so that every column can then be written into an array of its
    final size (one pass that also kept the items measured 0.534x instead of 0.503x by share)."""
    lengths = [length for _, length, _ in _batches(file, "item")]
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)
    if owned is not None:
        lengths = np.where(owned, lengths, 0)
    return np.concatenate([[0], np.cumsum(lengths)])


def _flat(file: Path, name: str, offsets: np.ndarray, ids: bool, owned: np.ndarray | None) -> np.ndarray:
    """[E] values of one list column, written row group by row group into their final array, so
    that a load holds only one group's Arrow buffers beside the arrays kept (a whole column of the long
    benchmarks is ~20 row groups, and by share most of it is dropped). ids: int32 where every value
    fits. owned [U]: keep only these users' values."""
    wide = pq.ParquetFile(file).schema_arrow.field(name).type.value_type.bit_width > 32
    values = np.empty(offsets[-1], dtype=np.int64 if wide else np.int32)  # [E]
    for first, length, batch in _batches(file, name):
        if owned is not None:
            batch = batch[np.repeat(owned[first : first + len(length)], length)]
        values[offsets[first] : offsets[first] + len(batch)] = batch
    pa.default_memory_pool().release_unused()
    if ids and wide and (len(values) == 0 or int(values.max()) <= np.iinfo(np.int32).max):
        values = values.astype(np.int32)
    return values


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
        users = _read(users_file, [name for name in pq.read_schema(users_file).names if name.startswith("profile_")])
        owned = None if share is None else np.arange(users.num_rows) % share[1] == share[0]  # [U]
        offsets = _offsets(users_file, owned)
        sequences = Sequences(
            offsets=offsets,
            item=_flat(users_file, "item", offsets, ids=True, owned=owned),
            category=_flat(users_file, "category", offsets, ids=True, owned=owned),
            timestamp=_flat(users_file, "timestamp", offsets, ids=False, owned=owned),
            action=_flat(users_file, "action", offsets, ids=True, owned=owned),
        )
        items = _read(folder / "items.parquet", ["category"])
        splits, shares = {}, {}
        for split in SPLITS:
            splits[split], shares[split] = _samples(folder / "samples" / f"{split}.parquet", owned)
    except (OSError, pa.ArrowInvalid, KeyError) as error:
        raise EtarecError(f"prepared data in {folder} is incomplete or corrupt ({error}); run `etarec prepare` again") from None
    pa.default_memory_pool().release_unused()  # what was read goes back to the system, not to Arrow's pool
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
    """One split (only the owned users' samples when owned [U] is given) and which samples those are.
    Columns are read one at a time and cut to the share before the next is read."""
    user = _read(file, ["user"])["user"].to_numpy().astype(np.int64)
    ids = np.arange(len(user)) if owned is None else np.flatnonzero(owned[user])

    def column(name: str, dtype) -> np.ndarray:
        values = _read(file, [name])[name].to_numpy()
        return (values if owned is None else values[ids]).astype(dtype)

    samples = Samples(
        user=user if owned is None else user[ids],
        position=column("position", np.int64),
        item=column("item", np.int64),
        category=column("category", np.int64),
        timestamp=column("timestamp", np.int64),
        label=column("label", np.float32),
    )
    return samples, SplitShare(ids, len(user))
