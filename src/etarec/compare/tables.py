"""The summary of finished runs: one row per (entry, sweep value) with its test metrics and costs
as mean ± sample std over seeds (summary.json, sweep_*.json), and those rows as a Markdown table."""
from __future__ import annotations

import json

import numpy as np

from etarec.compare.plan import Result


def stats(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single seed)."""
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0}


def summarise(results: list[Result]) -> list[dict]:
    """One row per (entry, sweep value), in the order of the runs (the suite's order): test metrics
    and costs as mean/std over its seeds."""
    groups: dict[tuple, list] = {}
    for run, metrics, recall in results:
        groups.setdefault((run.label, json.dumps(run.value)), []).append((run, metrics, recall))
    rows = []
    for group in groups.values():
        run, metrics, _ = group[0]
        column = lambda pick: stats([pick(m) for _, m, _ in group])  # noqa: E731
        recalls = [recall for _, _, recall in group if recall is not None]
        rows.append({
            "name": run.label, "model": run.config.model.name, "value": run.value,
            "seeds": [r.seed for r, _, _ in group],
            "test_auc": column(lambda m: m["test"]["auc"]),
            "test_gauc": column(lambda m: m["test"]["gauc"]),
            "test_logloss": column(lambda m: m["test"]["logloss"]),
            "valid_auc": column(lambda m: m["valid"]["auc"]),
            "train_seconds_per_epoch": column(lambda m: m["train_seconds_per_epoch"]),
            "train_samples_per_second": column(lambda m: m["train_samples_per_second"]),
            "infer_samples_per_second": column(lambda m: m["test"]["infer_samples_per_second"]),
            "epochs": column(lambda m: m["epochs"]),
            "parameters": metrics["parameters"],
            "retrieval_recall": stats(recalls) if recalls else None,
            "by_seed": {str(r.seed): {"test_auc": m["test"]["auc"], "train_seconds_per_epoch": m["train_seconds_per_epoch"],
                                      "infer_samples_per_second": m["test"]["infer_samples_per_second"]}
                        for r, m, _ in group},
            "top_k": run.config.model.top_k, "long_len": run.config.model.long_len,
            # relative to the suite's --out folder, so a summary can be copied anywhere
            "runs": [str(r.folder.relative_to(r.folder.parents[2])) for r, _, _ in group],
        })
    return rows


def _pm(cell: dict | None, digits: int, seeds: int) -> str:
    if cell is None:
        return "–"
    spread = f" ± {cell['std']:.{digits}f}" if seeds > 1 else ""  # one seed has no spread to show
    return f"{cell['mean']:.{digits}f}{spread}"


def markdown_table(rows: list[dict], first: list[str]) -> list[str]:
    """Markdown rows; `first` names the leading columns (name and, for sweeps, the value)."""
    header = first + ["test AUC", "test gAUC", "test logloss", "train s/epoch", "train samples/s",
                      "infer samples/s", "parameters", "epochs", "retrieval recall"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["name"]] + ([] if len(first) == 1 else [json.dumps(row["value"])])
        n = len(row["seeds"])
        cells += [_pm(row["test_auc"], 4, n), _pm(row["test_gauc"], 4, n), _pm(row["test_logloss"], 4, n),
                  _pm(row["train_seconds_per_epoch"], 1, n), f"{row['train_samples_per_second']['mean']:,.0f}",
                  f"{row['infer_samples_per_second']['mean']:,.0f}", f"{row['parameters']:,}",
                  f"{row['epochs']['mean']:.1f}", _pm(row["retrieval_recall"], 3, n)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines
