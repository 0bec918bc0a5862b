"""Test metrics by real history length (train/metrics.py `metrics_by_length`) for a suite's runs:
each run's buckets, their mean ± std over seeds, and each model's AUC gain over DIN per bucket,
taken seed by seed.

Where a run's buckets come from, first that applies:
* its metrics.json (`test.by_length`: the trainer records the default buckets 50, 200, 1000),
  when the suite asks for those edges;
* `by_length.json` beside it, cached for the run's config and these edges;
* its model.pt, evaluated again on the test split (then cached);
* none: a run without weights and without recorded buckets drops out of the by-length tables
  (the main table keeps it), with one line saying so.
"""
from __future__ import annotations

import json

import numpy as np

from etarec.atomic import write_text_atomically
from etarec.compare.plan import Result, Run
from etarec.compare.tables import stats
from etarec.data.batch import BatchBuilder
from etarec.store.checkpoint import CHECKPOINT_FILE, load_checkpoint
from etarec.train.metrics import bucket_names
from etarec.train.trainer import evaluate_split

CACHE_FILE = "by_length.json"
REFERENCE = "din"  # the gains are over this entry (or the entry whose model is din)
METRICS = ("auc", "gauc", "logloss")


def run_by_length(run: Run, data, metrics: dict, edges: tuple[int, ...], say) -> dict | None:
    """The run's test metrics by history length for `edges` (see the module docstring), or None."""
    recorded = metrics.get("test", {}).get("by_length")
    if recorded and tuple(recorded.get("edges", ())) == tuple(edges):
        return recorded
    cache = run.folder / CACHE_FILE
    try:
        saved = json.loads(cache.read_text())
        if saved.get("config") == metrics["config"] and tuple(saved.get("edges", ())) == tuple(edges):
            return saved["by_length"]
    except (OSError, json.JSONDecodeError, KeyError):
        pass
    if not (run.folder / CHECKPOINT_FILE).is_file() or not hasattr(data, "splits"):
        say(f"{run.describe()}: no metrics by history length, its weights ({CHECKPOINT_FILE}) are not in {run.folder}")
        return None
    model, config, _ = load_checkpoint(run.folder, expected_model=run.config.model.name)
    builder = BatchBuilder(data, config.model.long_len, config.model.short_len, model.inputs)
    by_length = evaluate_split(model, builder, data.splits["test"], config.train.eval_batch_size,
                               length_edges=edges)["by_length"]
    write_text_atomically(cache, json.dumps({"edges": list(edges), "by_length": by_length,
                                             "config": metrics["config"]}, indent=2))
    return by_length


def _stats_or_none(values: list) -> dict | None:
    present = [v for v in values if v is not None]
    return {**stats(present), "n": len(present)} if present else None


def add_length_columns(rows: list[dict], results: list[Result], found: dict, edges: tuple[int, ...]) -> bool:
    """Give each summary row whose runs have buckets a `test_by_length` entry: per bucket the sample
    count and each metric's mean/std over seeds (n = seeds with a value; a bucket with one class
    has no AUC), the per-seed AUCs, and the AUC gain over DIN seed by seed. `found` maps a run
    folder to its buckets (or None). Rows without any are left as they were. Returns whether any
    row got buckets."""
    names = bucket_names(edges)
    by_row: dict[tuple, dict] = {}
    for run, _, _ in results:
        buckets = found.get(run.folder)
        if buckets is not None:
            by_row.setdefault((run.label, json.dumps(run.value)), {})[str(run.seed)] = buckets["buckets"]
    for row in rows:
        seeds = by_row.get((row["name"], json.dumps(row["value"])))
        if not seeds:
            continue
        cells = []
        for b, name in enumerate(names):
            per_seed = [buckets[b] for buckets in seeds.values()]
            cell = {"bucket": name, "samples": per_seed[0]["samples"]}
            for key in METRICS:
                cell[key] = _stats_or_none([bucket[key] for bucket in per_seed])
            reasons = sorted({reason for bucket in per_seed for reason in bucket.get("why_null", {}).values()})
            if reasons:
                cell["why_null"] = "; ".join(reasons)
            cells.append(cell)
        row["test_by_length"] = {"edges": list(edges), "buckets": cells,
                                 "auc_by_seed": {seed: [bucket["auc"] for bucket in buckets]
                                                 for seed, buckets in seeds.items()}}
    _add_gains(rows)
    return bool(by_row)


