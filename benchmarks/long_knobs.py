"""Which of synth-long's knobs moves which ranking of the long-interest suite (issue 19).

The suite's defaults (configs/suites/long.yaml) stay as fixed before it ran; this script runs the
same suite on smaller data (--users, default 2,000: 64,000 train samples) once at the defaults and
once per changed knob, each with `etarec compare` itself (resumable: a finished run is kept), and
sets the rankings side by side:

    relevant_back   how far back the dormant interests sit (32: inside the 50-behaviour short window)
    category_agreement   how often an item's category is its latent topic (SIM(hard) retrieves by category)
    interests       long-lived interests per user (more: each dormant one has fewer behaviours)

    python benchmarks/long_knobs.py                       # the settings below, 1 seed, ~20 min on 2 cores
    python benchmarks/long_knobs.py --seeds 2 --only category_agreement=1.0

Writes benchmarks/results/long_knobs/<setting>/ (compare's folders), summary.md (test AUC per model
and setting, each setting's ranking and its Bayes ceiling) and summary.png.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from etarec.atomic import write_text_atomically

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "configs" / "suites" / "long.yaml"
MODELS = ["avg_pool", "din", "sim_hard", "eta"]
# (name, knob overrides): the defaults first, then one knob changed at a time
SETTINGS = [
    ("defaults", {}),
    ("relevant_back=32", {"relevant_back": 32}),
    ("category_agreement=1.0", {"category_agreement": 1.0}),
    ("category_agreement=0.4", {"category_agreement": 0.4}),
    ("interests=8", {"interests": 8}),
]


def run_setting(name: str, knobs: dict, users: int, seeds: int, out: Path) -> dict:
    """`etarec compare` of MODELS on synth-long with these knobs; its summary.json and the data's meta."""
    prepared = f"prepared/synth-long-knobs-{users}-{name.replace('=', '-')}"
    sets = [f"data.synth.users={users}", f"data.prepared_dir={prepared}",
            *(f"data.synth.{key}={value}" for key, value in knobs.items())]
    # paths relative to the repository (where it runs): the summaries record them
    command = [str(REPO / ".venv" / "bin" / "etarec"), "compare", "--suite", str(SUITE.relative_to(REPO)),
               "--seeds", str(seeds), "--out", os.path.relpath(out / name, REPO), "--models", ",".join(MODELS),
               "--no-progress",
               *(arg for value in sets for arg in ("--set", value))]
    print("$", " ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=REPO, check=True)
    summary = json.loads((out / name / "summary.json").read_text())
    meta = json.loads((REPO / prepared / "meta.json").read_text())
    return {"summary": summary, "bayes": meta["synth"]["bayes"]["test"]["auc"],
            "agreement": meta["synth"]["stats"]["category_agreement"]}


def tables(results: dict[str, dict], users: int, seeds: int) -> list[str]:
    auc = {name: {row["name"]: row["test_auc"] for row in result["summary"]["models"]}
           for name, result in results.items()}
    names = list(results)
    lines = [f"# synth-long: one knob at a time ({users:,} users, {seeds} seed(s), {', '.join(MODELS)})", "",
             "Test AUC (mean over seeds); the last rows: the Bayes ceiling of the setting's own labels and its ranking.", "",
             "| model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for model in MODELS:
        cells = [f"{auc[name][model]['mean']:.4f}" if model in auc[name] else "–" for name in names]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines.append("| Bayes ceiling | " + " | ".join(f"{results[name]['bayes']:.4f}" for name in names) + " |")
    lines.append("| measured category agreement | " + " | ".join(f"{results[name]['agreement']:.3f}" for name in names) + " |")
    lines += ["", "Ranking, worst first (mean test AUC):", ""]
    for name in names:
        order = sorted(auc[name], key=lambda model: auc[name][model]["mean"])
        lines.append(f"- {name}: " + " < ".join(order))
    return lines


def plot(results: dict[str, dict], png: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: summary.png skipped (pip install -e '.[plot]')")
        return False
    names = list(results)
    figure, axes = plt.subplots(figsize=(1.9 * len(names) + 2, 4))
    width = 0.8 / len(MODELS)
    for i, model in enumerate(MODELS):
        values = [next((row["test_auc"]["mean"] for row in results[name]["summary"]["models"] if row["name"] == model),
                       float("nan")) for name in names]
        axes.bar([x + (i - (len(MODELS) - 1) / 2) * width for x in range(len(names))], values, width, label=model)
    axes.scatter(range(len(names)), [results[name]["bayes"] for name in names], marker="_", s=600, color="black",
                 label="Bayes ceiling")
    axes.set_xticks(range(len(names)), names, fontsize=8)
    axes.set_ylim(0.5, 0.9)
    axes.set_ylabel("test AUC")
    axes.set_title("synth-long: which knob moves which ranking")
    axes.legend(fontsize=8, ncol=3)
    figure.tight_layout()
    figure.savefig(png, dpi=120)
    plt.close(figure)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--only", action="append", default=[], help="a setting's name, e.g. interests=8 (repeatable)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "long_knobs")
    args = parser.parse_args(argv)
    chosen = [(name, knobs) for name, knobs in SETTINGS if not args.only or name in args.only]
    if not chosen:
        parser.error(f"--only {args.only}: no such setting; settings: {', '.join(name for name, _ in SETTINGS)}")
    results = {name: run_setting(name, knobs, args.users, args.seeds, args.out) for name, knobs in chosen}
    lines = tables(results, args.users, args.seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomically(args.out / "summary.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    if plot(results, args.out / "summary.png"):
        print(f"wrote {args.out / 'summary.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
