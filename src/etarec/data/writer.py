"""Writing a prepared dataset (schema.py): the one writer behind every prepare path (raw events,
LongCTR, the streamed Taobao prepare).

Safety rules:
* A dataset is built in a temp folder beside its target, `.NAME.tmp-PID-HOST`, and swapped in by
  renames only when complete: a crash leaves the previous dataset (or none), never half of one.
* The target (where a symbolic link at it points) is replaced only when it is absent, an empty
  folder, or recognisably a prepared dataset: a meta.json with the format marker (schema.FORMAT, or an older etarec meta.json) and
  nothing but the files etarec writes. A file, a user's folder, or a dataset with foreign files in
  it is refused with one line: nothing of the user's is ever deleted.
* Temp folders of a prepare that was killed (their PID is not alive on this machine) are removed
  by the next prepare into the same target.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from etarec.data.files import folder_problem
from etarec.data.schema import FORMAT, FORMAT_VERSION, SPLITS, USERS_PER_ROW_GROUP
from etarec.errors import EtarecError

DATASET_FILES = {"meta.json", "users.parquet", "items.parquet", "samples"}
SAMPLE_FILES = {f"{split}.parquet" for split in SPLITS}
CHOOSE = "choose a new or empty folder for the prepared data (--out or data.prepared_dir)"


# ------------------------------------------------------------------------------------------------
# tables and meta
# ------------------------------------------------------------------------------------------------


def users_table(counts: np.ndarray, raw_ids, item: np.ndarray, category: np.ndarray, timestamp: np.ndarray,
                action: np.ndarray, profiles: dict[str, np.ndarray] | None = None, first_user: int = 0) -> pa.Table:
    """users.parquet rows from flat, user-ordered behaviour arrays: counts[u] = the sequence length of
    user first_user + u; raw_ids one per user (an array or a pyarrow string array)."""
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))

    def as_list(values: np.ndarray, dtype) -> pa.ListArray:
        return pa.ListArray.from_arrays(offsets, pa.array(np.asarray(values).astype(dtype)))

    columns = {
        "user": pa.array(np.arange(first_user, first_user + len(counts), dtype=np.int32)),
        "raw_id": raw_ids if isinstance(raw_ids, pa.Array) else pa.array(np.asarray(raw_ids).astype(str)),
        "item": as_list(item, np.int32),
        "category": as_list(category, np.int32),
        "timestamp": as_list(timestamp, np.int64),
        "action": as_list(action, np.int16),
    }
    for feature, codes in (profiles or {}).items():
        columns[f"profile_{feature}"] = pa.array(codes)
    return pa.table(columns)


def items_table(raw_ids, item_category: np.ndarray, category_names) -> pa.Table:
    """items.parquet: one row per item index (raw_ids and category_names: arrays or pyarrow arrays)."""
    item_category = np.asarray(item_category, dtype=np.int32)
    if isinstance(category_names, pa.Array):
        names = category_names.take(pa.array(item_category))
    else:
        names = pa.array([category_names[c] for c in item_category])
    return pa.table({
        "item": pa.array(np.arange(len(item_category), dtype=np.int32)),
        "raw_id": raw_ids if isinstance(raw_ids, pa.Array) else pa.array(np.asarray(raw_ids).astype(str)),
        "category": pa.array(item_category),
        "category_name": names,
    })


def build_meta(name: str, protocol: str, fingerprint: dict, inputs: list[dict], sequence_lengths: np.ndarray,
               num_items: int, num_categories: int, action_values: list[float], profile_vocab: dict[str, int],
               samples: dict[str, pd.DataFrame]) -> dict:
    """meta.json: the format marker, sizes every model and scorer needs, the protocol, the split
    statistics, and what the data was made from (fingerprint.py)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "dataset": name,
        "protocol": protocol,
        "fingerprint": fingerprint,
        "inputs": inputs,
        "num_users": len(sequence_lengths),
        "num_items": num_items,
        "num_categories": num_categories,
        "num_actions": len(action_values) + 1,
        "action_values": action_values,
        "profile_vocab": profile_vocab,
        "num_events": int(sequence_lengths.sum()),
        "max_sequence_length": int(sequence_lengths.max()),
        "splits": {
            split: {"samples": int(len(frame)), "positive_rate": float(frame["label"].mean()) if len(frame) else 0.0}
            for split, frame in samples.items()
        },
    }


@dataclass
class Tables:
    """A whole prepared dataset in memory, before it is written (the in-memory prepare paths)."""

    name: str
    protocol: str
    users: pa.Table
    items: pa.Table
    samples: dict[str, pd.DataFrame]
    sequence_lengths: np.ndarray  # [num_users]
    num_categories: int
    action_values: list[float]
    profile_vocab: dict[str, int]

    def meta(self, fingerprint: dict, inputs: list[dict]) -> dict:
        return build_meta(self.name, self.protocol, fingerprint, inputs, self.sequence_lengths, self.items.num_rows,
                          self.num_categories, self.action_values, self.profile_vocab, self.samples)


