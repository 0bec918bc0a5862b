"""`etarec prepare`: raw events -> the canonical Parquet dataset described in schema.py.

The dataset's reader comes from the registry (datasets.py); events are encoded and put in time
order (encode.py, with its tie rule), turned into samples (protocol.py) and written by writer.py,
which refuses to replace anything that is not a prepared dataset. meta.json records what the
data was made from (fingerprint.py), and `ensure_prepared` prepares again when that changed.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from etarec.config import DataConfig
from etarec.data.datasets import default_prepared_dir, get_dataset, resolve_raw_path
from etarec.data.encode import encode
from etarec.data.files import print_warning
from etarec.data.fingerprint import config_fingerprint, inputs_change, inputs_fingerprint
from etarec.data.prepared import PreparedData, load_prepared
from etarec.data.protocol import last_behaviour_protocol, rating_protocol
from etarec.data.schema import SIMULTANEOUS, RawEvents
from etarec.data.writer import Tables, check_replaceable, items_table, summary_line, users_table, write_dataset

MOST_TIED = 0.5  # warn when more than this share of events shares its user and timestamp with another
FUTURE_SLACK_S = 86_400


def data_fingerprint(data: DataConfig) -> dict:
    """What the prepared data's config was (meta.json "fingerprint"); the raw files are in "inputs"."""
    return config_fingerprint(data, resolve_raw_path(data))


def prepare(data: DataConfig, out: Path | None = None, log=print, warn=print_warning) -> Path:
    """Prepare `data` into folder `out` (default: data.prepared_dir or prepared/<dataset>); `warn`
    gets one line per warning (ties, timestamps in the future or before 1970)."""
    out = Path(out or default_prepared_dir(data))
    dataset = get_dataset(data.dataset)
    check_replaceable(out)  # before reading anything: a folder that is not ours is never replaced
    path = resolve_raw_path(data)
    fingerprint, inputs = config_fingerprint(data, path), inputs_fingerprint(dataset.inputs(path))
    read = dataset.read(path, data)
    tables = read if isinstance(read, Tables) else _tables(read, data, warn)
    meta = tables.meta(fingerprint, inputs)
    write_dataset(out, tables.users, tables.items, tables.samples, meta)
    log(summary_line(meta, out))
    return out


def _tables(raw: RawEvents, data: DataConfig, warn) -> Tables:
    encoded = encode(raw)
    if raw.ties == SIMULTANEOUS and encoded.tied_share > MOST_TIED:
        warn(f"{raw.name}: {100 * encoded.tied_share:.0f}% of events share their user and "
             f"{'order' if 'order' in encoded.events else 'timestamp'} with another event; such simultaneous events "
             "are not each other's history and stay in one split (README, 'Running on other data')")
    if "order" not in encoded.events:
        for line in timestamp_warnings(encoded.events["timestamp"].to_numpy(), raw.name):
            warn(line)
    if raw.protocol == "rating":
        samples = rating_protocol(encoded.events, data.positive_threshold)
    else:
        samples = last_behaviour_protocol(encoded.events, encoded.item_category, data.seed)
    events = encoded.events
    lengths = np.bincount(events["user"].to_numpy(), minlength=len(encoded.user_raw_ids))
    users = users_table(lengths, encoded.user_raw_ids, events["item"].to_numpy(), events["category"].to_numpy(),
                        events["timestamp"].to_numpy(), events["action"].to_numpy(), encoded.profiles)
    items = items_table(encoded.item_raw_ids, encoded.item_category, encoded.category_values)
    return Tables(raw.name, raw.protocol, users, items, samples, lengths, len(encoded.category_values),
                  encoded.action_values, encoded.profile_vocab)


def timestamp_warnings(timestamps: np.ndarray, name: str, now: float | None = None) -> list[str]:
    """One line each for timestamps more than a day in the future and for negative ones (Unix seconds)."""
    now = time.time() if now is None else now
    lines = []
    future = timestamps > now + FUTURE_SLACK_S
    if future.any():
        first = int(timestamps[future][0])
        lines.append(f"{name}: {int(future.sum()):,} events have timestamps more than a day in the future (e.g. {first}); "
                     "timestamps are Unix seconds: divide milliseconds by 1000")
    negative = timestamps < 0
    if negative.any():
        lines.append(f"{name}: {int(negative.sum()):,} events have negative timestamps (e.g. {int(timestamps[negative][0])}, "
                     f"before 1970); timestamps are Unix seconds: check the column")
    return lines


def ensure_prepared(data: DataConfig, log=print, warn=print_warning, share: tuple[int, int] | None = None) -> PreparedData:
    """Load the prepared dataset for `data`, preparing it first when absent or made from other
    inputs: another data config, or raw files that changed since (fingerprint.py).
    share=(rank, size): only that process's share of it (prepared.load_prepared)."""
    return load_prepared(prepared_folder(data, log, warn), share)


def prepared_folder(data: DataConfig, log=print, warn=print_warning) -> Path:
    """The folder of the prepared dataset for `data`, prepared first when absent or stale."""
    folder = default_prepared_dir(data)
    meta_file = folder / "meta.json"
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text())
        except json.JSONDecodeError:
            meta = None
        reason = _stale_reason(meta, data)
        if reason is None:
            return folder
        log(f"{folder} was prepared from other inputs ({reason}); preparing again")
    prepare(data, folder, log=log, warn=warn)
    return folder


def _stale_reason(meta, data: DataConfig) -> str | None:
    if not isinstance(meta, dict):
        return "its meta.json is unreadable"
    if meta.get("fingerprint") != data_fingerprint(data):
        return "another data config or path"
    path = resolve_raw_path(data)
    return inputs_change(meta.get("inputs"), inputs_fingerprint(get_dataset(data.dataset).inputs(path)))
