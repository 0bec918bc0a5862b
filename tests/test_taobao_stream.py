"""Out-of-core Taobao prepare: the streamed, spilled and merged dataset equals the in-memory
reader's, row for row, and every line read is accounted for (kept, or dropped with a reason)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow.parquet as pq

from etarec.cli import main
from etarec.config import DataConfig
from etarec.data.prepare import prepare
from etarec.data.schema import SPLITS
from etarec.data.taobao import WINDOW
from etarec.data.taobao_stream import prepare_taobao_stream
from test_data import shared_dataset

TABLES = ["users.parquet", "items.parquet", *[f"samples/{split}.parquet" for split in SPLITS]]
# small enough that the slices make many blocks, runs and buckets: the out-of-core path at work
SMALL = {"block_bytes": 4096, "run_rows": 1000, "bucket_rows": 300}
QUIET = {"log": lambda *_: None}


def slices() -> Path:
    return shared_dataset("taobao-userbehavior-samples")  # skips when the shared data is absent


def assert_same_dataset(streamed: Path, in_memory: Path, same_source: bool = True) -> dict:
    """Every table equal; meta equal but for the streamed row counts (and the source path and input
    files when the two were made from different files). Returns the row counts."""
    for table in TABLES:
        expected, got = pq.read_table(in_memory / table), pq.read_table(streamed / table)
        assert got.schema.equals(expected.schema), table
        assert got.equals(expected), table
    expected, got = (json.loads((folder / "meta.json").read_text()) for folder in (in_memory, streamed))
    rows = got.pop("rows")
    if not same_source:
        for meta in (expected, got):
            meta.pop("fingerprint"), meta.pop("inputs")
    assert got == expected
    return rows


def python_counts(paths) -> tuple[int, int]:
    """(rows, rows outside the window) of well-formed CSV files, in plain Python."""
    rows = outside = 0
    for path in paths:
        with open(path, newline="") as handle:
            for *_, timestamp in csv.reader(handle):
                rows += 1
                outside += not WINDOW[0] <= int(timestamp) < WINDOW[1]
    return rows, outside


def test_streamed_equals_in_memory_on_the_real_slices(tmp_path):
    raw = slices()
    data = DataConfig(dataset="taobao", path=str(raw))
    in_memory = prepare(data, tmp_path / "in_memory", **QUIET)
    streamed = prepare_taobao_stream(data, tmp_path / "streamed", progress=False, **QUIET, **SMALL)
    rows = assert_same_dataset(streamed, in_memory)
    read, outside = python_counts(sorted(raw.glob("*.csv")))
    assert rows == {"read": read, "kept": read - outside,
                    "dropped": {"malformed": 0, "out_of_window": outside, "duplicate": 0}}
    assert not list(tmp_path.glob(".*")), "temp or spill files were left behind"


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_malformed_lines_duplicates_and_ties_are_counted(tmp_path):
    inside = WINDOW[0] + 1000
    real = (slices() / "UserBehavior_head4321.csv").read_text().splitlines()[:1500]
    clean = real + [
        # ties on (user, timestamp, item) with other behaviours keep their file order
        f"7,100,5,pv,{inside}", f"7,100,5,cart,{inside}", f"7,101,5,pv,{inside - 1}",
        # an exact duplicate, two lines after its first copy
        f"7,100,5,pv,{inside}",
        # item 102 is alone in category 9; user 8 has one behaviour in the window
        f"8,102,9,buy,{inside}", f"8,102,9,buy,{WINDOW[1] + 5}", f"9,102,9,fav,{inside + 7}", f"9,100,5,pv,{inside + 8}",
    ]
    malformed = ["user_id,item_id,category_id,behavior_type,timestamp", "7,100,5,pv", "7,100,5,pv,1511600000,x",
                 "abc,100,5,pv,1511600000", "7,,5,pv,1511600000", "7,100,5,pv,1.5e9", "7,100,5,like,1511600000",
                 "7,100,5,,1511600000"]
    dirty = clean[:700] + malformed[:4] + clean[700:] + malformed[4:]
    clean_dir, dirty_dir = tmp_path / "clean", tmp_path / "dirty"
    clean_dir.mkdir(), dirty_dir.mkdir()
    # two files each, read in name order
    write_lines(clean_dir / "a.csv", clean[:1000]), write_lines(clean_dir / "b.csv", clean[1000:])
    write_lines(dirty_dir / "a.csv", dirty[:1004]), write_lines(dirty_dir / "b.csv", dirty[1004:])

    in_memory = prepare(DataConfig(dataset="taobao", path=str(clean_dir)), tmp_path / "in_memory", **QUIET)
    streamed = prepare_taobao_stream(DataConfig(dataset="taobao", path=str(dirty_dir)), tmp_path / "streamed",
                                     progress=False, **QUIET, **SMALL)
    rows = assert_same_dataset(streamed, in_memory, same_source=False)
    _, outside = python_counts([clean_dir / "a.csv", clean_dir / "b.csv"])
    assert rows["read"] == len(dirty)
    assert rows["dropped"] == {"malformed": len(malformed), "out_of_window": outside, "duplicate": 1}
    assert rows["read"] == rows["kept"] + sum(rows["dropped"].values())


def test_cli_stream_prints_the_row_count_check(tmp_path, capsys):
    out = tmp_path / "prepared"
    assert main(["prepare", "--dataset", "taobao", "--path", str(slices()), "--out", str(out), "--stream"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith(f"prepared taobao -> {out}: 157 users")
    assert lines[1] == ("rows: 14,321 read = 14,316 kept + 5 dropped (malformed 0, out of window 5, duplicate 0)")


def test_stream_refuses_other_datasets_and_files_without_usable_rows(tmp_path, capsys):
    assert main(["prepare", "--dataset", "ml-latest-small", "--stream", "--out", str(tmp_path / "x")]) == 1
    assert "Taobao UserBehavior CSVs only" in capsys.readouterr().err
    path = write_lines(tmp_path / "UserBehavior.csv", ["1,2,3,like,1511600000", f"1,2,3,pv,{WINDOW[0] - 1}"])
    assert main(["prepare", "--dataset", "taobao", "--path", str(path), "--stream", "--out", str(tmp_path / "y")]) == 1
    line = capsys.readouterr().err.strip()
    assert line.count("\n") == 0 and "no well-formed behaviour inside the window" in line
    assert "malformed 1, out of window 1" in line
    assert not (tmp_path / "y").exists() and not list(tmp_path.glob(".y*"))
    # bytes that are not UTF-8 and a stray quote are malformed lines like any other
    (tmp_path / "odd.csv").write_bytes(b'1,2,3,p\xe9,1511600000\n1,"2,3,pv,1511600001\n'
                                       b'1,2,3,pv,1511600002\n1,4,3,pv,1511600003\n5,2,3,pv,1511600004\n')
    out = prepare_taobao_stream(DataConfig(dataset="taobao", path=str(tmp_path / "odd.csv")), tmp_path / "z",
                                progress=False, **QUIET)
    assert json.loads((out / "meta.json").read_text())["rows"] == {
        "read": 5, "kept": 3, "dropped": {"malformed": 2, "out_of_window": 0, "duplicate": 0}}
