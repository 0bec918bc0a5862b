"""What SIM(hard)'s category search has to choose from: per test window, the real behaviours and
those of the target's category, against k.

When a window holds at most k behaviours of the target's category, SIM(hard) attends over all of
them, an exact relevance filter that needs no hashing; ETA has to find k among all L. The figures
explain where SIM(hard) and ETA land in the comparison suite.

    python benchmarks/window_stats.py --config configs/ml1m_eta.yaml            # L, k from the config
    python benchmarks/window_stats.py --config configs/ml1m_eta.yaml --L 64,256,1024,2048
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from etarec.config import load_config
from etarec.data.batch import BatchBuilder
from etarec.data.prepare import ensure_prepared

OUT = Path(__file__).parent / "results" / "ml1m"


def window_stats(data, long_len: int, k: int, split: str = "test", batch: int = 4096) -> dict:
    samples = data.splits[split]
    builder = BatchBuilder(data, long_len, min(long_len, 1))
    real, same = [], []
    for start in range(0, len(samples), batch):
        windows = builder.build(samples, np.arange(start, min(start + batch, len(samples))))
        mask = windows.history_mask.numpy()  # [B, L]
        match = mask & (windows.history_categories.numpy() == windows.target_category.numpy()[:, None])
        real.append(mask.sum(1))
        same.append(match.sum(1))
    real, same = np.concatenate(real), np.concatenate(same)
    choosing = real > k  # rows where a top-k has to leave behaviours out
    return {
        "split": split, "L": long_len, "k": k, "rows": int(len(real)),
        "real_mean": float(real.mean()), "same_category_mean": float(same.mean()),
        # rows whose history is cut at L: the only rows a longer window would show more of
        "rows_with_full_window": float((real == long_len).mean()),
        "same_category_share": float(same.sum() / max(real.sum(), 1)),
        "rows_with_more_than_k_real": float(choosing.mean()),
        # of the rows where ETA must choose, how often SIM(hard) takes every same-category behaviour
        "same_category_at_most_k_where_choosing": float((same[choosing] <= k).mean()) if choosing.any() else None,
        "rows_without_same_category": float((same == 0).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/ml1m_eta.yaml")
    parser.add_argument("--L", default=None, help="comma-separated window lengths (default: the config's)")
    parser.add_argument("--out", default=str(OUT / "window_stats.json"))
    args = parser.parse_args()
    config = load_config(args.config)
    data = ensure_prepared(config.data)
    lengths = [int(v) for v in args.L.split(",")] if args.L else [config.model.long_len]
    rows = [window_stats(data, length, config.model.top_k) for length in lengths]
    print("| L | k | real behaviours (mean) | rows with a full window | target's category (mean) | share | "
          "rows with > k real | of those, <= k of the category | rows without the category |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        at_most_k = r["same_category_at_most_k_where_choosing"]
        print(f"| {r['L']:,} | {r['k']} | {r['real_mean']:.1f} | {r['rows_with_full_window']:.3f} | "
              f"{r['same_category_mean']:.1f} | "
              f"{r['same_category_share']:.3f} | {r['rows_with_more_than_k_real']:.3f} | "
              f"{'–' if at_most_k is None else f'{at_most_k:.3f}'} | {r['rows_without_same_category']:.3f} |")
    document = {"dataset": data.meta["dataset"], "num_categories": data.meta["num_categories"], "rows": rows,
                "command": f"python benchmarks/window_stats.py --config {args.config}"
                           + (f" --L {args.L}" if args.L else "")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(document, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
