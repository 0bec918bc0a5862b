"""Out-of-core `etarec prepare --stream` for Taobao UserBehavior CSVs of any size (the full file
has 100 million rows); memory is bounded by the block and bucket sizes, not by the file.

1. read: the CSVs are parsed in blocks of whole lines (pyarrow). Malformed lines (wrong number of
   fields, a non-integer id or timestamp, an unknown behaviour) and behaviours outside the
   published window are counted and dropped; the rest of a block joins a run buffer, which is
   stably sorted by user and spilled to disk once it is large. What the later steps need stays in
   memory as small summaries: each item's first category, each user's row count, the behaviours.
2. merge: users are cut into ranges of about `bucket_rows` rows; for each range the matching slice
   of every run is read back, exact duplicates are dropped (the first copy stays), the rows are put
   in (user, timestamp) order, file order between ties (encode.py's SIMULTANEOUS rule), and
   appended to users.parquet. Each user's last behaviour is kept for the samples, with its history
   length (the behaviours before its second: simultaneous ones are not history).
3. samples: the last-behaviour protocol (protocol.py) on those last behaviours.

Ids are encoded as encode.py does (sorted raw ids; categories sorted as text; an item keeps the
category of its first row), so the result equals the in-memory path (taobao.py + encode.py) on the
same file. At the end, rows read must equal rows kept + rows dropped, by reason.

Memory: a few times block_bytes, plus run_rows and bucket_rows rows (~33 bytes each, a few
copies), plus ~16 bytes per distinct user and item: peak 0.7 GB for 10 million rows, 0.8 GB for 30
million with the defaults. Disk: the runs take ~33 bytes per row beside the output until the end.
"""
from __future__ import annotations

import io
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from tqdm import tqdm

from etarec.config import DataConfig
from etarec.data.datasets import default_prepared_dir, resolve_raw_path
from etarec.data.encode import tie_groups
from etarec.data.files import print_warning
from etarec.data.fingerprint import config_fingerprint, inputs_fingerprint
from etarec.data.prepare import MOST_TIED
from etarec.data.protocol import last_behaviour_protocol
from etarec.data.schema import FIRST_ITEM_ID, USERS_PER_ROW_GROUP
from etarec.data.taobao import BEHAVIOURS, COLUMNS, WINDOW, taobao_files
from etarec.data.writer import build_meta, building, items_table, summary_line, users_table, write_meta, write_samples
from etarec.errors import EtarecError

NUMERIC = ("user", "item", "category", "timestamp")
# the spilled columns and their on-disk types
SPILLED = {"user": np.int64, "item": np.int64, "category": np.int64, "timestamp": np.int64, "action": np.int8}
BEHAVIOUR_NAMES = pa.array([name.encode() for name in sorted(BEHAVIOURS, key=BEHAVIOURS.get)])  # index + 1 = code
INTEGER = r"^-?[0-9]{1,18}$"  # fits int64


@dataclass
class RowCounts:
    """The row-count check: read == kept + sum(dropped)."""

    read: int = 0
    kept: int = 0
    dropped: dict = field(default_factory=lambda: {"malformed": 0, "out_of_window": 0, "duplicate": 0})

    def check(self) -> None:
        if self.read != self.kept + sum(self.dropped.values()):
            raise EtarecError(f"row count check failed: {self.read:,} rows read but {self.kept:,} kept + "
                              f"{sum(self.dropped.values()):,} dropped ({self.dropped}); please report this as a bug")

    def line(self) -> str:
        reasons = ", ".join(f"{reason.replace('_', ' ')} {n:,}" for reason, n in self.dropped.items())
        return f"rows: {self.read:,} read = {self.kept:,} kept + {sum(self.dropped.values()):,} dropped ({reasons})"


# ------------------------------------------------------------------------------------------------
# 1. read
# ------------------------------------------------------------------------------------------------


def _line_blocks(path: Path, block_bytes: int, bar: tqdm):
    """The file's bytes in blocks that end at a line end (a block never splits a line)."""
    with open(path, "rb") as handle:
        rest = b""
        while chunk := handle.read(block_bytes):
            bar.update(len(chunk))
            chunk = rest + chunk
            cut = chunk.rfind(b"\n") + 1
            rest, chunk = chunk[cut:], chunk[:cut]
            if chunk:
                yield chunk
        if rest:
            yield rest


def _read_block(block: bytes, numeric_type: pa.DataType) -> tuple[pa.Table, int]:
    """(table, lines with the wrong number of fields, which pyarrow skips)."""
    wrong_width = [0]

    def skip(_row) -> str:
        wrong_width[0] += 1
        return "skip"

    table = pcsv.read_csv(
        io.BytesIO(block),
        read_options=pcsv.ReadOptions(column_names=COLUMNS),
        # no quoting in this format: a stray quote makes one malformed field, not a multi-line value
        parse_options=pcsv.ParseOptions(quote_char=False, invalid_row_handler=skip),
        # bytes, not text: a line that is not UTF-8 is one malformed line, not an error
        convert_options=pcsv.ConvertOptions(column_types={**{c: numeric_type for c in NUMERIC}, "behavior": pa.binary()}),
    )
    return table, wrong_width[0]


