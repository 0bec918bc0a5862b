"""End-to-end training speed as users meet it: `etarec train` itself, batch building included.

One fresh `etarec train` process per point (fixed steps, batch 256, the peer's configuration) on
the peer generator's long workload, at each L, quiet and beside one competing busy process that
this script starts and stops itself, the two conditions interleaved point by point. Each point
reads the run's metrics.json (the loop's samples/s, the steps-alone figure, inference samples/s
of valid) and the process's peak RSS (os.wait4).

    python ../shared/peers/fuxictr/gen_data.py --out .bench/synth_long16k --min-hist 16384
    python benchmarks/pipeline.py --models eta --L 256,1024,4096,16384
    python benchmarks/pipeline.py --quick        # eta at L = 256, 1024, 10 steps, quiet only

JSON: benchmarks/results/speed/pipeline.json; PNG beside it (with matplotlib).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ROOT / ".bench"
OUT = ROOT / "benchmarks" / "results" / "speed" / "pipeline.json"
PEER_MODEL = {"embedding_dim": 32, "short_len": 50, "hash_bits": 64, "top_k": 64, "heads": 2, "attention_dim": 64,
              "mlp": [200, 80], "use_user_id": True, "use_profile": False, "use_time": False, "use_action": False}


def config_file(workload: Path) -> Path:
    config = {"data": {"dataset": "longctr", "path": str(workload), "prepared_dir": str(SCRATCH / f"prepared-{workload.name}")},
              "model": PEER_MODEL, "train": {"batch_size": 256, "epochs": 1, "state_every_steps": None}}
    path = SCRATCH / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@contextlib.contextmanager
def competing(loaded: bool):
    """One busy process beside the point (a `yes` writing to /dev/null), stopped whatever happens."""
    busy = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) if loaded else None
    try:
        yield
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def run_point(config: Path, model: str, length: int, steps: int, loaded: bool) -> dict:
    out = SCRATCH / "pipeline-runs" / f"{model}-{length}"
    command = [sys.executable, "-m", "etarec", "train", "--config", str(config), "--out", str(out), "--overwrite",
               "--no-progress", "--set", f"model.name={model}", "--set", f"model.long_len={length}",
               "--set", f"model.top_k={min(64, length)}", "--set", f"train.max_steps_per_epoch={steps}"]
    with competing(loaded):
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        output = process.stdout.read()
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{output[-2000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"model": model, "L": length, "steps": steps, "loaded": loaded, "wall_seconds": seconds,
            "train_sps": metrics["train_samples_per_second"],
            "train_step_sps": metrics.get("train_step_samples_per_second"),
            "infer_sps": metrics["valid"]["infer_samples_per_second"],
            "peak_rss_mb": usage.ru_maxrss / 1024, "test_auc": metrics["test"]["auc"]}


def summary(points: list[dict]) -> str:
    lines = ["| model | L | condition | loop samples/s | steps alone | loop / steps | infer samples/s | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for p in points:
        ratio = p["train_sps"] / p["train_step_sps"] if p["train_step_sps"] else float("nan")
        lines.append(f"| {p['model']} | {p['L']:,} | {'loaded' if p['loaded'] else 'quiet'} | {p['train_sps']:,.0f} | "
                     f"{p['train_step_sps']:,.0f} | {ratio:.2f} | {p['infer_sps']:,.0f} | {p['peak_rss_mb']:,.0f} |")
    return "\n".join(lines)


def plot(points: list[dict], path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    figure, axis = plt.subplots(figsize=(6, 4))
    for model in dict.fromkeys(p["model"] for p in points):
        for loaded in (False, True):
            mine = [p for p in points if p["model"] == model and p["loaded"] == loaded]
            if mine:
                axis.plot([p["L"] for p in mine], [p["train_sps"] for p in mine], "--" if loaded else "-", marker="o",
                          label=f"{model} ({'one busy process beside' if loaded else 'quiet'})")
    axis.set(xscale="log", xlabel="L (history window)", ylabel="etarec train samples/s (batch building included)")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", type=Path, default=SCRATCH / "synth_long16k", help="folder of the peer's gen_data.py")
    parser.add_argument("--models", default="eta")
    parser.add_argument("--L", default="256,1024,4096,16384")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--quiet-only", action="store_true")
    parser.add_argument("--quick", action="store_true", help="eta at L = 256, 1024, 10 steps, quiet only")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if args.quick:
        args.models, args.L, args.steps, args.quiet_only = "eta", "256,1024", 10, True
    if not (args.workload / "train.parquet").is_file():
        raise SystemExit(f"no workload at {args.workload}; run: python ../shared/peers/fuxictr/gen_data.py "
                         f"--out {args.workload} --min-hist 16384")
    config = config_file(args.workload)
    from tqdm import tqdm

    plan = [(model, int(length), loaded) for model in args.models.split(",") for length in args.L.split(",")
            for loaded in ((False,) if args.quiet_only else (False, True))]
    points = []
    for model, length, loaded in tqdm(plan, desc="points"):
        points.append(run_point(config, model, length, args.steps, loaded))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "nproc": os.cpu_count(), "points": points}, indent=2))
    plot(points, args.out.with_suffix(".png"))
    print(summary(points))


if __name__ == "__main__":
    main()
