"""Issue 16, the data and command-line parts: nothing of the user's is deleted, stale or silently
corrupted. Each test gives the bad input, checks the exact outcome (refused with one line naming
the problem and the fix, or handled as the README documents), that nothing of the user's was
deleted or changed, and that the next valid command succeeds.

Items: 1 data loss at --out / data.prepared_dir, 2 stale prepared data, 3 fractional and huge
timestamps, 4 ties and units, 7 tracebacks instead of one line, 10 stale temp folders, finished
runs, odd timestamps, delimiters.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import yaml

from etarec.config import DataConfig, EventsColumns, load_config
from etarec.data import fingerprint
from etarec.data.batch import BatchBuilder
from etarec.data.prepare import ensure_prepared, prepare
from etarec.data.prepared import load_prepared
from etarec.data.schema import SPLITS
from etarec.errors import EtarecError
from runs import REPO, tiny_raw, write_config

QUIET = {"log": lambda *_: None}
EVENTS_HEADER = "user,item,category,timestamp,label"


def etarec(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """The real command line in a fresh process."""
    return subprocess.run([sys.executable, "-m", "etarec", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONFAULTHANDLER": "1"})


def refused(result: subprocess.CompletedProcess, *words: str) -> str:
    """A non-zero exit whose stderr is exactly one line, no traceback, holding every word."""
    err = result.stderr
    assert result.returncode != 0, f"expected a refusal, got exit 0 (stdout {result.stdout!r})"
    assert err.endswith("\n") and err.count("\n") == 1, f"stderr is not one line: {err!r}"
    assert "Traceback" not in err
    for word in words:
        assert word.lower() in err.lower(), f"{word!r} not in {err!r}"
    return err.strip()


def succeeded(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"exit {result.returncode}:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def warnings_of(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("etarec: warning: ")]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` (hidden ones included) -> its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_events(path: Path, rows, header: str = EVENTS_HEADER) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + "\n" + "".join(",".join(map(str, row)) + "\n" for row in rows))
    return path


def events_rows(users: int, per_user: int = 8, seed: int = 0, start: int = 1_500_000_000) -> list[tuple]:
    """Distinct timestamps per user (no ties), items repeating across users."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(users):
        for k in range(per_user):
            item = int(rng.integers(1, 60))
            rows.append((f"u{user}", item, f"c{item % 5}", start + 3600 * k + user, int(rng.integers(0, 2))))
    return rows


def events_config(path: Path, **columns) -> DataConfig:
    return DataConfig(dataset="events", path=str(path), columns=EventsColumns(category="category", label="label", **columns))


def events_args(path: Path) -> list[str]:
    """--set overrides that point a training config at an events file with labels."""
    return ["--set", "data.dataset=events", "--set", f"data.path={path}", "--set", "data.columns.category=category",
            "--set", "data.columns.label=label"]


TINY = ["--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=2", "--set", "model.long_len=16",
        "--set", "model.short_len=4", "--set", "model.top_k=4", "--set", "model.hash_bits=16",
        "--set", "model.embedding_dim=8", "--set", "model.mlp=[16]", "--set", "train.threads=1", "--no-progress"]
ETA_CONFIG = REPO / "configs" / "quickstart_eta.yaml"


# ----------------------------------------------------------------------------------------------
# 1. data loss: --out / data.prepared_dir on something that is not a prepared dataset
# ----------------------------------------------------------------------------------------------


def test_prepare_out_on_a_users_folder_is_refused_and_nothing_is_deleted(tmp_path):
    folder = tmp_path / "my_project"
    events = write_events(folder / "events.csv", events_rows(6))
    (folder / "notes.txt").write_text("my notes")
    (folder / "sub").mkdir()
    (folder / "sub" / "more.csv").write_text("1,2,3\n")
    before = snapshot(folder)
    line = refused(etarec("prepare", "--dataset", "events", "--path", events, "--out", folder),
                   str(folder), "not an etarec prepared dataset", "never replaces", "choose a new or empty folder")
    assert "events.csv" in line and "notes.txt" in line  # says what is in there
    assert snapshot(folder) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_project"]  # no temp or .old- folders beside it
    # the next valid command: a new folder inside it
    succeeded(etarec("prepare", "--dataset", "events", "--path", events, "--out", folder / "prepared"))
    assert load_prepared(folder / "prepared").meta["num_users"] == 7
    assert all(snapshot(folder)[name] == data for name, data in before.items())