def _parse(block: bytes, counts: RowCounts) -> dict[str, np.ndarray]:
    """The well-formed, in-window rows of a block, in file order; counts every line."""
    try:
        table, wrong_width = _read_block(block, pa.int64())
        well_formed = [pc.is_valid(table[c]) for c in NUMERIC]  # an empty field is null
        numeric = {c: pc.fill_null(table[c], 0) for c in NUMERIC}
    except pa.ArrowInvalid:
        # a non-integer somewhere in the block: read it as bytes and check each field
        table, wrong_width = _read_block(block, pa.binary())
        well_formed = [pc.match_substring_regex(table[c], INTEGER) for c in NUMERIC]
        zero = pa.scalar(b"0", pa.binary())
        numeric = {c: pc.cast(pc.if_else(ok, table[c], zero), pa.int64()) for c, ok in zip(NUMERIC, well_formed)}
    action = pc.index_in(table["behavior"], value_set=BEHAVIOUR_NAMES)  # null: unknown behaviour
    valid = np.logical_and.reduce([np.asarray(ok) for ok in [*well_formed, pc.is_valid(action)]])
    counts.read += table.num_rows + wrong_width
    counts.dropped["malformed"] += wrong_width + int((~valid).sum())
    rows = {c: np.asarray(values)[valid] for c, values in numeric.items()}
    rows["action"] = (np.asarray(pc.fill_null(action, 0))[valid] + 1).astype(np.int8)
    inside = (rows["timestamp"] >= WINDOW[0]) & (rows["timestamp"] < WINDOW[1])
    counts.dropped["out_of_window"] += int((~inside).sum())
    return {c: values[inside] for c, values in rows.items()}


def _first_wins(keys: np.ndarray, values: np.ndarray, new_keys: np.ndarray, new_values: np.ndarray):
    """Sorted union of two unique key sets; a key in both keeps its value from the first."""
    merged, first = np.unique(np.concatenate([keys, new_keys]), return_index=True)  # first occurrences
    return merged, np.concatenate([values, new_values])[first]


def _summed(keys: np.ndarray, values: np.ndarray, new_keys: np.ndarray, new_values: np.ndarray):
    """Sorted union of two unique key sets; a key in both gets the sum of its values."""
    merged, inverse = np.unique(np.concatenate([keys, new_keys]), return_inverse=True)
    weights = np.concatenate([values, new_values])
    return merged, np.bincount(inverse, weights=weights, minlength=len(merged)).astype(np.int64)


class _Summaries:
    """What the merge needs from the whole file, in memory: O(users + items), not O(rows)."""

    def __init__(self):
        self.items = np.zeros(0, np.int64)  # sorted raw item ids
        self.item_category = np.zeros(0, np.int64)  # raw category of each item's first row
        self.users = np.zeros(0, np.int64)  # sorted raw user ids
        self.user_rows = np.zeros(0, np.int64)  # rows per user (duplicates included)
        self.actions: set[int] = set()

    def add(self, rows: dict[str, np.ndarray]) -> None:
        items, first = np.unique(rows["item"], return_index=True)
        self.items, self.item_category = _first_wins(self.items, self.item_category, items, rows["category"][first])
        users, n = np.unique(rows["user"], return_counts=True)
        self.users, self.user_rows = _summed(self.users, self.user_rows, users, n)
        self.actions.update(np.unique(rows["action"]).tolist())


class _Runs:
    """Row buffers spilled to disk as runs sorted by user (stably: file order within a user)."""

    def __init__(self, folder: Path, run_rows: int):
        self.folder, self.run_rows = folder, run_rows
        self.buffer: list[dict[str, np.ndarray]] = []
        self.buffered = 0
        self.count = 0  # runs written
        folder.mkdir(parents=True)

    def add(self, rows: dict[str, np.ndarray]) -> None:
        self.buffer.append(rows)
        self.buffered += len(rows["user"])
        if self.buffered >= self.run_rows:
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        columns = {c: np.concatenate([rows[c] for rows in self.buffer]) for c in SPILLED}
        order = np.argsort(columns["user"], kind="stable")
        for name, dtype in SPILLED.items():
            columns[name][order].astype(dtype, copy=False).tofile(self.folder / f"{self.count}.{name}")
        self.count += 1
        self.buffer, self.buffered = [], 0

    def bounds(self, cuts: np.ndarray) -> np.ndarray:
        """[runs, len(cuts)] row offsets of the user ids `cuts` in each run."""
        return np.stack([np.searchsorted(np.fromfile(self.folder / f"{run}.user", np.int64), cuts)
                         for run in range(self.count)])

    def read(self, starts: np.ndarray, stops: np.ndarray) -> dict[str, np.ndarray]:
        """Rows starts[r]:stops[r] of every run r, runs in file order."""
        columns = {}
        for name, dtype in SPILLED.items():
            size = np.dtype(dtype).itemsize
            columns[name] = np.concatenate([
                np.fromfile(self.folder / f"{run}.{name}", dtype, count=int(stop - start), offset=int(start) * size)
                for run, (start, stop) in enumerate(zip(starts, stops))])
        return columns


