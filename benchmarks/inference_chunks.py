"""Inference in chunks on single-threaded workers against whole batches on torch's threads.

What `etarec evaluate` (and each run's valid/test scoring) does, `etarec.train.inference.predict`,
with its two ways of using the cores, in one process and alternating, quiet and beside one busy
process (`yes`, started and stopped here): `workers=1` scores each batch of 1,024 in one forward
on torch's threads (the way before chunks), the default cuts it into chunks scored by torch's
thread count of single-threaded workers. On the peer generator's long workload (as
benchmarks/pipeline.py), ETA with the peer's configuration, briefly trained by `etarec train`
at each L; samples/s over the valid split (5,000 samples), median of --repeats per setting.

    python benchmarks/inference_chunks.py                    # L = 256, 4096, 16384, 3 reps
    python benchmarks/inference_chunks.py --L 4096 --reps 1  # quicker

Writes benchmarks/results/speed/inference_chunks.json and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import pipeline  # noqa: E402  (the workload, the busy process, steal readings, JSON writing)

OUT = HERE / "results" / "speed" / "inference_chunks.json"
WAYS = {"whole batches, torch threads": 1, "chunks, single-threaded workers": None}


def checkpoint(config: Path, length: int, steps: int) -> Path:
    run_dir = pipeline.SCRATCH / "inference-chunks-runs" / f"eta-{length}"
    command = pipeline.etarec_cli() + ["train", "--config", str(config), "--out", str(run_dir), "--overwrite",
                                       "--no-progress", "--set", f"model.long_len={length}",
                                       "--set", f"model.top_k={min(64, length)}",
                                       "--set", f"train.max_steps_per_epoch={steps}"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=pipeline.ROOT)
    return run_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--L", default="256,4096,16384")
    parser.add_argument("--reps", type=int, default=3, help="quiet/loaded pairs per L (order flipped each rep)")
    parser.add_argument("--repeats", type=int, default=3, help="predict() calls per setting, median kept")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    from etarec.allocator import configure_step_process

    configure_step_process()  # as the CLI: passive OpenMP waits, freed memory kept; before torch loads
    from etarec.data.batch import BatchBuilder
    from etarec.data.prepare import ensure_prepared
    from etarec.store.checkpoint import load_checkpoint
    from etarec.train.inference import predict

    workload = pipeline.SCRATCH / "synth_long16k"
    pipeline.ensure_long_workload(workload)
    config = pipeline.write_config(workload, 256)
    points = []
    for length in [int(v) for v in args.L.split(",")]:
        model, model_config, _ = load_checkpoint(checkpoint(config, length, 20))
        data = ensure_prepared(model_config.data)
        builder = BatchBuilder(data, length, model_config.model.short_len, model.inputs)
        valid = data.splits["valid"]
        for rep in range(args.reps):
            for loaded in (False, True) if rep % 2 == 0 else (True, False):
                with pipeline.condition(loaded, "yes"):
                    before = pipeline.cpu_ticks()
                    for way, workers in WAYS.items():
                        rates = [predict(model, builder, valid, 1024, workers=workers)[1] for _ in range(args.repeats)]
                        points.append({"L": length, "rep": rep, "loaded": loaded, "way": way,
                                       "samples_per_second": float(np.median(rates)), "all": rates})
                    steal = pipeline.steal_share(before, pipeline.cpu_ticks())
                    for point in points[-len(WAYS):]:
                        point["steal_share"] = steal
                print(f"L={length} rep {rep} {'loaded' if loaded else 'quiet'}: "
                      + ", ".join(f"{p['way']} {p['samples_per_second']:,.0f}/s" for p in points[-len(WAYS):]),
                      file=sys.stderr, flush=True)

    lines = ["| L | way | quiet samples/s | loaded samples/s | loaded slowdown | chunks / whole, quiet / loaded |",
             "|---|---|---|---|---|---|"]
    for length in dict.fromkeys(p["L"] for p in points):
        medians = {(way, loaded): float(np.median([p["samples_per_second"] for p in points
                                                   if p["L"] == length and p["way"] == way and p["loaded"] == loaded]))
                   for way in WAYS for loaded in (False, True)}
        whole, chunks = WAYS
        for way in WAYS:
            gain = (f"{medians[(chunks, False)] / medians[(whole, False)]:.2f}x / "
                    f"{medians[(chunks, True)] / medians[(whole, True)]:.2f}x") if way == chunks else ""
            lines.append(f"| {length:,} | {way} | {medians[(way, False)]:,.0f} | {medians[(way, True)]:,.0f} | "
                         f"{medians[(way, False)] / medians[(way, True)]:.2f}x | {gain} |")
    table = "\n".join(lines)
    steals = [p["steal_share"] for p in points if p["steal_share"] is not None]
    record = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": pipeline.machine_info(),
              "settings": {"batch_size": 1024, "split": "valid", "reps": args.reps, "repeats": args.repeats,
                           "model_config": pipeline.PEER_MODEL, "trained_steps": 20},
              "points": points, "summary_markdown": table, "max_steal_share": max(steals, default=None),
              "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    pipeline.write_json(args.out, record)
    print(table)
    print(f"\nlargest stolen CPU share: {max(steals, default=0):.1%}; wrote {args.out}")


if __name__ == "__main__":
    main()