def test_prepare_out_on_an_existing_file_is_refused_and_the_file_kept(tmp_path):
    events = write_events(tmp_path / "events.csv", events_rows(4))
    before = events.read_bytes()
    refused(etarec("prepare", "--dataset", "events", "--path", events, "--out", events),
            str(events), "is a file, not an etarec prepared dataset", "choose a new or empty folder")
    assert events.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.csv"]  # no hidden .events.csv.old-PID
    succeeded(etarec("prepare", "--dataset", "events", "--path", events, "--out", tmp_path / "prepared"))


def test_train_with_prepared_dir_on_a_users_folder_is_refused(tmp_path):
    events = write_events(tmp_path / "raw" / "events.csv", events_rows(6))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("chapter 1")
    before = snapshot(mine)
    args = ["train", "--config", ETA_CONFIG, *events_args(events), *TINY]
    refused(etarec(*args, "--set", f"data.prepared_dir={mine}", "--out", tmp_path / "run"),
            str(mine), "not an etarec prepared dataset", "data.prepared_dir")
    assert snapshot(mine) == before
    succeeded(etarec(*args, "--set", f"data.prepared_dir={tmp_path / 'prepared'}", "--out", tmp_path / "run2"))
    assert (tmp_path / "run2" / "metrics.json").is_file()


def test_only_an_empty_folder_or_a_prepared_dataset_is_replaced(tmp_path):
    events = write_events(tmp_path / "events.csv", events_rows(5))
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare(events_config(events), empty, **QUIET)  # an empty folder is free to use
    assert load_prepared(empty).meta["num_users"] == 6
    # a dataset an older etarec wrote (no format marker yet) is recognised and replaced
    meta = json.loads((empty / "meta.json").read_text())
    meta.pop("format"), meta.pop("inputs")
    (empty / "meta.json").write_text(json.dumps(meta))
    write_events(events, events_rows(3))
    prepare(events_config(events), empty, **QUIET)
    assert load_prepared(empty).meta["num_users"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "events.csv"]
    # through a symbolic link: the link stays, the dataset it points at is replaced
    link = tmp_path / "link"
    link.symlink_to(empty)
    write_events(events, events_rows(2))
    prepare(events_config(events), link, **QUIET)
    assert link.is_symlink() and load_prepared(empty).meta["num_users"] == 3
    link.unlink()
    # a folder with a meta.json of someone else's is not a prepared dataset
    other = tmp_path / "other"
    other.mkdir()
    (other / "meta.json").write_text('{"author": "me"}')
    with pytest.raises(EtarecError, match="not an etarec prepared dataset"):
        prepare(events_config(events), other, **QUIET)
    assert (other / "meta.json").read_text() == '{"author": "me"}'


# ----------------------------------------------------------------------------------------------
# 2. stale data: the raw file changed at the same path
# ----------------------------------------------------------------------------------------------


def test_train_prepares_again_when_the_events_file_changed(tmp_path):
    events = write_events(tmp_path / "events.csv", events_rows(31))
    prepared = tmp_path / "prepared"
    args = ["train", "--config", ETA_CONFIG, *events_args(events), "--set", f"data.prepared_dir={prepared}", *TINY]
    succeeded(etarec(*args, "--out", tmp_path / "run1"))
    assert json.loads((prepared / "meta.json").read_text())["num_users"] == 32  # 31 users + unknown
    write_events(events, events_rows(4, seed=1))  # same path, other content
    second = succeeded(etarec(*args, "--out", tmp_path / "run2"))
    assert f"{prepared} was prepared from other inputs ({events.resolve()} changed" in second.stdout
    meta = json.loads((prepared / "meta.json").read_text())
    assert meta["num_users"] == 5 and meta["num_events"] == 4 * 8
    assert meta["inputs"][0]["sha256"] == fingerprint.file_fingerprint(events)["sha256"]
    # unchanged inputs: the prepared data is reused, not made again
    overrides = [pair for flag, pair in zip(args[3::2], args[4::2]) if flag == "--set"]
    logged = []
    assert ensure_prepared(load_config(ETA_CONFIG, overrides).data, log=logged.append).meta == meta
    assert logged == []


def test_a_change_of_the_same_size_and_mtime_is_caught_by_the_hash(tmp_path):
    rows = events_rows(5)
    events = write_events(tmp_path / "events.csv", rows)
    config = events_config(events).model_copy(update={"prepared_dir": str(tmp_path / "prepared")})
    logged = []
    first = ensure_prepared(config, log=logged.append)
    assert len(logged) == 1 and logged[0].startswith("prepared events")
    stat = events.stat()
    text = events.read_text()
    changed = text.replace(",c1,", ",c9,", 1)  # one category renamed: same size
    assert changed != text and len(changed) == len(text)
    events.write_text(changed)
    os.utime(events, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime
    assert events.stat().st_size == stat.st_size and events.stat().st_mtime_ns == stat.st_mtime_ns
    logged.clear()
    second = ensure_prepared(config, log=logged.append)
    assert logged[0] == f"{tmp_path / 'prepared'} was prepared from other inputs ({events.resolve()} changed (its content differs)); preparing again"
    categories = pq.read_table(tmp_path / "prepared" / "items.parquet")["category_name"].to_pylist()
    assert "c9" in categories and "c9" not in first.meta["fingerprint"]  # the new content was read
    assert second.meta["inputs"][0]["sha256"] != first.meta["inputs"][0]["sha256"]
    # a touch alone (same bytes) keeps the prepared data: small files are compared by content
    events.touch()
    logged.clear()
    ensure_prepared(config, log=logged.append)
    assert logged == []


def test_a_large_file_is_fingerprinted_by_size_ends_and_mtime(tmp_path, monkeypatch):
    monkeypatch.setattr(fingerprint, "FULL_HASH_BYTES", 1000)
    monkeypatch.setattr(fingerprint, "END_BYTES", 100)
    path = tmp_path / "big.bin"
    path.write_bytes(bytes(range(256)) * 10)
    before = fingerprint.inputs_fingerprint([path])
    assert before[0]["hashed"] == "ends" and fingerprint.inputs_change(before, before) is None
    data = bytearray(path.read_bytes())
    data[1280] ^= 1  # the middle: outside both ends, so only the new mtime tells
    path.write_bytes(bytes(data))
    os.utime(path, ns=(before[0]["mtime_ns"] + 10**9, before[0]["mtime_ns"] + 10**9))
    assert fingerprint.inputs_change(before, fingerprint.inputs_fingerprint([path])) == f"{path.resolve()} changed (modified since)"
    data[5] ^= 1  # an end: the hash differs
    path.write_bytes(bytes(data))
    assert "its content differs" in fingerprint.inputs_change(before, fingerprint.inputs_fingerprint([path]))


# ----------------------------------------------------------------------------------------------
# 3. timestamps: never truncated, never wrapped
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value,words", [
    ("1500000000.5", ["fractional value", "1500000000.5"]),
    ("99999999999999999999", ["beyond the 64-bit integer range"]),
    ("9223372036854775808", ["beyond the 64-bit integer range"]),  # int64 max + 1
    ("1e30", ["beyond the 64-bit integer range"]),
], ids=["fractional", "huge", "int64-max+1", "float-huge"])
def test_timestamps_that_are_not_whole_int64_seconds_are_refused(tmp_path, value, words):
    path = tmp_path / "events.csv"
    path.write_text(f"uid,iid,ts,lbl\n1,10,1500000000,1\n1,11,{value},0\n1,12,1500000100,1\n")
    config = write_config(tmp_path / "c.yaml", {"data": {"dataset": "events", "path": str(path), "columns": {
        "user": "uid", "item": "iid", "timestamp": "ts", "label": "lbl"}}})
    before = path.read_bytes()
    refused(etarec("prepare", "--config", config, "--out", tmp_path / "out"),
            str(path), "column 'ts'", "data row 2", "whole unix seconds", *words)
    assert not (tmp_path / "out").exists() and path.read_bytes() == before
    # the fix the line names: whole seconds
    path.write_text("uid,iid,ts,lbl\n1,10,1500000000,1\n1,11,1500000050,0\n1,12,1500000100,1\n")
    succeeded(etarec("prepare", "--config", config, "--out", tmp_path / "out"))


