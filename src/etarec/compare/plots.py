"""The PNGs: test AUC against training cost for the main table, and a sweep's metrics over its
values. matplotlib is the optional extra 'plot'."""
from __future__ import annotations

from pathlib import Path

from etarec.atomic import atomic_write_bytes
from etarec.compare.suite import Sweep
from etarec.errors import EtarecError


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise EtarecError("the plots need matplotlib; install it with pip install 'etarec[plot]'") from None
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(plt, figure, path: Path) -> None:
    figure.tight_layout()
    atomic_write_bytes(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))
    plt.close(figure)


def plot_auc_vs_cost(rows: list[dict], path: Path, title: str) -> None:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(9, 5))
    colours = plt.get_cmap("tab20").colors
    for i, row in enumerate(rows):
        # a legend rather than labels at the points: models of one family land within 0.001 AUC
        x, y = row["train_seconds_per_epoch"], row["test_auc"]
        axes.errorbar(x["mean"], y["mean"], xerr=x["std"], yerr=y["std"], fmt="osD^v<>"[i % 7], capsize=3,
                      color=colours[i % len(colours)], label=row["name"])
    axes.set_xlabel("training seconds per epoch")
    axes.set_ylabel("test AUC (mean ± std over seeds)")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(plt, figure, path)


def plot_sweep(rows: list[dict], sweep: Sweep, path: Path, title: str) -> None:
    plt = _pyplot()
    panels = [("test_auc", "test AUC"), ("train_seconds_per_epoch", "training seconds per epoch")]
    if any(row["retrieval_recall"] for row in rows):
        panels.append(("retrieval_recall", "retrieval recall of the inner-product top-k"))
    figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in sweep.values)
    for axis, (key, label) in zip(axes[0], panels):
        for name in sweep.labels:
            points = [row for row in rows if row["name"] == name and row[key] is not None]
            if not points:
                continue
            xs = [row["value"] if numeric else str(row["value"]) for row in points]
            axis.errorbar(xs, [row[key]["mean"] for row in points], yerr=[row[key]["std"] for row in points],
                          marker="o", capsize=3, label=name)
        if numeric:
            axis.set_xscale("log", base=2)
            axis.set_xticks(sweep.values, [str(v) for v in sweep.values])
        axis.set_xlabel(sweep.key)
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(title)
    _save(plt, figure, path)


def plot_gain_by_length(buckets: list[str], series: list[tuple[str, list, list]], path: Path, title: str) -> None:
    """Grouped bars: each model's test AUC gain over DIN (mean ± std over seeds, seed by seed) per
    bucket of real history length."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(max(7, 1.2 * len(buckets) * max(len(series), 1) / 3 + 4), 4.5))
    colours = plt.get_cmap("tab20").colors
    width = 0.8 / max(len(series), 1)
    for i, (name, means, stds) in enumerate(series):
        xs = [b + (i - (len(series) - 1) / 2) * width for b in range(len(buckets))]
        axes.bar(xs, means, width, yerr=stds, capsize=2, color=colours[i % len(colours)], label=name)
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(buckets)), buckets)
    axes.set_xlabel("real history length of the sample")
    axes.set_ylabel("test AUC gain over din")
    axes.set_title(title)
    axes.grid(alpha=0.3, axis="y")
    axes.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(plt, figure, path)