# ------------------------------------------------------------------------------------------------
# 2. merge
# ------------------------------------------------------------------------------------------------


@dataclass
class _Codes:
    """Raw id -> dense index, as encode.py assigns them."""

    users: np.ndarray  # sorted raw user ids; code = position + 1
    items: np.ndarray  # sorted raw item ids; code = position + FIRST_ITEM_ID
    item_category: np.ndarray  # [num_items] int32 category code of each item code
    category_values: list[str]
    action_code: np.ndarray  # raw action (1..4) -> code
    action_values: list[float]

    @classmethod
    def from_summaries(cls, seen: _Summaries) -> "_Codes":
        # categories are factorized as text in encode.py, so their codes follow the text order;
        # only the few distinct categories are turned into text
        categories, of_item = np.unique(seen.item_category, return_inverse=True)
        raw_categories = categories.astype(str)
        text_rank = np.empty(len(categories), np.int64)
        text_rank[np.argsort(raw_categories)] = np.arange(len(categories))
        raw_categories = np.sort(raw_categories)
        item_category = np.concatenate([[0, 1], text_rank[of_item] + FIRST_ITEM_ID]).astype(np.int32)
        actions = sorted(seen.actions)
        action_code = np.zeros(max(BEHAVIOURS.values()) + 1, np.int64)
        action_code[actions] = np.arange(1, len(actions) + 1)
        return cls(seen.users, seen.items, item_category, ["<pad>", "unknown"] + raw_categories.tolist(),
                   action_code, [float(a) for a in actions])


def _deduplicated_in_order(rows: dict[str, np.ndarray], counts: RowCounts) -> dict[str, np.ndarray]:
    """Exact duplicates dropped (the first copy in file order stays), then sorted by (user,
    timestamp) with file order between ties: what drop_duplicates + encode.py's stable sort give."""
    keys = [rows[c] for c in ("action", "category", "item", "timestamp", "user")]
    order = np.lexsort(keys)  # stable: copies of a row stay in file order
    same = np.ones(len(order) - 1, dtype=bool) if len(order) else np.zeros(0, dtype=bool)
    for key in keys:
        same &= key[order[1:]] == key[order[:-1]]
    keep = np.ones(len(order), dtype=bool)
    keep[order[1:][same]] = False
    counts.dropped["duplicate"] += int(same.sum())
    rows = {c: values[keep] for c, values in rows.items()}
    order = np.lexsort((rows["timestamp"], rows["user"]))  # stable: ties keep file order
    return {c: values[order] for c, values in rows.items()}


def _users_table(first_user: int, raw_ids: pa.Array, lengths: np.ndarray, rows: dict[str, np.ndarray]) -> pa.Table:
    """users.parquet rows of the users first_user.. with `lengths` behaviours each, `rows` in order."""
    return users_table(lengths, raw_ids, rows["item"], rows["category"], rows["timestamp"], rows["action"],
                       first_user=first_user)