def test_whole_seconds_in_a_float_column_are_kept_exactly(tmp_path):
    frame = pd.DataFrame({"user": [1, 1, 1], "item": [10, 11, 12], "timestamp": [1.5e9, 1.5e9 + 7, -(2.0**62)],
                          "label": [1, 0, 1], "category": ["a", "a", "b"]})
    frame.to_parquet(tmp_path / "events.parquet")
    out = prepare(events_config(tmp_path / "events.parquet"), tmp_path / "out", **QUIET, warn=lambda *_: None)
    assert sorted(load_prepared(out).sequences.timestamp.tolist()) == [-(2**62), 1_500_000_000, 1_500_000_007]
    frame["timestamp"] = [1.5e9, 1.5e9 + 0.25, 1.5e9 + 1]
    frame.to_parquet(tmp_path / "events.parquet")
    with pytest.raises(EtarecError, match=r"column 'timestamp' has a fractional value \(1500000000.25\) at data row 2"):
        prepare(events_config(tmp_path / "events.parquet"), tmp_path / "out", **QUIET)


# ----------------------------------------------------------------------------------------------
# 4. ties and units
# ----------------------------------------------------------------------------------------------


def reference_samples(rows: list[tuple]) -> dict[tuple[str, int, int], list[int]]:
    """Pure Python: (user, timestamp, item) -> the items of its history: the user's events at
    earlier timestamps, in timestamp order and file order within a timestamp."""
    samples = {}
    for user, item, _category, ts, _label in rows:
        earlier = [(t, i) for u, i, _, t, _ in rows if u == user and t < ts]
        samples[(user, ts, item)] = [i for _, i in sorted(earlier, key=lambda e: e[0])]
    return samples


