"""Taobao UserBehavior CSV (user,item,category,behavior,timestamp; no header) into RawEvents.

Behaviours outside the dataset's published window (2017-11-25 .. 2017-12-03, China time) are
dropped, as the ETA/MIMN papers do; the action is the behaviour type. Behaviours of a user in the
same second (a view and a cart of one item) are simultaneous (schema.SIMULTANEOUS): they keep file
order and are not each other's history.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from etarec.data.files import read_table
from etarec.data.schema import RawEvents
from etarec.errors import EtarecError

COLUMNS = ["user", "item", "category", "behavior", "timestamp"]
BEHAVIOURS = {"pv": 1, "cart": 2, "fav": 3, "buy": 4}
WINDOW = (1511539200, 1512316800)  # [2017-11-25 00:00, 2017-12-04 00:00) UTC+8


def taobao_files(path: Path) -> list[Path]:
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files:
        raise EtarecError(f"{path} holds no .csv file; pass a UserBehavior CSV or a folder of them")
    return files


def read_taobao(path: Path) -> RawEvents:
    frames = [read_table(f, columns=COLUMNS, numeric=("user", "item", "category", "timestamp"),
                         timestamps=("timestamp",), header=None, names=COLUMNS) for f in taobao_files(path)]
    frame = pd.concat(frames, ignore_index=True)
    action = frame["behavior"].map(BEHAVIOURS)
    if action.isna().any():
        row = int(action.isna().to_numpy().nonzero()[0][0])
        raise EtarecError(
            f"{path}: unknown behavior {frame['behavior'].iloc[row]!r} at row {row + 1}; expected one of {sorted(BEHAVIOURS)}"
        )
    frame = frame.assign(action=action)
    frame = frame[(frame["timestamp"] >= WINDOW[0]) & (frame["timestamp"] < WINDOW[1])]
    events = frame[["user", "item", "category", "timestamp", "action"]].drop_duplicates().reset_index(drop=True)
    return RawEvents("taobao", events, protocol="last_behaviour")
