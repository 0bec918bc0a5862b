"""Training throughput on 1 and 2 processes (torchrun, DDP over gloo on CPU) with the same global
batch: the figure `train_samples_per_second` of each run's metrics.json (the training loop only).

    python benchmarks/scale.py [--config configs/quickstart_eta.yaml] [--steps 100] [--repeats 2]

Each setting runs --repeats times (best kept, machines are noisy): 1 process with 1 thread,
1 process with 2 threads, 2 processes with 1 thread each. Results:
benchmarks/results/scale/train_scale.json.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "scale"
REPO = Path(__file__).resolve().parents[1]
SETTINGS = [(1, 1), (1, 2), (2, 1)]  # (processes, threads per process)


def run(config: str, processes: int, threads: int, steps: int, out: Path) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "etarec", "train", "--config", config, "--out", str(out), "--no-progress",
               "--set", "train.epochs=1", "--set", f"train.max_steps_per_epoch={steps}",
               "--set", f"train.threads={threads}"]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True)
    metrics = json.loads((out / "metrics.json").read_text())
    recorded = " ".join(command[1:]).replace(str(out), "<run folder>")  # no path of this machine
    return {"processes": processes, "threads_per_process": threads, "command": recorded,
            "train_samples_per_second": metrics["train_samples_per_second"],
            "train_seconds": metrics["train_seconds"], "test_auc": metrics["test"]["auc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/quickstart_eta.yaml")
    parser.add_argument("--steps", type=int, default=100, help="global steps of the one epoch that is timed")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for processes, threads in SETTINGS:
            runs = [run(args.config, processes, threads, args.steps, Path(tmp) / f"{processes}x{threads}-{i}")
                    for i in range(args.repeats)]
            best = max(runs, key=lambda r: r["train_samples_per_second"])
            best["all_samples_per_second"] = [r["train_samples_per_second"] for r in runs]
            results.append(best)
            print(f"{processes} process(es) x {threads} thread(s): {best['train_samples_per_second']:,.0f} samples/s "
                  f"(runs: {', '.join(f'{r:,.0f}' for r in best['all_samples_per_second'])}), test auc {best['test_auc']:.4f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "train_scale.json").write_text(json.dumps({"config": args.config, "steps": args.steps,
                                                          "results": results}, indent=2))


if __name__ == "__main__":
    main()
