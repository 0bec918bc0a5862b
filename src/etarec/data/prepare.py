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
    raw = read_raw(data)
    encoded = encode(raw)
    protocol = raw.protocol
    if protocol == "rating":
        samples = rating_protocol(encoded.events, data.positive_threshold)
    else:
        samples = last_behaviour_protocol(encoded.events, encoded.item_category, data.seed)
    meta = _meta(data, raw.name, protocol, encoded, samples)
    _write_atomically(out, encoded, samples, meta)
    log(summary_line(meta, out))
    return out


def summary_line(meta: dict, out: Path) -> str:
    parts = [f"{name} {s['samples']:,} samples ({100 * s['positive_rate']:.1f}% positive)"
             for name, s in meta["splits"].items()]
    return (f"prepared {meta['dataset']} -> {out}: {meta['num_users'] - 1:,} users, "
            f"{meta['num_items'] - 2:,} items, {meta['num_categories'] - 2:,} categories; " + "; ".join(parts))


def _meta(data: DataConfig, name: str, protocol: str, encoded: Encoded, samples: dict) -> dict:
    lengths = np.bincount(encoded.events["user"].to_numpy())
    return {
        "format_version": FORMAT_VERSION,
        "dataset": name,
        "protocol": protocol,
        "fingerprint": data_fingerprint(data),
        "num_users": len(encoded.user_raw_ids),
        "num_items": len(encoded.item_category),
        "num_categories": len(encoded.category_values),
        "num_actions": len(encoded.action_values) + 1,
        "action_values": encoded.action_values,
        "profile_vocab": encoded.profile_vocab,
        "num_events": int(len(encoded.events)),
        "max_sequence_length": int(lengths.max()),
        "splits": {
            split: {"samples": int(len(frame)), "positive_rate": float(frame["label"].mean()) if len(frame) else 0.0}
            for split, frame in samples.items()
        },
    }


def _users_table(encoded: Encoded) -> pa.Table:
    events = encoded.events
    counts = np.bincount(events["user"].to_numpy(), minlength=len(encoded.user_raw_ids))
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))

    def as_list(values: np.ndarray, dtype) -> pa.ListArray:
        return pa.ListArray.from_arrays(offsets, pa.array(values.astype(dtype)))

    columns = {
        "user": pa.array(np.arange(len(counts), dtype=np.int32)),
        "raw_id": pa.array(encoded.user_raw_ids.astype(str)),
        "item": as_list(events["item"].to_numpy(), np.int32),
        "category": as_list(events["category"].to_numpy(), np.int32),
        "timestamp": as_list(events["timestamp"].to_numpy(), np.int64),
        "action": as_list(events["action"].to_numpy(), np.int16),
    }
    for feature, codes in encoded.profiles.items():
        columns[f"profile_{feature}"] = pa.array(codes)
    return pa.table(columns)


def _write_atomically(out: Path, encoded: Encoded, samples: dict[str, pd.DataFrame], meta: dict) -> None:
    """Write into a sibling temp folder, then swap it in: a crash never leaves a half-written dataset."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "samples").mkdir(parents=True)
    pq.write_table(_users_table(encoded), tmp / "users.parquet")
    items = pa.table(
        {
            "item": pa.array(np.arange(len(encoded.item_category), dtype=np.int32)),
            "raw_id": pa.array(encoded.item_raw_ids.astype(str)),
            "category": pa.array(encoded.item_category),
            "category_name": pa.array([encoded.category_values[c] for c in encoded.item_category]),
        }
    )
    pq.write_table(items, tmp / "items.parquet")
    for split in SPLITS:
        pq.write_table(pa.Table.from_pandas(samples[split], preserve_index=False), tmp / "samples" / f"{split}.parquet")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
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
