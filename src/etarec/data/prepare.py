"""`etarec prepare`: raw events -> the canonical Parquet dataset described in schema.py."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from etarec.config import DataConfig
from etarec.data.encode import Encoded, encode
from etarec.data.events import read_events
from etarec.data.files import resolve_raw_path
from etarec.data.movielens import read_latest_small, read_ml1m, read_ml100k
from etarec.data.prepared import PreparedData, load_prepared
from etarec.data.protocol import last_behaviour_protocol, rating_protocol
from etarec.data.schema import FORMAT_VERSION, SPLITS, RawEvents
from etarec.data.taobao import read_taobao


def read_raw(data: DataConfig) -> RawEvents:
    path = resolve_raw_path(data.dataset, data.path)
    if data.dataset == "events":
        return read_events(path, data.columns)
    reader = {"ml-latest-small": read_latest_small, "ml-1m": read_ml1m, "ml-100k": read_ml100k,
              "taobao": read_taobao}[data.dataset]
    return reader(path)


def default_prepared_dir(data: DataConfig) -> Path:
    return Path(data.prepared_dir or Path("prepared") / data.dataset)


def data_fingerprint(data: DataConfig) -> dict:
    """What decides the prepared data's content: a prepared dir is reused only when it matches."""
    fields = data.model_dump(mode="json", exclude={"prepared_dir"})
    fields["path"] = str(resolve_raw_path(data.dataset, data.path).resolve())
    return fields


def prepare(data: DataConfig, out: Path | None = None, log=print) -> Path:
    out = Path(out or default_prepared_dir(data))
    if data.dataset == "longctr":
        from etarec.data.longctr import prepare_longctr  # already canonical in shape: its own path

        return prepare_longctr(data, out, log=log)
    raw = read_raw(data)
    encoded = encode(raw)
    protocol = raw.protocol
    if protocol == "rating":
        samples = rating_protocol(encoded.events, data.positive_threshold)
    else:
        samples = last_behaviour_protocol(encoded.events, encoded.item_category, data.seed)
    lengths = np.bincount(encoded.events["user"].to_numpy(), minlength=len(encoded.user_raw_ids))
    meta = build_meta(data, raw.name, protocol, lengths, len(encoded.item_category), len(encoded.category_values),
                      encoded.action_values, encoded.profile_vocab, samples)
    _write_atomically(out, encoded, samples, meta)
    log(summary_line(meta, out))
    return out


def summary_line(meta: dict, out: Path) -> str:
    parts = [f"{name} {s['samples']:,} samples ({100 * s['positive_rate']:.1f}% positive)"
             for name, s in meta["splits"].items()]
    return (f"prepared {meta['dataset']} -> {out}: {meta['num_users'] - 1:,} users, "
            f"{meta['num_items'] - 2:,} items, {meta['num_categories'] - 2:,} categories; " + "; ".join(parts))


def build_meta(data: DataConfig, name: str, protocol: str, sequence_lengths: np.ndarray, num_items: int,
               num_categories: int, action_values: list[float], profile_vocab: dict[str, int],
               samples: dict[str, pd.DataFrame]) -> dict:
    """meta.json: sizes every model and scorer needs, the protocol, and the split statistics."""
    return {
        "format_version": FORMAT_VERSION,
        "dataset": name,
        "protocol": protocol,
        "fingerprint": data_fingerprint(data),
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


def users_table(counts: np.ndarray, raw_ids: np.ndarray, item: np.ndarray, category: np.ndarray,
                timestamp: np.ndarray, action: np.ndarray, profiles: dict[str, np.ndarray]) -> pa.Table:
    """users.parquet from flat, user-ordered behaviour arrays; counts[u] = user u's sequence length."""
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))

    def as_list(values: np.ndarray, dtype) -> pa.ListArray:
        return pa.ListArray.from_arrays(offsets, pa.array(np.asarray(values).astype(dtype)))

    columns = {
        "user": pa.array(np.arange(len(counts), dtype=np.int32)),
        "raw_id": pa.array(np.asarray(raw_ids).astype(str)),
        "item": as_list(item, np.int32),
        "category": as_list(category, np.int32),
        "timestamp": as_list(timestamp, np.int64),
        "action": as_list(action, np.int16),
    }
    for feature, codes in profiles.items():
        columns[f"profile_{feature}"] = pa.array(codes)
    return pa.table(columns)


def items_table(raw_ids: np.ndarray, item_category: np.ndarray, category_names: list[str]) -> pa.Table:
    return pa.table(
        {
            "item": pa.array(np.arange(len(item_category), dtype=np.int32)),
            "raw_id": pa.array(np.asarray(raw_ids).astype(str)),
            "category": pa.array(np.asarray(item_category, dtype=np.int32)),
            "category_name": pa.array([category_names[c] for c in item_category]),
        }
    )


def _write_atomically(out: Path, encoded: Encoded, samples: dict[str, pd.DataFrame], meta: dict) -> None:
    events = encoded.events
    counts = np.bincount(events["user"].to_numpy(), minlength=len(encoded.user_raw_ids))
    users = users_table(counts, encoded.user_raw_ids, events["item"].to_numpy(), events["category"].to_numpy(),
                        events["timestamp"].to_numpy(), events["action"].to_numpy(), encoded.profiles)
    items = items_table(encoded.item_raw_ids, encoded.item_category, encoded.category_values)
    write_dataset(out, users, items, samples, meta)


def write_dataset(out: Path, users: pa.Table, items: pa.Table, samples: dict[str, pd.DataFrame], meta: dict) -> None:
    """Write into a sibling temp folder, then swap it in: a crash never leaves a half-written dataset."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "samples").mkdir(parents=True)
    pq.write_table(users, tmp / "users.parquet")
    pq.write_table(items, tmp / "items.parquet")
    for split in SPLITS:
        pq.write_table(pa.Table.from_pandas(samples[split], preserve_index=False), tmp / "samples" / f"{split}.parquet")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    swap_in(tmp, out)


def swap_in(tmp: Path, out: Path) -> None:
    """Replace folder `out` by the complete folder `tmp`; the old one is removed only afterwards."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def ensure_prepared(data: DataConfig, log=print) -> PreparedData:
    """Load the prepared dataset for `data`, preparing it first when absent or made from other inputs."""
    folder = default_prepared_dir(data)
    meta_file = folder / "meta.json"
    if meta_file.is_file():
        try:
            fingerprint = json.loads(meta_file.read_text()).get("fingerprint")
        except json.JSONDecodeError:
            fingerprint = None
        if fingerprint == data_fingerprint(data):
            return load_prepared(folder)
        log(f"{folder} was prepared from other inputs; preparing again")
    prepare(data, folder, log=log)
    return load_prepared(folder)
