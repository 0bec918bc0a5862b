"""Per-process memory of sharded tables and data by share, on 1 and 2 processes (torchrun, gloo).

    python benchmarks/scale_memory.py --part embeddings [--items 20000000] [--dim 32]
    python benchmarks/scale_memory.py --part data --prepared PREPARED_DIR

embeddings: the item table of a synthetic catalog (--items rows of --dim floats, small category
and user tables beside it) as model.embeddings: torchrec holds it, sharded by rows, after one
training step with Adam on the shards (weights, gradient and both moments are then allocated).
The model is built on the meta device, so no process ever holds the whole table. Reported: the
process's resident memory (RSS) grown from before the tables to after the step, and the bytes of
its shards, their gradients and moments.

data: the prepared dataset as each process keeps it (load_prepared(share=(rank, N)) on N > 1,
the whole dataset on 1): RSS grown by the load, and the bytes of its arrays. The load is done
twice: in a fresh process (what a process pays, the Parquet reader's one-time ~25-30 MB of
libraries and allocator pools included, whatever the share) and again after the first load was
dropped (the data part alone). Also the peak RSS during the first load: what the process keeps
when freed memory is kept for the steps (etarec/allocator.py, as `etarec train` does).

Each process prints one JSON line; results go to benchmarks/results/scale/memory_<part>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "scale"
REPO = Path(__file__).resolve().parents[1]


def rss_bytes() -> int:
    """Resident memory of this process now (from /proc, Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def embeddings_worker(items: int, dim: int) -> dict:
    import torch
    import torch.distributed as dist

    from etarec.config import build_config
    from etarec.models import build_model
    from etarec.nn.embeddings import Vocab
    from etarec.scale.tables import shard_model

    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    config = build_config({"model": {"name": "din", "embedding_dim": dim, "long_len": 16, "short_len": 8,
                                     "top_k": 8, "mlp": [32], "embeddings": "torchrec"}})
    vocab = Vocab(num_users=1000, num_items=items, num_categories=1000, num_actions=2)
    before = rss_bytes()
    with torch.device("meta"):  # the dense tables are never allocated
        model = build_model(config.model, vocab)
    model.head.to_empty(device="cpu")
    for module in (model.short_attention,):
        module.to_empty(device="cpu")
    fetching, dmp, shards = shard_model(model, size, torch.device("cpu"), "row_wise")
    rows = [shard.rows for shard in shards]
    optimizer = torch.optim.Adam(rows, lr=1e-3)
    generator = torch.Generator().manual_seed(rank)
    ids = torch.randint(1, items, (4096,), generator=generator)
    embeddings = fetching.model.embeddings
    embeddings.fetch(torch.randint(0, 1000, (64,), generator=generator), ids, ids % 1000)
    embeddings.items(ids, ids % 1000).sum().backward()
    optimizer.step()
    after = rss_bytes()
    held = sum(p.numel() * p.element_size() for p in rows)
    grads = sum(p.grad.numel() * p.grad.element_size() for p in rows if p.grad is not None)
    moments = sum(t.numel() * t.element_size() for p in rows for t in optimizer.state[p].values()
                  if torch.is_tensor(t) and t.dim() > 0)
    dist.barrier()
    return {"rank": rank, "processes": size, "items": items, "dim": dim, "rss_grown_bytes": cold, "peak_rss_grown_bytes": peak, "rss_grown_again_bytes": warm,
            "table_rows_held": sum(p.shape[0] for p in rows), "weights_bytes": held, "gradient_bytes": grads,
            "adam_moments_bytes": moments, "tensor_bytes": held + grads + moments}


def data_worker(prepared: str) -> dict:
    import ctypes
    import gc
    import resource

    import numpy as np
    import pyarrow as pa

    from etarec.data.prepared import load_prepared

    rank, size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    share = (rank, size) if size > 1 else None
    before = rss_bytes()
    data = load_prepared(prepared, share=share)
    cold = rss_bytes() - before
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before  # Linux: KiB
    del data
    gc.collect()
    pa.default_memory_pool().release_unused()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what the first load freed leaves the process
    before = rss_bytes()
    data = load_prepared(prepared, share=share)
    warm = rss_bytes() - before
    arrays = [*(getattr(data.sequences, name) for name in ("offsets", "item", "category", "timestamp", "action")),
              data.profiles, data.item_category]
    arrays += [getattr(split, name) for split in data.splits.values() for name in split.__dataclass_fields__]
    if data.shares:
        arrays += [share.ids for share in data.shares.values()]
    return {"rank": rank, "processes": size, "events_held": int(len(data.sequences.item)),
            "events_total": int(data.meta["num_events"]), "rss_grown_bytes": cold, "peak_rss_grown_bytes": peak, "rss_grown_again_bytes": warm,
            "array_bytes": int(sum(a.nbytes for a in arrays if isinstance(a, np.ndarray)))}


def launch(part: str, processes: int, extra: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory() as folder:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   __file__, "--worker", "--part", part, "--results", folder, *extra]
        subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
        return [json.loads((Path(folder) / f"rank{rank}.json").read_text()) for rank in range(processes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["embeddings", "data"], required=True)
    parser.add_argument("--items", type=int, default=20_000_000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--prepared", help="a prepared dataset folder (--part data)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = embeddings_worker(args.items, args.dim) if args.part == "embeddings" else data_worker(args.prepared)
        (Path(args.results) / f"rank{result['rank']}.json").write_text(json.dumps(result))
        return
    extra = ["--items", str(args.items), "--dim", str(args.dim)] if args.part == "embeddings" else ["--prepared", args.prepared]
    runs = {processes: launch(args.part, processes, extra) for processes in (1, 2)}
    key = "tensor_bytes" if args.part == "embeddings" else "array_bytes"
    summary = {}
    for measure in (key, "rss_grown_bytes", *(["rss_grown_again_bytes", "peak_rss_grown_bytes"] if args.part == "data" else [])):
        one = runs[1][0][measure]
        two = max(r[measure] for r in runs[2])
        summary[measure] = {"one_process": one, "two_processes_largest": two, "ratio": two / one}
        print(f"{measure}: 1 process {one / 2**30:.2f} GiB, 2 processes {two / 2**30:.2f} GiB each at most "
              f"({two / one:.3f}x)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"memory_{args.part}.json").write_text(json.dumps({"part": args.part, "summary": summary,
                                                                  "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
