"""A Markdown table of finished runs' metrics.json."""
from __future__ import annotations

import json
from pathlib import Path

from etarec.errors import EtarecError


def load_metrics(run: Path) -> dict:
    path = run / "metrics.json"
    if not path.is_file():
        raise EtarecError(f"{run} has no metrics.json; pass folders of finished `etarec train` runs")
    return json.loads(path.read_text())


def report_table(runs: list[Path]) -> str:
    rows = ["| run | model | test AUC | test gAUC | test logloss | epochs | train s | train samples/s |",
            "|---|---|---|---|---|---|---|---|"]
    for run in runs:
        m = load_metrics(run)
        t = m["test"]
        rows.append(f"| {run.name} | {m['model']} | {t['auc']:.4f} | {t['gauc']:.4f} | {t['logloss']:.4f} | "
                    f"{m['epochs']} | {m['train_seconds']:.0f} | {m['train_samples_per_second']:,.0f} |")
    return "\n".join(rows)