def _merge(runs: _Runs, seen: _Summaries, codes: _Codes, users_file: Path, bucket_rows: int,
           counts: RowCounts, progress: bool) -> tuple[pd.DataFrame, np.ndarray, int]:
    """Write users.parquet bucket by bucket; return each user's last behaviour, the sequence
    lengths and the number of behaviours that share their user and timestamp with another."""
    # a bucket: the users whose first row falls in the same multiple of bucket_rows
    first_row = np.cumsum(seen.user_rows) - seen.user_rows
    cuts = np.concatenate([[0], np.flatnonzero(np.diff(first_row // bucket_rows)) + 1, [len(seen.users)]])
    bounds = runs.bounds(np.append(seen.users, np.iinfo(np.int64).max)[cuts])  # [runs, buckets + 1]
    no_rows = {c: np.zeros(0, np.int64) for c in SPILLED}
    unknown_user = _users_table(0, pa.array([""]), np.zeros(1, np.int64), no_rows)  # user 0 has no behaviours
    last, lengths, tied = [], [np.zeros(1, np.int64)], 0
    with pq.ParquetWriter(users_file, unknown_user.schema) as writer:
        writer.write_table(unknown_user)
        for bucket in tqdm(range(len(cuts) - 1), desc="merge", unit="bucket",
                           disable=None if progress else True, leave=False):
            rows = _deduplicated_in_order(runs.read(bounds[:, bucket], bounds[:, bucket + 1]), counts)
            item = np.searchsorted(codes.items, rows["item"]) + FIRST_ITEM_ID
            rows = {"user": np.searchsorted(codes.users, rows["user"]) + 1, "item": item,
                    "category": codes.item_category[item],  # the item's category, as encode.py does
                    "timestamp": rows["timestamp"], "action": codes.action_code[rows["action"]]}
            user = np.arange(cuts[bucket], cuts[bucket + 1]) + 1  # every user here has rows
            n = np.bincount(rows["user"] - user[0], minlength=len(user))
            raw_ids = pc.cast(pa.array(codes.users[user - 1]), pa.string())
            writer.write_table(_users_table(int(user[0]), raw_ids, n, rows), row_group_size=USERS_PER_ROW_GROUP)
            ends = np.cumsum(n) - 1
            position = np.arange(len(rows["user"])) - np.repeat(ends - n + 1, n)
            history, _, is_tied = tie_groups(rows["user"], rows["timestamp"], position)
            last.append(pd.DataFrame({"user": user, "position": n - 1, "history": history[ends], "item": rows["item"][ends],
                                      "category": rows["category"][ends], "timestamp": rows["timestamp"][ends]}))
            lengths.append(n)
            tied += int(is_tied.sum())
            counts.kept += len(rows["user"])
    return pd.concat(last, ignore_index=True), np.concatenate(lengths), tied


# ------------------------------------------------------------------------------------------------
# 3. samples, items, meta; the whole command
# ------------------------------------------------------------------------------------------------


def _items_table(codes: _Codes) -> pa.Table:
    raw_ids = pa.concat_arrays([pa.array(["", ""]), pc.cast(pa.array(codes.items), pa.string())])
    return items_table(raw_ids, codes.item_category, pa.array(codes.category_values))


def prepare_taobao_stream(data: DataConfig, out: Path | None = None, log=print, progress: bool = True,
                          block_bytes: int = 16 << 20, run_rows: int = 4_000_000, bucket_rows: int = 2_000_000,
                          warn=print_warning) -> Path:
    """Prepare a Taobao UserBehavior file or folder into `out` with bounded memory; the output
    equals prepare.prepare()'s. The folder is built beside `out` and swapped in when complete
    (writer.building: a folder that is not a prepared dataset is refused before anything is read)."""
    if data.dataset != "taobao":
        raise EtarecError(f"--stream prepares Taobao UserBehavior CSVs only, not '{data.dataset}'; drop --stream")
    path = resolve_raw_path(data)
    files = taobao_files(path)
    out = Path(out or default_prepared_dir(data))
    fingerprint, inputs = config_fingerprint(data, path), inputs_fingerprint(files)
    # progress bars only on a terminal (disable=None), so logs and captured output stay clean
    with building(out) as tmp:
        counts, seen, runs = RowCounts(), _Summaries(), _Runs(tmp / "runs", run_rows)
        with tqdm(total=sum(f.stat().st_size for f in files), unit="B", unit_scale=True, desc="read",
                  disable=None if progress else True, leave=False) as bar:
            for file in files:
                for block in _line_blocks(file, block_bytes, bar):
                    rows = _parse(block, counts)
                    seen.add(rows)
                    runs.add(rows)
        runs.flush()
        if not len(seen.users):
            raise EtarecError(f"{data.path or files[0].parent}: no well-formed behaviour inside the window "
                              f"({counts.line()}); check the files")
        codes = _Codes.from_summaries(seen)
        last, lengths, tied = _merge(runs, seen, codes, tmp / "users.parquet", bucket_rows, counts, progress)
        shutil.rmtree(runs.folder)
        counts.check()
        if tied > MOST_TIED * counts.kept:
            warn(f"taobao: {100 * tied / counts.kept:.0f}% of events share their user and timestamp with another "
                 "event; such simultaneous events are not each other's history (README, 'Running on other data')")
        samples = last_behaviour_protocol(last, codes.item_category, data.seed)
        pq.write_table(_items_table(codes), tmp / "items.parquet")
        write_samples(tmp, samples)
        meta = build_meta("taobao", "last_behaviour", fingerprint, inputs, lengths, len(codes.item_category),
                          len(codes.category_values), codes.action_values, {}, samples)
        meta["rows"] = {"read": counts.read, "kept": counts.kept, "dropped": counts.dropped}
        write_meta(tmp, meta)
    log(summary_line(meta, out))
    log(counts.line())
    return out
