"""The data pipeline: readers, encoding, the two protocols, the prepared Parquet layout, batches."""
from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import shared_dataset
from etarec.cli import main
from etarec.config import DataConfig, EventsColumns
from etarec.data.batch import BatchBuilder
from etarec.data.encode import encode
from etarec.data.prepare import prepare
from etarec.data.prepared import load_prepared
from etarec.data.protocol import SAMPLE_COLUMNS, rating_protocol
from etarec.data.schema import ITEM_ORDER, SIMULTANEOUS, SPLITS, RawEvents
from etarec.data.taobao import WINDOW
from etarec.errors import EtarecError

REPO = Path(__file__).resolve().parents[1]
BUNDLED_SMALL = REPO / "data" / "ml-latest-small"


def make_events(seed: int = 7) -> pd.DataFrame:
    """Raw events of users with 1, 2, 3, 5, 15, 25 and 35 events, timestamp ties, shuffled row order.

    (user, timestamp, item) is unique, items repeat across time, an item always has one category.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for user, n in [("u1", 1), ("u2", 2), ("u5", 5), ("u15", 15), ("u25", 25), ("u35", 35)]:
        pairs = set()
        while len(pairs) < n:
            # few distinct timestamps -> many ties; few items -> repeats at other times
            pairs.add((int(1000 + 10 * rng.integers(0, max(2, n // 2))), int(rng.integers(2, 40))))
        for ts, item in pairs:
            rows.append((user, item, f"c{item % 4}", ts, int(rng.integers(0, 2))))
    # a hand-made tie: (10, 7) and (10, 3) share a timestamp, listed in the "wrong" order
    rows += [("tie", 7, "c3", 10, 1), ("tie", 3, "c3", 10, 0), ("tie", 9, "c1", 5, 1)]
    frame = pd.DataFrame(rows, columns=["user", "item", "category", "timestamp", "label"])
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def reference_sequences(frame: pd.DataFrame, ties: str = ITEM_ORDER) -> dict[str, list[tuple[int, int, int]]]:
    """Slow pure-Python reference: raw user -> [(timestamp, item, label)] in (timestamp, item) order
    (ITEM_ORDER, the MovieLens protocol) or in timestamp order with ties in file order (SIMULTANEOUS)."""
    by_user: dict[str, list] = defaultdict(list)
    for user, item, ts, label in zip(frame["user"], frame["item"], frame["timestamp"], frame["label"]):
        by_user[str(user)].append((int(ts), int(item), int(label)))
    if ties == ITEM_ORDER:
        return {user: sorted(events) for user, events in by_user.items()}
    return {user: sorted(events, key=lambda event: event[0]) for user, events in by_user.items()}  # stable


# ----------------------------------------------------------------------------------------------
# MovieLens (rating) protocol on constructed events
# ----------------------------------------------------------------------------------------------


def test_rating_protocol_split_rule_and_time_order():
    """The documented MovieLens protocol (ties=ITEM_ORDER): (timestamp, item) order, split by events."""
    frame = make_events()
    encoded = encode(RawEvents("constructed", frame, ties=ITEM_ORDER))
    splits = rating_protocol(encoded.events, threshold=4.0)
    user_raw = encoded.user_raw_ids
    item_raw = encoded.item_raw_ids

    counts = {split: defaultdict(int) for split in SPLITS}
    for split, table in splits.items():
        assert list(table.columns) == SAMPLE_COLUMNS
        for user in table["user"]:
            counts[split][str(user_raw[user])] += 1
    # n -> (train, valid, test); round() halves to even: round(1.5)=2, round(2.5)=2, round(3.5)=4,
    # round(0.5)=0 -> at least 1
    expected = {"u1": (0, 0, 1), "u2": (0, 1, 1), "tie": (1, 1, 1), "u5": (3, 1, 1),
                "u15": (11, 2, 2), "u25": (21, 2, 2), "u35": (27, 4, 4)}
    for user, (n_train, n_valid, n_test) in expected.items():
        got = (counts["train"][user], counts["valid"][user], counts["test"][user])
        assert got == (n_train, n_valid, n_test), f"user {user}: train/valid/test {got}"

    # every event is exactly one sample; the split is by (timestamp, item) order per user
    reference = reference_sequences(frame)
    seen = set()
    for split, table in splits.items():
        for row in table.itertuples(index=False):
            user = str(user_raw[row.user])
            events = reference[user]
            n = len(events)
            ts_item_label = (int(row.timestamp), int(item_raw[row.item]), int(row.label))
            assert events[row.position] == ts_item_label  # position = rank in (timestamp, item) order
            n_test = max(1, round(0.1 * n))
            rank_from_end = n - 1 - row.position
            want = "test" if rank_from_end < n_test else "valid" if rank_from_end < 2 * n_test else "train"
            assert split == want, (user, row.position, n)
            seen.add((user, row.position))
    assert len(seen) == len(frame)

    # the hand-made tie: input order (10,7), (10,3), (5,9) -> time order (5,9), (10,3), (10,7)
    tie = encoded.user_raw_ids.tolist().index("tie")
    picked = {split: [(int(r.timestamp), int(item_raw[r.item]), int(r.position))
                      for r in table[table["user"] == tie].itertuples()] for split, table in splits.items()}
    assert picked == {"train": [(5, 9, 0)], "valid": [(10, 3, 1)], "test": [(10, 7, 2)]}


def test_rating_protocol_labels_from_rating_threshold():
    frame = pd.DataFrame({"user": [1, 1, 1, 1], "item": [10, 11, 12, 13], "timestamp": [1, 2, 3, 4],
                          "action": [3.5, 4.0, 5.0, 1.0]})
    splits = rating_protocol(encode(RawEvents("r", frame, ties=ITEM_ORDER)).events, threshold=4.0)
    labels = pd.concat([splits[s] for s in SPLITS]).sort_values("position")["label"].tolist()
    assert labels == [0, 1, 1, 0]


# ----------------------------------------------------------------------------------------------
# the split leaks no future event: prepared data -> BatchBuilder vs a slow reference
# ----------------------------------------------------------------------------------------------


def prepare_events(frame: pd.DataFrame, folder: Path, out: Path, **columns) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "events.csv"
    frame.to_csv(path, index=False)
    mapping = EventsColumns(category="category", label="label", **columns)
    prepare(DataConfig(dataset="events", path=str(path), columns=mapping), out, log=lambda *_: None)
    return out


@pytest.mark.parametrize("long_len,short_len", [(6, 2), (40, 40)])
def test_batches_leak_no_future_event(tmp_path, long_len, short_len):
    frame = make_events()
    out = prepare_events(frame, tmp_path / "raw", tmp_path / "prepared")
    data = load_prepared(out)
    user_raw = pq.read_table(out / "users.parquet", columns=["raw_id"])["raw_id"].to_pylist()
    items = pq.read_table(out / "items.parquet").to_pandas()
    item_raw = items["raw_id"].tolist()
    reference = reference_sequences(frame, SIMULTANEOUS)  # own events: ties keep file order
    seq = data.sequences

    checked = 0
    builder = BatchBuilder(data, long_len=long_len, short_len=short_len)
    for split in SPLITS:
        samples = data.splits[split]
        # straight from the flat sequences: every history event is earlier than the request (a
        # simultaneous one is not history), and every earlier event of the user is in it
        for u, p, t in zip(samples.user, samples.position, samples.timestamp):
            history_ts = seq.timestamp[seq.offsets[u] : seq.offsets[u] + p]
            assert (history_ts < t).all()
            assert (seq.timestamp[seq.offsets[u] + p : seq.offsets[u + 1]] >= t).all()
        index = 0  # batches are in sample order when not shuffled
        for batch in builder.batches(samples, batch_size=7):
            assert batch.history_items.shape[1] == long_len
            assert batch.user_profile.shape == (len(batch), 0)
            for b in range(len(batch)):
                user = user_raw[int(batch.user[b])]
                request = int(samples.timestamp[index])
                target_item = int(item_raw[int(batch.target_item[b])])
                events = reference[user]
                j = [(ts, item) for ts, item, _ in events].index((request, target_item))
                assert float(batch.labels[b]) == events[j][2]
                earlier = [event for event in events if event[0] < request]  # in file order within a second
                assert int(samples.position[index]) == len(earlier)
                history = earlier[-long_len:]  # the last L events strictly before its timestamp
                pad = long_len - len(history)

                assert batch.history_mask[b].tolist() == [False] * pad + [True] * len(history)  # left padding
                for tensor in (batch.history_items, batch.history_categories, batch.history_actions,
                               batch.history_time_gaps):
                    assert tensor[b, :pad].eq(0).all()
                got_items = [int(item_raw[i]) for i in batch.history_items[b, pad:].tolist()]
                assert got_items == [item for _, item, _ in history]
                gaps = batch.history_time_gaps[b, pad:].tolist()
                assert gaps == [request - ts for ts, _, _ in history]
                assert all(ts < request for ts, _, _ in history)
                assert 0 not in gaps  # neither the target event nor a simultaneous one is its own history
                # categories follow the items
                categories = items["category"].to_numpy()
                assert batch.history_categories[b, pad:].tolist() == categories[batch.history_items[b, pad:].numpy()].tolist()
                assert int(batch.target_category[b]) == categories[int(batch.target_item[b])]
                # the short window is the last S columns of the long one
                assert batch.short(batch.history_items)[b].tolist() == batch.history_items[b, long_len - short_len :].tolist()
                index += 1
        assert index == len(samples)
        checked += index
    assert checked == len(frame)  # every event was checked once as a sample


# ----------------------------------------------------------------------------------------------
# real MovieLens copies
# ----------------------------------------------------------------------------------------------


def sample_counts(out: Path) -> dict[str, int]:
    return {split: pq.read_metadata(out / "samples" / f"{split}.parquet").num_rows for split in SPLITS}


def test_ml1m_counts_and_positive_rates(tmp_path):
    raw = shared_dataset("movielens-1m")
    out = prepare(DataConfig(dataset="ml-1m", path=str(raw)), tmp_path / "ml1m", log=lambda *_: None)
    assert sample_counts(out) == {"train": 800_309, "valid": 99_950, "test": 99_950}
    meta = json.loads((out / "meta.json").read_text())
    rates = {split: round(meta["splits"][split]["positive_rate"], 3) for split in SPLITS}
    assert rates == {"train": 0.588, "valid": 0.532, "test": 0.513}
    labels = pq.read_table(out / "samples" / "test.parquet", columns=["label"])["label"].to_numpy()
    assert round(float(labels.mean()), 3) == 0.513  # meta agrees with the file
    # samples point into the user sequences; they never copy histories
    for split in SPLITS:
        schema = pq.read_schema(out / "samples" / f"{split}.parquet")
        assert schema.names == SAMPLE_COLUMNS
        assert not any(pa.types.is_list(t) or pa.types.is_large_list(t) for t in schema.types), schema
    assert meta["num_users"] - 1 == 6040
    assert pq.read_metadata(out / "users.parquet").num_rows == 6041  # one row per user (+ unknown)


def test_ml_latest_small_bundled(tmp_path):
    out = prepare(DataConfig(dataset="ml-latest-small", path=str(BUNDLED_SMALL)), tmp_path / "small",
                  log=lambda *_: None)
    counts = sample_counts(out)
    assert sum(counts.values()) == 100_004
    assert counts["valid"] == counts["test"] > 0 and counts["train"] > 8 * counts["test"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_users"] - 1 == 671 and meta["num_events"] == 100_004
    data = load_prepared(out)
    users = set().union(*(set(data.splits[s].user.tolist()) for s in SPLITS))
    assert len(users) == 671 and 0 not in users
    # ratings are the actions; labels are rating >= 4
    assert meta["action_values"] == [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0]


def test_ml_latest_small_default_location_is_the_bundled_copy(tmp_path, capsys):
    assert main(["prepare", "--dataset", "ml-latest-small", "--out", str(tmp_path / "p")]) == 0
    assert "prepared ml-latest-small" in capsys.readouterr().out
    assert sum(sample_counts(tmp_path / "p").values()) == 100_004


def test_ml100k_profiles(tmp_path):
    raw = shared_dataset("movielens-100k")
    out = prepare(DataConfig(dataset="ml-100k", path=str(raw)), tmp_path / "ml100k", log=lambda *_: None)
    assert sum(sample_counts(out).values()) == 100_000
    data = load_prepared(out)
    assert sorted(data.profile_names) == ["age", "gender", "occupation"]
    vocab = dict(zip(data.profile_names, data.profile_vocab))
    assert vocab["gender"] == 3 and vocab["occupation"] == 22  # values + unknown
    assert data.profiles.shape == (944, 3)
    assert (data.profiles[1:] > 0).all()  # every real user has every profile feature
    assert (data.profiles[0] == 0).all()  # user 0 is "unknown"
    batch = next(BatchBuilder(data, 8, 4).batches(data.splits["train"], 16))
    assert batch.user_profile.shape == (16, 3) and (batch.user_profile > 0).all()


# ----------------------------------------------------------------------------------------------
# Taobao UserBehavior (last-behaviour protocol)
# ----------------------------------------------------------------------------------------------


def read_behaviour_csvs(paths) -> tuple[dict[int, list[tuple[int, int, int]]], int, int]:
    """Pure-Python reference: user -> [(timestamp, item, category)] in window, in timestamp order
    with ties in file order (exact duplicate lines counted once, at their first copy); plus the
    numbers of rows kept and dropped by the window."""
    by_user, kept, dropped = defaultdict(dict), 0, 0
    for path in paths:
        with open(path, newline="") as handle:
            for user, item, category, _behaviour, ts in csv.reader(handle):
                if WINDOW[0] <= int(ts) < WINDOW[1]:
                    by_user[int(user)].setdefault((int(ts), int(item), int(category), _behaviour), None)
                    kept += 1
                else:
                    dropped += 1
    ordered = {user: sorted(((ts, item, cat) for ts, item, cat, _ in events), key=lambda e: e[0])
               for user, events in by_user.items()}
    return ordered, kept, dropped


def check_last_behaviour(out: Path, reference: dict[int, list[tuple[int, int, int]]]) -> dict[str, set]:
    users = pq.read_table(out / "users.parquet").to_pandas()
    items = pq.read_table(out / "items.parquet").to_pandas()
    item_raw = items["raw_id"].astype(str).to_numpy()
    item_category = items["category"].to_numpy()
    per_category = np.bincount(item_category)
    raw_user_of = users["raw_id"].tolist()

    users_of_split = {}
    seen = set()
    for split in SPLITS:
        table = pq.read_table(out / "samples" / f"{split}.parquet").to_pandas()
        users_of_split[split] = set(table["user"].tolist())
        for user, group in table.groupby("user"):
            raw_user = int(raw_user_of[user])
            events = reference[raw_user]
            assert sorted(group["label"].tolist()) == [0, 1], f"user {raw_user}: one positive, one negative"
            positive = group[group["label"] == 1].iloc[0]
            negative = group[group["label"] == 0].iloc[0]
            # the positive is the last behaviour (the last line of its second), its history everything
            # before its second: behaviours of the same second are simultaneous, not history
            last_ts, last_item, _ = events[-1]
            assert int(item_raw[positive["item"]]) == last_item and positive["timestamp"] == last_ts
            assert positive["position"] == sum(ts < last_ts for ts, _, _ in events) > 0
            sequence = [int(item_raw[i]) for i in users["item"][user]]
            assert sequence == [item for _, item, _ in events]
            assert list(users["timestamp"][user]) == [ts for ts, _, _ in events]
            # the negative: same request and history, another item; same category where it has others
            assert (negative["position"], negative["timestamp"]) == (positive["position"], positive["timestamp"])
            assert negative["item"] != positive["item"] and negative["item"] >= 2
            assert negative["category"] == item_category[negative["item"]]
            assert positive["category"] == item_category[positive["item"]]
            if per_category[positive["category"]] > 1:
                assert negative["category"] == positive["category"]
            seen.add(raw_user)
    # every user with behaviours at >= 2 seconds in the window gives samples, nobody else
    assert seen == {user for user, events in reference.items() if len({ts for ts, _, _ in events}) >= 2}
    assert not users_of_split["train"] & users_of_split["valid"]
    assert not users_of_split["train"] & users_of_split["test"]
    assert not users_of_split["valid"] & users_of_split["test"]
    return users_of_split


def test_taobao_fixture_last_behaviour_protocol(tmp_path):
    raw = shared_dataset("taobao-userbehavior-samples")
    files = sorted(raw.glob("*.csv"))
    assert len(files) == 2
    out = prepare(DataConfig(dataset="taobao", path=str(raw)), tmp_path / "taobao", log=lambda *_: None)
    reference, kept, dropped = read_behaviour_csvs(files)
    assert dropped > 0, "the fixture is expected to hold out-of-window rows"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["protocol"] == "last_behaviour"
    assert meta["num_events"] == kept  # out-of-window rows are dropped, nothing else
    data = load_prepared(out)
    assert (data.sequences.timestamp >= WINDOW[0]).all() and (data.sequences.timestamp < WINDOW[1]).all()
    users_of_split = check_last_behaviour(out, reference)
    n_users = sum(len({ts for ts, _, _ in events}) >= 2 for events in reference.values())
    n_held = max(1, round(0.1 * n_users))
    assert {s: len(u) for s, u in users_of_split.items()} == {
        "train": n_users - 2 * n_held, "valid": n_held, "test": n_held}


def test_taobao_window_and_single_behaviour_users(tmp_path):
    inside = WINDOW[0] + 3600
    rows = [
        # user 1: three behaviours in the window, one just before it and one at its (exclusive) end
        (1, 100, 5, "pv", inside), (1, 101, 5, "cart", inside + 10), (1, 102, 6, "pv", inside + 20),
        (1, 103, 5, "buy", WINDOW[0] - 1), (1, 104, 5, "pv", WINDOW[1]),
        # user 2: one behaviour left after the window filter -> no sample
        (2, 100, 5, "pv", inside), (2, 105, 7, "pv", WINDOW[1] + 99), (2, 106, 7, "pv", 1),
        # user 3: the last item (107) is alone in its category 8
        (3, 102, 6, "fav", inside + 5), (3, 107, 8, "pv", inside + 6),
        # an exact duplicate row is one behaviour
        (3, 107, 8, "pv", inside + 6),
    ]
    path = tmp_path / "behaviour.csv"
    path.write_text("".join(",".join(map(str, row)) + "\n" for row in rows))
    out = prepare(DataConfig(dataset="taobao", path=str(path)), tmp_path / "out", log=lambda *_: None)
    reference, kept, dropped = read_behaviour_csvs([path])
    assert dropped == 4
    meta = json.loads((out / "meta.json").read_text())
    assert meta["num_events"] == 3 + 1 + 2
    users_of_split = check_last_behaviour(out, reference)
    raw_ids = pq.read_table(out / "users.parquet", columns=["raw_id"])["raw_id"].to_pylist()
    sampled = {raw_ids[u] for users in users_of_split.values() for u in users}
    assert sampled == {"1", "3"}
    # user 1's positive is item 102 (its last behaviour in the window), not 104 or 103
    items = pq.read_table(out / "items.parquet").to_pandas()
    all_samples = pd.concat([pq.read_table(out / "samples" / f"{s}.parquet").to_pandas() for s in SPLITS])
    positives = all_samples[all_samples["label"] == 1]
    assert sorted(items["raw_id"][positives["item"]].tolist()) == ["102", "107"]
    assert "103" not in items["raw_id"].tolist() and "104" not in items["raw_id"].tolist()


# ----------------------------------------------------------------------------------------------
# generic events reader
# ----------------------------------------------------------------------------------------------


def test_events_csv_and_parquet_with_mapped_columns_agree(tmp_path, capsys):
    frame = make_events().rename(columns={"user": "uid", "item": "iid", "category": "cat",
                                          "timestamp": "ts", "label": "lbl"})
    frame["unused"] = "x"  # columns that are not mapped are ignored
    csv_path, parquet_path = tmp_path / "events.csv", tmp_path / "events.parquet"
    frame.to_csv(csv_path, index=False)
    frame.to_parquet(parquet_path, index=False)
    columns = {"user": "uid", "item": "iid", "category": "cat", "timestamp": "ts", "label": "lbl"}

    # the CSV through the CLI with a YAML config, the Parquet file through the Python API
    config = tmp_path / "events.yaml"
    config.write_text(yaml.safe_dump({"data": {"dataset": "events", "path": str(csv_path), "columns": columns}}))
    assert main(["prepare", "--config", str(config), "--out", str(tmp_path / "from_csv")]) == 0
    capsys.readouterr()
    prepare(DataConfig(dataset="events", path=str(parquet_path), columns=EventsColumns(**columns)),
            tmp_path / "from_parquet", log=lambda *_: None)

    a, b = tmp_path / "from_csv", tmp_path / "from_parquet"
    for name in ["users.parquet", "items.parquet"] + [f"samples/{s}.parquet" for s in SPLITS]:
        assert pq.read_table(a / name).equals(pq.read_table(b / name)), name
    meta_a, meta_b = (json.loads((f / "meta.json").read_text()) for f in (a, b))
    assert meta_a.pop("fingerprint")["path"] != meta_b.pop("fingerprint")["path"]
    assert [entry["path"] for entry in meta_a.pop("inputs")] == [str(csv_path.resolve())]
    assert [entry["path"] for entry in meta_b.pop("inputs")] == [str(parquet_path.resolve())]
    assert meta_a == meta_b
    # the mapping was used: labels come from 'lbl', items from 'iid'
    assert meta_a["protocol"] == "rating" and meta_a["num_events"] == len(frame)
    samples = pd.concat([pq.read_table(a / "samples" / f"{s}.parquet").to_pandas() for s in SPLITS])
    assert samples["label"].sum() == frame["lbl"].sum()
    item_raw = pq.read_table(a / "items.parquet")["raw_id"].to_pylist()
    assert sorted(item_raw[2:]) == sorted(str(i) for i in frame["iid"].unique())


def test_events_without_label_use_last_behaviour_protocol(tmp_path):
    frame = make_events().drop(columns=["label"])
    path = tmp_path / "events.csv"
    frame.to_csv(path, index=False)
    out = prepare(DataConfig(dataset="events", path=str(path), columns=EventsColumns(category="category")),
                  tmp_path / "out", log=lambda *_: None)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["protocol"] == "last_behaviour"
    # a user gives samples when its events span two or more timestamps (its last one has history)
    n_users = sum(1 for _, g in frame.groupby("user") if g["timestamp"].nunique() >= 2)
    assert sum(sample_counts(out).values()) == 2 * n_users


# ----------------------------------------------------------------------------------------------
# atomic prepare
# ----------------------------------------------------------------------------------------------


def test_prepare_replaces_an_existing_dataset_atomically(tmp_path):
    parent = tmp_path / "prepared"
    out = parent / "data"
    small = make_events()[lambda f: f["user"].isin(["u5", "u15"])]
    prepare_events(small, tmp_path / "raw_a", out)
    assert sum(sample_counts(out).values()) == 20

    large = make_events()
    prepare_events(large, tmp_path / "raw_b", out)
    assert sorted(p.name for p in parent.iterdir()) == ["data"]  # no .tmp-/.old- folders left
    assert sorted(p.name for p in out.iterdir()) == ["items.parquet", "meta.json", "samples", "users.parquet"]
    assert sorted(p.name for p in (out / "samples").iterdir()) == [f"{s}.parquet" for s in sorted(SPLITS)]
    data = load_prepared(out)
    assert sum(len(data.splits[s]) for s in SPLITS) == len(large)
    assert json.loads((out / "meta.json").read_text())["num_events"] == len(large)

    # a prepare that fails leaves the existing dataset as it was
    before = (out / "meta.json").read_text()
    bad = tmp_path / "bad.csv"
    bad.write_text("user,item,timestamp,category,label\n1,2,oops,c,1\n")
    with pytest.raises(EtarecError, match="non-numeric"):
        prepare(DataConfig(dataset="events", path=str(bad), columns=EventsColumns(category="category", label="label")),
                out, log=lambda *_: None)
    assert (out / "meta.json").read_text() == before
    assert sorted(p.name for p in parent.iterdir()) == ["data"]

    # a file someone put into the dataset folder is theirs: the dataset is no longer replaced
    (out / "samples" / "notes.txt").write_text("mine")
    with pytest.raises(EtarecError, match=r"also holds files etarec did not write \(samples/notes.txt\)"):
        prepare_events(small, tmp_path / "raw_c", out)
    assert (out / "samples" / "notes.txt").read_text() == "mine"
    assert (out / "meta.json").read_text() == before


@pytest.mark.parametrize("users_per_group", [None, 1, 7])  # None: one row group, as older etarec wrote
def test_sequences_load_the_same_whatever_the_row_groups_and_share(tmp_path, users_per_group):
    """load_prepared reads users.parquet a row group at a time: whole or by share, its sequences
    equal a plain read of the whole table (per-user lists, int64), for any row-group layout."""
    out = prepare(DataConfig(dataset="ml-latest-small", path=str(BUNDLED_SMALL)), tmp_path / "small",
                  log=lambda *_: None)
    users_file = out / "users.parquet"
    table = pq.read_table(users_file)
    pq.write_table(table, users_file, row_group_size=users_per_group)
    assert pq.ParquetFile(users_file).metadata.num_row_groups == (1 if users_per_group is None else
                                                                  -(-table.num_rows // users_per_group))
    reference = {name: table[name].to_pylist() for name in ("item", "category", "timestamp", "action")}
    for share in (None, (0, 3), (2, 3)):
        data = load_prepared(out, share=share)
        seq = data.sequences
        assert seq.item.dtype == np.int32 and seq.timestamp.dtype == np.int64
        for user in range(table.num_rows):
            kept = share is None or user % share[1] == share[0]
            start, end = seq.offsets[user], seq.offsets[user + 1]
            for name in reference:
                expected = reference[name][user] if kept else []
                assert getattr(seq, name)[start:end].tolist() == expected, (name, user, share)