def basket_rows(seed: int = 3) -> list[tuple]:
    """Basket data: every item of an order shares the order's second; items listed in no order."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(12):
        for order in range(int(rng.integers(1, 14))):
            ts = 1_600_000_000 + 86_400 * order + user
            for item in rng.choice(np.arange(2, 80), size=int(rng.integers(1, 6)), replace=False):
                rows.append((f"u{user}", int(item), f"c{item % 7}", ts, int(rng.integers(0, 2))))
    return [rows[i] for i in rng.permutation(len(rows))]  # file order: users and items shuffled


def test_ties_keep_file_order_are_not_history_and_stay_in_one_split(tmp_path):
    rows = basket_rows()
    events = write_events(tmp_path / "events.csv", rows)
    succeeded(etarec("prepare", "--dataset", "events", "--path", events, "--out", tmp_path / "out"))
    data = load_prepared(tmp_path / "out")
    users = pq.read_table(tmp_path / "out" / "users.parquet").to_pandas()
    item_raw = pq.read_table(tmp_path / "out" / "items.parquet")["raw_id"].to_pylist()
    # without a label mapping: the last-behaviour protocol; with one (below): every event a sample
    assert data.meta["protocol"] == "last_behaviour"
    for user, sequence in zip(users["raw_id"][1:], users["item"][1:]):
        in_file_order = [item for u, item, _, _, _ in sorted((r for r in rows if r[0] == user), key=lambda r: r[3])]
        assert [int(item_raw[i]) for i in sequence] == in_file_order, user  # ties in file order, not by item id

    out = prepare(events_config(events), tmp_path / "labelled", **QUIET, warn=lambda *_: None)
    data = load_prepared(out)
    raw_user = pq.read_table(out / "users.parquet")["raw_id"].to_pylist()
    item_raw = pq.read_table(out / "items.parquet")["raw_id"].to_pylist()
    reference = reference_samples(rows)
    split_of_basket: dict[tuple[str, int], set] = {}
    builder = BatchBuilder(data, long_len=80, short_len=4)
    checked = 0
    for split in SPLITS:
        samples = data.splits[split]
        batch = builder.build(samples, np.arange(len(samples)))
        for b in range(len(samples)):
            key = (raw_user[samples.user[b]], int(samples.timestamp[b]), int(item_raw[samples.item[b]]))
            history = [int(item_raw[i]) for i, real in zip(batch.history_items[b].tolist(), batch.history_mask[b].tolist()) if real]
            assert history == reference[key], key
            assert (batch.history_time_gaps[b][batch.history_mask[b]] > 0).all()  # nothing simultaneous
            split_of_basket.setdefault(key[:2], set()).add(split)
            checked += 1
    assert checked == len(rows)
    assert all(len(splits) == 1 for splits in split_of_basket.values()), "a basket was cut by the split"
    # the split counts baskets: of G baskets, the last max(1, round(0.1 G)) are test, as many before valid
    for user in {r[0] for r in rows}:
        times = sorted({r[3] for r in rows if r[0] == user})
        held = max(1, round(0.1 * len(times)))
        test = set(times[-held:])
        valid = set(times[-2 * held:-held]) if len(times) > held else set()
        for ts in times:
            want = "test" if ts in test else "valid" if ts in valid else "train"
            assert split_of_basket[(user, ts)] == {want}, (user, ts)


def test_mostly_tied_events_get_one_warning_line(tmp_path):
    tied = write_events(tmp_path / "tied.csv", basket_rows())
    result = succeeded(etarec("prepare", "--dataset", "events", "--path", tied, "--out", tmp_path / "a"))
    lines = warnings_of(result)
    assert len(lines) == 1 and "of events share their user and timestamp with another event" in lines[0]
    assert "not each other's history" in lines[0]
    untied = write_events(tmp_path / "untied.csv", events_rows(5))
    assert warnings_of(succeeded(etarec("prepare", "--dataset", "events", "--path", untied, "--out", tmp_path / "b"))) == []


def test_use_time_without_real_timestamps_warns(tmp_path):
    rows = [(user, item, cat, index, label) for index, (user, item, cat, _, label) in enumerate(events_rows(6))]
    events = write_events(tmp_path / "events.csv", rows, header="user,item,category,step,label")
    args = ["train", "--config", ETA_CONFIG, *events_args(events), "--set", "data.columns.timestamp=null",
            "--set", "data.columns.order=step", "--set", f"data.prepared_dir={tmp_path / 'p'}", *TINY]
    result = succeeded(etarec(*args, "--out", tmp_path / "run"))  # quickstart_eta has use_time: true
    lines = warnings_of(result)
    assert len(lines) == 1 and "model.use_time is on" in lines[0] and "data.columns.timestamp is not mapped" in lines[0]
    assert "model.use_time=false" in lines[0]
    assert (load_prepared(tmp_path / "p").sequences.timestamp == 0).all()
    # with the warning's fix there is nothing to warn about
    assert warnings_of(succeeded(etarec(*args, "--set", "model.use_time=false", "--out", tmp_path / "run2"))) == []


def test_movielens_keeps_its_documented_protocol(tmp_path):
    """README: a user's ratings in (timestamp, item) order, same-second ratings are each other's
    history; the committed numbers depend on it."""
    data = ensure_prepared(DataConfig(dataset="ml-latest-small", prepared_dir=str(tmp_path / "p")), **QUIET)
    seq = data.sequences
    ties_as_history = 0
    for user in range(1, len(seq.offsets) - 1):
        ts = seq.timestamp[seq.offsets[user]:seq.offsets[user + 1]]
        items = seq.item[seq.offsets[user]:seq.offsets[user + 1]]
        assert (np.diff(ts) >= 0).all()
        same = np.diff(ts) == 0
        assert (np.diff(items)[same] > 0).all(), "ties not in item order"
    for split in SPLITS:
        samples = data.splits[split]
        previous = seq.timestamp[seq.offsets[samples.user] + samples.position - 1]
        ties_as_history += int(((samples.position > 0) & (previous == samples.timestamp)).sum())
    assert ties_as_history > 1000  # same-second ratings are in each other's history, as documented


# ----------------------------------------------------------------------------------------------
# 7. one line, not a traceback
# ----------------------------------------------------------------------------------------------


def test_out_paths_that_cannot_be_folders_or_files_are_one_line(tmp_path):
    file = tmp_path / "a_file.txt"
    file.write_text("keep me")
    folder = tmp_path / "a_folder"
    folder.mkdir()
    (folder / "x").write_text("keep me too")
    train = ["train", "--config", ETA_CONFIG, "--no-progress"]
    refused(etarec(*train, "--out", file), str(file), "is a file, not a folder", "pass a folder")
    refused(etarec(*train, "--out", file / "sub"), str(file / "sub"), f"lies under {file}", "which is a file")
    refused(etarec("prepare", "--out", file / "sub"), str(file / "sub"), f"lies under {file}", "choose a new or empty folder")
    refused(etarec("export", "--checkpoint", tmp_path / "no-run", "--out", folder), str(folder), "is a folder",
            f"--out {folder / 'model.onnx'}")
    refused(etarec("export", "--checkpoint", tmp_path / "no-run", "--out", file / "model.onnx"),
            f"cannot write --out {file / 'model.onnx'}: {file} is a file, not a folder")
    assert file.read_text() == "keep me" and snapshot(folder) == {"x": b"keep me too"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file.txt", "a_folder"]
    # the next valid command
    succeeded(etarec("prepare", "--out", tmp_path / "prepared"))


# ----------------------------------------------------------------------------------------------
# 10. stale temp folders, finished runs, odd timestamps, delimiters
# ----------------------------------------------------------------------------------------------


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_temp_folders_of_a_killed_prepare_are_cleaned_by_the_next(tmp_path):
    events = write_events(tmp_path / "events.csv", events_rows(4))
    out = tmp_path / "prepared"
    host = socket.gethostname()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        names = {
            "stale_legacy": f".prepared.tmp-{dead_pid()}",  # the name before this change
            "stale": f".prepared.tmp-{dead_pid()}-{host}",
            "stale_swap": f".prepared.old-{dead_pid()}-{host}",
            "running": f".prepared.tmp-{live.pid}-{host}",  # a prepare still at work: kept
            "other_machine": f".prepared.tmp-{dead_pid()}-some-other-host",  # its PID means nothing here: kept
            "other_target": f".elsewhere.tmp-{dead_pid()}-{host}",  # another target's: kept
        }
        for name in names.values():
            (tmp_path / name / "samples").mkdir(parents=True)
            (tmp_path / name / "users.parquet").write_bytes(b"x" * 1000)
        succeeded(etarec("prepare", "--dataset", "events", "--path", events, "--out", out))
        left = {p.name for p in tmp_path.iterdir()}
        assert left == {"events.csv", "prepared", names["running"], names["other_machine"], names["other_target"]}
        assert load_prepared(out).meta["num_users"] == 5
    finally:
        live.kill()
        live.wait()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("finished")
    config = write_config(root / "tiny.yaml", tiny_raw(root / "prepared", epochs=1, max_steps_per_epoch=2))
    succeeded(etarec("train", "--config", config, "--out", root / "run", "--no-progress"))
    return config, root / "run"


def test_train_out_on_a_finished_run_needs_overwrite(finished_run, tmp_path):
    config, run = finished_run
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.yaml", "model.pt", "metrics.json"):
        (out / name).write_bytes((run / name).read_bytes())
    before = snapshot(out)
    refused(etarec("train", "--config", config, "--out", out, "--no-progress"),
            str(out), "finished run (metrics.json)", "--overwrite", "new folder")
    assert snapshot(out) == before
    refused(etarec("train", "--resume", out, "--overwrite"), "drop --config/--set/--out/--overwrite")
    result = succeeded(etarec("train", "--config", config, "--out", out, "--overwrite", "--no-progress",
                              "--set", "train.seed=5"))
    assert "test auc" in result.stdout
    assert json.loads(before["metrics.json"])["config"]["train"]["seed"] == 11
    assert json.loads((out / "metrics.json").read_text())["config"]["train"]["seed"] == 5  # the new run's
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["seed"] == 5


def test_train_out_on_an_unfinished_run_points_at_resume(finished_run, tmp_path):
    config, run = finished_run
    out = tmp_path / "run"
    out.mkdir()
    for name in ("config.yaml", "state.pt"):
        (out / name).write_bytes((run / name).read_bytes())
    before = snapshot(out)
    refused(etarec("train", "--config", config, "--out", out, "--no-progress"),
            "unfinished run (state.pt)", f"--resume {out}", "--overwrite")
    assert snapshot(out) == before


def test_future_and_negative_timestamps_get_one_warning_line_each(tmp_path):
    rows = events_rows(4)
    rows[0] = (*rows[0][:3], 4_102_444_800, rows[0][4])  # 2100-01-01
    rows[1] = (*rows[1][:3], 1_700_000_000_000, rows[1][4])  # milliseconds
    rows[2] = (*rows[2][:3], -86_400, rows[2][4])
    events = write_events(tmp_path / "events.csv", rows)
    result = succeeded(etarec("prepare", "--dataset", "events", "--path", events, "--out", tmp_path / "out"))
    lines = warnings_of(result)
    assert len(lines) == 2, lines
    assert "2 events have timestamps more than a day in the future" in lines[0] and "divide milliseconds by 1000" in lines[0]
    assert "1 events have negative timestamps (e.g. -86400, before 1970)" in lines[1] and "unix seconds" in lines[1].lower()
    # handled as documented: kept exactly, in time order
    assert sorted(load_prepared(tmp_path / "out").sequences.timestamp.tolist())[:1] == [-86_400]
    assert warnings_of(succeeded(etarec("prepare", "--dataset", "events", "--path",
                                        write_events(tmp_path / "fine.csv", events_rows(4)), "--out", tmp_path / "b"))) == []


@pytest.mark.parametrize("delimiter,name", [(";", "semicolon"), ("\t", "tab")])
def test_a_file_with_another_delimiter_gets_a_hint(tmp_path, delimiter, name):
    path = tmp_path / "events.csv"
    lines = [["user", "item", "timestamp"], ["1", "10", "1500000000"], ["1", "11", "1500000060"]]
    path.write_text("".join(delimiter.join(line) + "\n" for line in lines))
    refused(etarec("prepare", "--dataset", "events", "--path", path, "--out", tmp_path / "out"),
            str(path), f"looks {name}-delimited", "save it with commas")
    taobao = tmp_path / "UserBehavior.csv"
    taobao.write_text(delimiter.join(["1", "2268318", "2520377", "pv", "1511544070"]) + "\n")
    refused(etarec("prepare", "--dataset", "taobao", "--path", taobao, "--out", tmp_path / "out"),
            f"looks {name}-delimited")
    path.write_text(path.read_text().replace(delimiter, ","))
    succeeded(etarec("prepare", "--dataset", "events", "--path", path, "--out", tmp_path / "out"))
