"""Retrieval alone: packed Hamming top-k vs exact inner-product top-k vs float-code abs-diff top-k.

B candidates (one per sample) each retrieve k of their sample's L behaviours. Inputs are what each
method needs at retrieval time: item ids + a packed signature table (etarec), the window's
embeddings (inner product), or per-position float 0/1 codes (the formulation FuxiCTR's ETA uses).
All variants run in one process, interleaved, and are reported as ratios to etarec's. The floor is
the time to read the window's item ids and packed codes once at this machine's memory bandwidth
(measured here with a large numpy copy/sum).

With --device cuda everything lives on the GPU and is timed with CUDA events; etarec's path is
then table_order_keys compiled into one kernel plus a top-k (`packed_hamming`), next to the same
keys from eager torch ops (`packed_eager_keys`), and the floor uses the device's copy bandwidth:
a large tensor copied on the device, bytes read plus bytes written per second.

    python benchmarks/retrieval.py                       # B=256, L in 1024,4096,16384, m in 32,64,128
    python benchmarks/retrieval.py --L 4096 --bits 64 --reps 5
    python benchmarks/retrieval.py --device cuda --L 4096,16384,65536 --bits 64 --out benchmarks/results/gpu/retrieval.json
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from etarec.retrieval import simhash as simhash_module
from etarec.retrieval.simhash import SimHash, hamming_top_k, table_hamming_top_k, table_order_keys

OUT = Path(__file__).parent / "results" / "speed"


def memory_bandwidth_bytes_per_s(size_mb: int = 512, reps: int = 5) -> float:
    """Sustained read bandwidth of one pass over a large array (the same single-pass pattern
    retrieval has), best of `reps`."""
    data = np.ones(size_mb * 2**20 // 8, dtype=np.int64)
    best = float("inf")
    for _ in range(reps):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return data.nbytes / best


def device_copy_bandwidth_bytes_per_s(device: torch.device, size_mb: int = 2048, reps: int = 10) -> float:
    """A large tensor copied on the device (bytes read + bytes written per second), best of
    `reps`, timed with CUDA events."""
    source = torch.ones(size_mb * 2**20 // 8, dtype=torch.int64, device=device)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(reps + 2):  # two warm-ups
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        target.copy_(source)
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1000)
    return 2 * source.nbytes / best


def median_ms(fn, reps: int, device: torch.device = torch.device("cpu")) -> float:
    fn()  # warm-up (on CUDA: the first call also compiles)
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            started = time.perf_counter()
            fn()
            times.append(time.perf_counter() - started)
    return 1000 * float(np.median(times))


def run_point(batch: int, length: int, bits: int, dim: int, k: int, num_items: int, reps: int, seed: int = 0,
              device: torch.device = torch.device("cpu")) -> dict:
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(num_items, dim, generator=g).to(device)  # [V, d] item embeddings
    simhash = SimHash(dim, bits, seed=seed).to(device)
    table_codes = simhash(table)  # [V, W], cached once per checkpoint in eval/serving
    history = torch.randint(2, num_items, (batch, length), generator=g).to(device)  # [B, L]
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=g).to(device)
    mask = torch.arange(length, device=device)[None, :] >= (length - lengths)[:, None]  # left padding
    target = torch.randint(2, num_items, (batch,), generator=g).to(device)
    query = table[target]  # [B, d]
    query_codes = table_codes[target]  # [B, W]

    def packed():  # etarec: fused kernel reading ids + the signature table, counting top-k
        return table_hamming_top_k(query_codes, table_codes, history, mask, k)

    def packed_tensor():  # etarec's fallback without a C compiler: gather, XOR + popcount, topk
        return hamming_top_k(query_codes, table_codes[history], mask, k)

    def packed_eager_keys():  # the device path's keys from eager torch ops (what compiling fuses)
        keys = table_order_keys(query_codes, table_codes, history, mask)
        return simhash_module._smallest_keys(keys, (64 * table_codes.shape[1] + 1) * length, k)

    window_embeddings = table[history]  # [B, L, d] what inner-product retrieval reads

    def inner_product():
        scores = torch.einsum("bld,bd->bl", window_embeddings, query).masked_fill(~mask, float("-inf"))
        return torch.topk(scores, k, dim=1)

    float_codes = (window_embeddings @ simhash.projection > 0).float()  # [B, L, m] 0/1 as float32
    query_float = (query @ simhash.projection > 0).float()  # [B, m]

    def float_abs_diff():
        distance = (float_codes - query_float[:, None, :]).abs().sum(-1).masked_fill(~mask, float("inf"))
        return torch.topk(distance, k, dim=1, largest=False)

    index, _ = packed()
    variants = {"packed_hamming": packed, "packed_tensor_fallback": packed_tensor, "inner_product": inner_product,
                "float_abs_diff": float_abs_diff, "packed_eager_keys": packed_eager_keys}
    same = {name: bool(torch.equal(fn()[0], index)) for name, fn in variants.items()
            if name.startswith("packed")}  # every packed variant selects the same behaviours
    ms = {name: [] for name in variants}
    for _ in range(reps):  # interleaved A B C A B C: drift hits every variant alike
        for name, fn in variants.items():
            ms[name].append(median_ms(fn, 3, device))
    result = {name: float(np.median(values)) for name, values in ms.items()}
    floor_bytes = history.numel() * history.element_size() + history.numel() * table_codes.shape[1] * 8
    return {
        "B": batch, "L": length, "m": bits, "d": dim, "k": k, "device": str(device), "ms": result,
        "ratio_to_packed": {name: value / result["packed_hamming"] for name, value in result.items()},
        "floor_bytes": floor_bytes,
        "found_per_row_min": int(index.shape[1]),
        "same_indices_as_packed": same,
        "compiled": device.type == "cuda" and simhash_module.compiled_path(history),
        "compile_failed": list(simhash_module._compile_failed),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--B", type=int, default=256)
    parser.add_argument("--L", default="1024,4096,16384")
    parser.add_argument("--bits", default="32,64,128")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (floor: the device's copy bandwidth)")
    parser.add_argument("--out", type=Path, default=OUT / "retrieval.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        bandwidth = device_copy_bandwidth_bytes_per_s(device)
        print(f"{torch.cuda.get_device_name(device)}: copy bandwidth (read + write) {bandwidth / 1e9:.1f} GB/s")
    else:
        bandwidth = memory_bandwidth_bytes_per_s()
        print(f"memory read bandwidth: {bandwidth / 1e9:.1f} GB/s; torch threads {torch.get_num_threads()}")
    points = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"bandwidth_bytes_per_s": bandwidth, "bandwidth_kind": "copy, read + write" if device.type == "cuda"
               else "numpy sum, read", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
               "threads": torch.get_num_threads(), "torch": torch.__version__,
               "numpy": np.__version__, "machine": platform.machine(), "points": points}
    header = ("| L | m | packed Hamming ms | tensor fallback ms | inner product ms | float abs-diff ms | "
              "IP / packed | abs-diff / packed | packed / floor |")
    print(header + "\n|---|---|---|---|---|---|---|---|---|")
    for length in map(int, args.L.split(",")):
        for bits in map(int, args.bits.split(",")):
            point = run_point(args.B, length, bits, args.dim, args.k, args.items, args.reps, device=device)
            floor_ms = 1000 * point["floor_bytes"] / bandwidth
            point["floor_ms"] = floor_ms
            point["packed_over_floor"] = point["ms"]["packed_hamming"] / floor_ms
            point["packed_bytes_per_s"] = point["floor_bytes"] / (point["ms"]["packed_hamming"] / 1000)
            points.append(point)
            ms, ratio = point["ms"], point["ratio_to_packed"]
            print(f"| {length} | {bits} | {ms['packed_hamming']:.3f} | {ms['packed_tensor_fallback']:.3f} | {ms['inner_product']:.3f} | "
                  f"{ms['float_abs_diff']:.3f} | {ratio['inner_product']:.1f}x | {ratio['float_abs_diff']:.1f}x | "
                  f"{point['packed_over_floor']:.1f}x | eager keys {ms['packed_eager_keys']:.3f} ms |", flush=True)
            tmp = args.out.with_suffix(".tmp")  # after every point: a run stopped at a time limit keeps its points
            tmp.write_text(json.dumps(payload, indent=2))
            tmp.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
