"""A user's own events file (CSV or Parquet) with a column mapping from the config.

With a label column every event is a sample with that label (split chronologically per user);
without one, the last-behaviour protocol applies (each user's last event is a positive, a random
same-category item a negative). Timestamps are whole Unix seconds; events of a user with the same
timestamp are simultaneous (schema.SIMULTANEOUS, see encode.py). Without a timestamp column, `order`
gives the sequence order and every time gap is 0.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from etarec.config import EventsColumns
from etarec.data.files import read_table
from etarec.data.schema import SIMULTANEOUS, RawEvents
from etarec.errors import EtarecError


def read_events(path: Path, columns: EventsColumns) -> RawEvents:
    if path.is_dir():
        raise EtarecError(f"{path} is a folder; data.path for dataset 'events' must be one CSV or Parquet file")
    if columns.timestamp is None and columns.order is None:
        raise EtarecError("data.columns needs 'timestamp' or 'order' to put each user's events in time order")
    mapping = {"user": columns.user, "item": columns.item}
    for canonical in ("category", "timestamp", "order", "action", "label"):
        source = getattr(columns, canonical)
        if source is not None:
            mapping[canonical] = source
    numeric = tuple(mapping[c] for c in ("timestamp", "order", "action", "label") if c in mapping)
    timestamps = (mapping["timestamp"],) if "timestamp" in mapping else ()
    frame = read_table(path, columns=list(dict.fromkeys(mapping.values())), numeric=numeric, timestamps=timestamps)
    events = pd.DataFrame({canonical: frame[source] for canonical, source in mapping.items()})
    if "timestamp" not in events:
        events["timestamp"] = 0
    if "label" in events and not events["label"].isin([0, 1]).all():
        raise EtarecError(f"{path}: column '{columns.label}' must hold 0/1 labels")
    return RawEvents(path.stem, events, protocol="rating" if "label" in events else "last_behaviour", ties=SIMULTANEOUS)