def summary_line(meta: dict, out: Path) -> str:
    parts = [f"{name} {s['samples']:,} samples ({100 * s['positive_rate']:.1f}% positive)"
             for name, s in meta["splits"].items()]
    return (f"prepared {meta['dataset']} -> {out}: {meta['num_users'] - 1:,} users, "
            f"{meta['num_items'] - 2:,} items, {meta['num_categories'] - 2:,} categories; " + "; ".join(parts))


# ------------------------------------------------------------------------------------------------
# the target folder
# ------------------------------------------------------------------------------------------------


def replace_problem(out: Path) -> str | None:
    """Why `out` may not be written (replaced) as a prepared dataset, as one line; None when it may."""
    out = _target(out)
    if out.exists() and not out.is_dir():
        return f"{out} is a file, not an etarec prepared dataset; etarec never replaces it: {CHOOSE}"
    problem = folder_problem(out)
    if problem:
        return f"{problem}; {CHOOSE}"
    if not out.exists():
        return None
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return None
    if not _etarec_meta(out / "meta.json"):
        shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
        return (f"{out} exists and is not an etarec prepared dataset (it holds {shown} and no etarec meta.json); "
                f"etarec never replaces such a folder: {CHOOSE}")
    foreign = [name for name in entries if name not in DATASET_FILES]
    samples = out / "samples"
    if samples.is_dir():
        foreign += [f"samples/{p.name}" for p in sorted(samples.iterdir()) if p.name not in SAMPLE_FILES]
    elif samples.exists():
        foreign.append("samples")
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        return (f"{out} is an etarec prepared dataset but also holds files etarec did not write ({shown}); "
                f"move them out, or {CHOOSE}")
    return None


def _target(out: Path) -> Path:
    """The folder to write: a symbolic link at `out` stays, the dataset goes where it points."""
    out = Path(out)
    return out.resolve() if out.is_symlink() else out


def _etarec_meta(path: Path) -> bool:
    """meta.json written by etarec: the format marker, or an older version's keys."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(meta, dict):
        return False
    return meta.get("format") == FORMAT or {"format_version", "fingerprint", "dataset", "splits"} <= meta.keys()


def check_replaceable(out: Path) -> None:
    problem = replace_problem(out)
    if problem:
        raise EtarecError(problem)


_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)(?:-(?P<host>.+))?$")


def _temp_path(out: Path, kind: str) -> Path:
    return out.with_name(f".{out.name}.{kind}-{os.getpid()}-{socket.gethostname()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def clean_stale_temps(out: Path) -> list[Path]:
    """Remove the temp folders that killed prepares into `out` left (`.NAME.tmp-PID[-HOST]`, and
    `.NAME.old-...` of a swap cut short): those of this machine whose PID is not alive. Returns them."""
    out = Path(out)
    removed = []
    if not out.parent.is_dir():
        return removed
    host = socket.gethostname()
    for path in out.parent.iterdir():
        match = _TEMP.match(path.name)
        if not match or match["name"] != out.name or not path.is_dir() or path.is_symlink():
            continue
        if match["host"] not in (None, host):
            continue  # another machine's prepare (a shared folder): its PID means nothing here
        pid = int(match["pid"])
        if pid == os.getpid() or not _alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------


@contextmanager
def building(out: Path):
    """`with building(out) as folder:` write the dataset's files into `folder` (a temp folder beside
    `out`, with samples/ made); on success it replaces `out`, on any error it is removed."""
    out = _target(out)
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(out)
    tmp = _temp_path(out, "tmp")
    (tmp / "samples").mkdir(parents=True)
    try:
        yield tmp
        check_replaceable(out)  # again: the folder may have changed while the data was read
        _swap_in(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_samples(folder: Path, samples: dict[str, pd.DataFrame]) -> None:
    for split in SPLITS:
        pq.write_table(pa.Table.from_pandas(samples[split], preserve_index=False), folder / "samples" / f"{split}.parquet")


def write_meta(folder: Path, meta: dict) -> None:
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))


def write_dataset(out: Path, users: pa.Table, items: pa.Table, samples: dict[str, pd.DataFrame], meta: dict) -> None:
    """Write a whole dataset held in memory to `out` (see building)."""
    with building(out) as folder:
        pq.write_table(users, folder / "users.parquet", row_group_size=USERS_PER_ROW_GROUP)
        pq.write_table(items, folder / "items.parquet")
        write_samples(folder, samples)
        write_meta(folder, meta)


def _swap_in(tmp: Path, out: Path) -> None:
    """Replace folder `out` by the complete folder `tmp`; the old one is removed only afterwards."""
    old = _temp_path(out, "old")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)
