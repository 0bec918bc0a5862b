"""Out-of-core Taobao prepare at scale: generate a UserBehavior-format CSV of N rows, then time
`etarec prepare --stream` on it and measure its peak RSS (/usr/bin/time -v).

    python benchmarks/taobao_prepare.py --rows 10000000 [--dir .bench/taobao] [--compare]

The generated file has the real file's columns and value ranges (../shared/data/taobao-
userbehavior-samples/SOURCE.md): user ids in 1..1,018,011 with each user's rows contiguous and
users ordered as text, item ids in 1..5,163,070, each item in one of 9,439 categories with ids in
80..5,162,429, behaviours pv/cart/fav/buy at 89.6/5.5/2.9/2.0%, timestamps in the 9-day window
with 0.05% outside it, ~100 rows per user (log-normal, heavy tail), popular items, repeats, and
0.01% exact duplicate rows. It is written under --dir (never into the repository).
--compare also runs the in-memory `etarec prepare` on the file and checks both outputs are equal.
Results: benchmarks/results/scale/taobao_prepare_<rows>.json.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from etarec.data.taobao import WINDOW

RESULTS = Path(__file__).resolve().parent / "results" / "scale"
MAX_USER, MAX_ITEM, CATEGORY_RANGE, CATEGORIES = 1_018_011, 5_163_070, (80, 5_162_429), 9_439
BEHAVIOURS = (["pv", "cart", "fav", "buy"], [0.896, 0.055, 0.029, 0.020])
USERS_PER_CHUNK = 20_000


def generate(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    n_users = max(1, rows // 100)
    users = rng.choice(MAX_USER, n_users, replace=False) + 1
    users = users[np.argsort(users.astype(str))]  # the real file orders users as text
    lengths = np.clip(rng.lognormal(np.log(70), 0.9, n_users), 1, 5000)
    lengths = np.maximum(1, np.round(lengths * rows / lengths.sum())).astype(np.int64)
    lengths[-1] = max(1, lengths[-1] + rows - lengths.sum())  # exactly `rows` (up to the last user's floor of 1)
    categories = np.sort(rng.choice(np.arange(*CATEGORY_RANGE), CATEGORIES, replace=False))
    popular = rng.choice(MAX_ITEM, 200_000, replace=False) + 1
    with open(path, "wb") as handle:
        for start in range(0, n_users, USERS_PER_CHUNK):
            chunk_users, chunk_lengths = users[start:start + USERS_PER_CHUNK], lengths[start:start + USERS_PER_CHUNK]
            user = np.repeat(chunk_users, chunk_lengths)
            n = len(user)
            item = np.where(rng.random(n) < 0.6, popular[(len(popular) * rng.random(n) ** 3).astype(np.int64)],
                            rng.integers(1, MAX_ITEM + 1, n))
            same_user = np.concatenate([[False], user[1:] == user[:-1]])
            repeat = same_user & (rng.random(n) < 0.3)  # look at the previous item again
            for _ in range(3):  # runs of repeats propagate a few steps
                item = np.where(repeat, np.roll(item, 1), item)
            category = categories[(item * 2654435761 % 2**32) % CATEGORIES]  # one category per item
            timestamp = rng.integers(WINDOW[0], WINDOW[1], n)
            # each user's rows in time order, as in the real file
            timestamp = timestamp[np.lexsort((timestamp, np.repeat(np.arange(len(chunk_users)), chunk_lengths)))]
            outside = rng.random(n) < 0.0005
            timestamp = np.where(outside, rng.integers(WINDOW[0] - 86400 * 80, WINDOW[0], n), timestamp)
            behaviour = rng.choice(len(BEHAVIOURS[0]), n, p=BEHAVIOURS[1])
            table = pa.table({"user": user, "item": item, "category": category,
                              "behavior": pa.array(np.array(BEHAVIOURS[0])[behaviour]), "timestamp": timestamp})
            duplicate = np.flatnonzero(same_user & (rng.random(n) < 0.0001))
            if len(duplicate):  # row i becomes a copy of row i - 1
                index = np.arange(n)
                index[duplicate] = duplicate - 1
                table = table.take(pa.array(index))
            pcsv.write_csv(table, handle, pcsv.WriteOptions(include_header=False, quoting_style="none"))


def timed(command: list[str]) -> dict:
    """Run under /usr/bin/time -v: wall seconds, peak RSS, stdout."""
    result = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", result.stderr).group(1)
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
    return {"command": " ".join(command), "wall_seconds": sum(float(p) * 60 ** i for i, p in enumerate(reversed(wall.split(":")))),
            "peak_rss_mb": rss_kb / 1024, "output": result.stdout.strip().splitlines()}


def same_output(streamed: Path, in_memory: Path) -> bool:
    tables = ["users.parquet", "items.parquet", "samples/train.parquet", "samples/valid.parquet", "samples/test.parquet"]
    if not all(pq.read_table(streamed / t).equals(pq.read_table(in_memory / t)) for t in tables):
        return False
    meta = [json.loads((folder / "meta.json").read_text()) for folder in (streamed, in_memory)]
    meta[0].pop("rows")
    return meta[0] == meta[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--dir", default=str(Path(__file__).resolve().parents[1] / ".bench" / "taobao"),
                        help="where the generated CSV and outputs go (gitignored by default)")
    parser.add_argument("--compare", action="store_true", help="also run the in-memory prepare and compare")
    args = parser.parse_args()
    folder = Path(args.dir)
    folder.mkdir(parents=True, exist_ok=True)
    csv_file = folder / f"UserBehavior_{args.rows}.csv"
    if not csv_file.is_file():
        started = time.perf_counter()
        generate(csv_file, args.rows)
        print(f"generated {csv_file} ({csv_file.stat().st_size / 2**20:,.0f} MiB) in {time.perf_counter() - started:.0f}s")
    etarec = [sys.executable, "-m", "etarec", "prepare", "--dataset", "taobao", "--path", str(csv_file)]
    result = {"rows_generated": args.rows, "file_mib": csv_file.stat().st_size / 2**20,
              "stream": timed([*etarec, "--out", str(folder / "streamed"), "--stream"])}
    result["rows"] = json.loads((folder / "streamed" / "meta.json").read_text())["rows"]
    print(f"stream: {result['stream']['wall_seconds']:.0f}s, peak RSS {result['stream']['peak_rss_mb']:,.0f} MB")
    if args.compare:
        result["in_memory"] = timed([*etarec, "--out", str(folder / "in_memory")])
        result["equal_to_in_memory"] = same_output(folder / "streamed", folder / "in_memory")
        print(f"in memory: {result['in_memory']['wall_seconds']:.0f}s, peak RSS {result['in_memory']['peak_rss_mb']:,.0f} MB; "
              f"equal: {result['equal_to_in_memory']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    # the record names no path of this machine: the interpreter and the work folder are placeholders
    text = json.dumps(result, indent=2).replace(sys.executable, "python").replace(str(folder), "<dir>")
    target = RESULTS / f"taobao_prepare_{args.rows}.json"
    target.with_suffix(".tmp").write_text(text)
    target.with_suffix(".tmp").replace(target)
    print("\n".join(result["stream"]["output"]))


if __name__ == "__main__":
    main()