def reference_row(rows: list[dict], value=None) -> dict | None:
    """The DIN row (by name, else by model) among the rows of one sweep value."""
    candidates = [row for row in rows if row["value"] == value and "test_by_length" in row]
    for row in candidates:
        if row["name"] == REFERENCE:
            return row
    return next((row for row in candidates if row["model"] == REFERENCE), None)


def _add_gains(rows: list[dict]) -> None:
    for row in rows:
        if "test_by_length" not in row:
            continue
        reference = reference_row(rows, row["value"])
        if reference is None or reference is row:
            continue
        mine, theirs = row["test_by_length"]["auc_by_seed"], reference["test_by_length"]["auc_by_seed"]
        common = [seed for seed in mine if seed in theirs]
        for b, cell in enumerate(row["test_by_length"]["buckets"]):
            gaps = [mine[s][b] - theirs[s][b] for s in common if mine[s][b] is not None and theirs[s][b] is not None]
            cell["auc_gain_over_din"] = {**stats(gaps), "n": len(gaps)} if gaps else None


def _cell(value: dict | None, digits: int, signed: bool = False) -> str:
    if value is None:
        return "–"
    text = f"{value['mean']:+.{digits}f}" if signed else f"{value['mean']:.{digits}f}"
    return text + (f" ± {value['std']:.{digits}f}" if value["n"] > 1 else "")


def length_tables(rows: list[dict], with_value: bool = False) -> list[str]:
    """Markdown: test AUC, gAUC and logloss per bucket of real history length (sample counts in the
    header), and the AUC gain over DIN per bucket; empty when no row has buckets."""
    rows = [row for row in rows if "test_by_length" in row]
    if not rows:
        return []
    first = rows[0]["test_by_length"]
    header = ["model"] + [f"{cell['bucket']} (n={cell['samples']:,})" for cell in first["buckets"]]
    label = lambda row: row["name"] + (f" ({json.dumps(row['value'])})" if with_value else "")  # noqa: E731
    lines = ["", "## Test metrics by real history length",
             "",
             f"Buckets of the sample's number of real behaviours before it (not capped by the window), "
             f"edges {', '.join(map(str, first['edges']))}; mean ± std over seeds; – : no value "
             "(a bucket without samples or with one class)."]
    tables = [("test AUC", "auc", 4, False), ("test gAUC", "gauc", 4, False), ("test logloss", "logloss", 4, False),
              ("test AUC gain over din (seed by seed)", "auc_gain_over_din", 4, True)]
    for title, key, digits, signed in tables:
        body = [row for row in rows if any(key in cell for cell in row["test_by_length"]["buckets"])]
        if not body:
            continue
        lines += ["", f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in body:
            lines.append("| " + " | ".join([label(row)] + [_cell(cell.get(key), digits, signed)
                                                           for cell in row["test_by_length"]["buckets"]]) + " |")
    return lines


def gains_for_plot(rows: list[dict]) -> tuple[list[str], list[tuple[str, list, list]]]:
    """(bucket names, [(model, mean gains, stds)]) of the main table's rows with a gain over DIN."""
    series, names = [], []
    for row in rows:
        if "test_by_length" not in row or row["value"] is not None:
            continue
        cells = row["test_by_length"]["buckets"]
        names = [cell["bucket"] for cell in cells]
        if any(cell.get("auc_gain_over_din") for cell in cells):
            gains = [cell.get("auc_gain_over_din") for cell in cells]
            series.append((row["name"], [np.nan if g is None else g["mean"] for g in gains],
                           [0.0 if g is None else g["std"] for g in gains]))
    return names, series
