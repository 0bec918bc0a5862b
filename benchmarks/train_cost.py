"""Steady-state training and inference samples/s and peak RSS as the history grows.

Measured like the peer harness (../shared/peers/fuxictr/bench.py) so the figures compare: the first
6 batches of 256 train samples (file order) are built once and cycled; 2 warm-up steps, then up to
40 steps or 20 s of training (forward, BCE, backward, clip 10, Adam) and up to 80 steps or 10 s of
inference (eval, no_grad); batch building is timed apart. Each (model, L) point runs in a fresh
process, so its peak RSS is its own. Configuration = the peer's: embedding 32 per feature (item +
category), user id, 64 bits, k 64, short 50, attention 64 x 2 heads, DNN [200, 80]. Each point runs
with the process settings `etarec train` runs its steps with (allocator.configure_step_process:
freed memory kept, passive OpenMP waits).

    python benchmarks/train_cost.py --workload ~/.cache/etarec-peer-data/synth_i100000_s2024
    python benchmarks/train_cost.py --workload .bench/synth_long16k --L 256,1024,4096,16384 --models eta,din,full_attention
    python benchmarks/train_cost.py --workload .bench/synth_long16k --device cuda --models eta,full_attention

With --device cuda the model and the 6 batches live on the GPU (copied once from pinned memory,
timed apart like the building); every timed step ends in a read of its loss, so the times are the
device's. --precision bfloat16 autocasts the training steps (as train.precision does).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "results" / "speed"
SCRATCH = Path(__file__).resolve().parents[1] / ".bench"  # gitignored working data
PEER_CONFIG = {"embedding_dim": 32, "short_len": 50, "hash_bits": 64, "top_k": 64, "heads": 2, "attention_dim": 64,
               "mlp": [200, 80], "use_user_id": True, "use_profile": False, "use_time": False, "use_action": False}


def measure(prepared: str, model_name: str, length: int, sparse: bool, threads: int | None, device: str = "cpu",
            precision: str = "float32") -> dict:
    import contextlib

    from etarec.allocator import configure_step_process

    configure_step_process()  # the process settings `etarec train` runs its steps with (before torch loads)
    import torch

    from etarec.config import build_config
    from etarec.data.batch import BatchBuilder
    from etarec.data.prepared import load_prepared
    from etarec.models import build_model
    from etarec.nn.embeddings import Vocab
    from etarec.train.optim import clip_gradients, make_optimizer

    if threads:
        torch.set_num_threads(threads)
    data = load_prepared(prepared)
    config = build_config({"model": {**PEER_CONFIG, "name": model_name, "long_len": length,
                                     "top_k": min(64, length), "sparse_embeddings": sparse}})
    device = torch.device(device)
    torch.manual_seed(0)
    model = build_model(config.model, Vocab.from_meta(data.meta)).to(device)
    model.embeddings.use_catalog(torch.from_numpy(data.item_category).to(device))  # as `etarec train` does
    optimizer = make_optimizer(model, config.train)
    builder = BatchBuilder(data, length, config.model.short_len)
    build_ms, copy_ms, batches = [], [], []
    for i in range(6):
        started = time.perf_counter()
        batches.append(builder.build(data.splits["train"], np.arange(i * 256, (i + 1) * 256)))
        build_ms.append(1000 * (time.perf_counter() - started))
    pad_frac = float(1 - np.mean([b.history_mask.float().mean().item() for b in batches]))
    if device.type == "cuda":
        for i, batch in enumerate(batches):
            pinned = batch.pin_memory()
            torch.cuda.synchronize(device)
            started = time.perf_counter()
            batches[i] = pinned.to(device)
            torch.cuda.synchronize(device)
            copy_ms.append(1000 * (time.perf_counter() - started))
        torch.cuda.reset_peak_memory_stats(device)
    parameters = list(model.parameters())
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bfloat16" \
        else contextlib.nullcontext

    def train_step(batch):
        with autocast():
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels)
        optimizer.zero_grad()
        loss.backward()
        clip_gradients(parameters, 10.0)
        optimizer.step()
        loss.item()

    def infer_step(batch):
        with torch.no_grad():
            torch.sigmoid(model(batch)).sum().item()

    def run(step, max_steps: int, max_seconds: float) -> tuple[float, int, float]:
        for i in range(2):
            step(batches[i % 6])
        times, started = [], time.perf_counter()
        while len(times) < max_steps and (len(times) < 3 or time.perf_counter() - started < max_seconds):
            t = time.perf_counter()
            step(batches[len(times) % 6])
            times.append(time.perf_counter() - t)
        return 256 * len(times) / sum(times), len(times), 1000 * float(np.median(times))

    model.train()
    train_sps, train_steps, train_ms = run(train_step, 40, 20.0)
    model.eval()
    infer_sps, infer_steps, infer_ms = run(infer_step, 80, 10.0)
    point = {"model": model_name, "L": length, "sparse_embeddings": sparse, "train_sps": train_sps,
             "infer_sps": infer_sps, "train_ms_per_step": train_ms, "infer_ms_per_step": infer_ms,
             "train_steps": train_steps, "infer_steps": infer_steps, "build_ms_per_batch": float(np.median(build_ms)),
             "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             "threads": torch.get_num_threads(), "num_items": data.meta["num_items"], "pad_frac": pad_frac,
             "device": str(device), "precision": precision}
    if device.type == "cuda":
        point |= {"device_name": torch.cuda.get_device_name(device), "copy_ms_per_batch": float(np.median(copy_ms)),
                  "peak_cuda_mb": torch.cuda.max_memory_allocated(device) / 2**20}
    return point


def prepare_workload(workload: Path, cache: Path) -> Path:
    """The peer's LongCTR folder -> etarec's prepared dataset (once)."""
    from etarec.config import DataConfig
    from etarec.data.prepare import prepare

    target = cache / f"prepared-{workload.name}"
    if not (target / "meta.json").is_file():
        prepare(DataConfig(dataset="longctr", path=str(workload)), target)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", type=Path, required=True, help="folder written by the peer's gen_data.py")
    parser.add_argument("--models", default="eta,din,full_attention")
    parser.add_argument("--L", default="256,1024,4096,16384")
    parser.add_argument("--sparse", action="store_true", help="sparse embedding gradients + SparseAdam")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precision", default="float32", choices=["float32", "bfloat16"], help="of the training steps")
    parser.add_argument("--cache", type=Path, default=SCRATCH, help="where prepared workloads are kept")
    parser.add_argument("--out", type=Path, default=OUT / "train_cost.json")
    parser.add_argument("--point", help=argparse.SUPPRESS)  # model,L,prepared: run one point in this process
    args = parser.parse_args()
    if args.point:
        model_name, length, prepared = args.point.split(",", 2)
        print(json.dumps(measure(prepared, model_name, int(length), args.sparse, args.threads, args.device,
                                 args.precision)))
        return
    prepared = prepare_workload(args.workload, args.cache)
    points = []
    workload = {"name": args.workload.name,
                "sha256_all": json.loads((args.workload / "meta.json").read_text())["sha256"]["all"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:  # after every point: a run stopped at a time limit keeps the points it finished
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"workload": workload, "device": args.device, "precision": args.precision,
                                   "points": points}, indent=2))
        tmp.replace(args.out)

    print("| model | L | train samples/s | infer samples/s | peak RSS MB | build ms/batch |\n|---|---|---|---|---|---|")
    for length in map(int, args.L.split(",")):
        for model_name in args.models.split(","):
            command = [sys.executable, __file__, "--workload", str(args.workload), "--point",
                       f"{model_name},{length},{prepared}", "--device", args.device, "--precision", args.precision] \
                + (["--sparse"] if args.sparse else []) + (["--threads", str(args.threads)] if args.threads else [])
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                tail = result.stderr.strip().splitlines()[-1:] or ["?"]
                print(f"| {model_name} | {length} | failed: {tail[0][:80]} | | | |", flush=True)
                points.append({"model": model_name, "L": length, "error": tail[0]})
            else:
                point = json.loads(result.stdout.strip().splitlines()[-1])
                points.append(point)
                print(f"| {model_name} | {length} | {point['train_sps']:,.0f} | {point['infer_sps']:,.0f} | "
                      f"{point['peak_rss_mb']:,.0f} | {point['build_ms_per_batch']:.1f} |", flush=True)
            write()
    plot(points, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, key, title in ((axes[0], "train_sps", "training"), (axes[1], "infer_sps", "inference")):
        for model_name in dict.fromkeys(p["model"] for p in points):
            rows = [p for p in points if p["model"] == model_name and key in p]
            axis.plot([p["L"] for p in rows], [p[key] for p in rows], marker="o", label=model_name)
        axis.set(xscale="log", yscale="log", xlabel="history length L", ylabel="samples/s", title=title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
