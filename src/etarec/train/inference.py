"""Scoring a split: the model's own forward over batches, in sample order (evaluation, `etarec evaluate`).

On the CPU, each batch is cut into chunks of rows and `workers` threads (torch's thread count by
default) score whole chunks, each running torch single-threaded; the chunks' probabilities are
put back in order. Why not one forward over the batch with torch's own threads: that forward is
hundreds of parallel regions, each ending when its slowest thread does. Measured on the peer's
L = 4,096 workload (ETA, 5,000 samples, 2 cores, the CLI's passive OpenMP waits): 15,100 samples/s
with 2 OpenMP threads, 19,900 with 2 single-threaded workers; beside one busy process 9,200
against 12,800 (benchmarks/inference_chunks.py; RESULTS.md, "Inference in chunks"). A
descheduled worker delays its own chunk only; the other worker goes on to the next.

A chunk's rows and window positions are capped by constants (not by the worker count), so the
probabilities do not depend on how many workers there are: rows are scored independently, and
tests/test_inference.py checks every model's chunked scores equal to one forward over the batch.
The item cache (ETA's signatures) is filled for the whole catalog before the first chunk, so the
forwards only read it and the workers can share it.
"""
from __future__ import annotations

import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from etarec.data.batch import BatchBuilder
from etarec.data.prepared import Samples

CHUNK_ROWS = 256  # at most this many rows per forward on the CPU...
CHUNK_POSITIONS = 2**20  # ...and this many window positions (rows x L): long windows take fewer rows


def chunk_rows(long_len: int) -> int:
    """Rows per chunk at window length L: 256 up to L = 4,096, then fewer (64 at 16,384), so one
    chunk's intermediates ([rows, L, ...]) stay about the same size at any L."""
    return max(1, min(CHUNK_ROWS, CHUNK_POSITIONS // max(long_len, 1)))


@torch.no_grad()
def predict(model: nn.Module, builder: BatchBuilder, samples: Samples, batch_size: int,
            progress: bool = False, description: str = "evaluate", workers: int | None = None,
            rows: int | None = None) -> tuple[np.ndarray, float]:
    """(probabilities [N], inference samples/s) over a split, in sample order.

    workers: threads scoring chunks on the CPU (None: torch's thread count; 1: each batch in one
    forward on torch's threads, e.g. when every forward is collective across processes). rows:
    rows per chunk (None: chunk_rows(L))."""
    model.eval()
    device = next(model.parameters()).device
    workers = torch.get_num_threads() if workers is None else workers
    total = math.ceil(len(samples) / batch_size)
    started = time.perf_counter()
    batches = tqdm(builder.batches(samples, batch_size), total=total, desc=description, disable=not progress,
                   leave=False)
    if device.type == "cpu" and workers > 1:
        outputs = _in_chunks(model, builder, batches, workers, rows or chunk_rows(builder.long_len))
    else:
        cache = model.item_cache()  # the weights hold still here: each item's signature is hashed once
        outputs = [torch.sigmoid(model(batch.to(device), cache)).cpu() for batch in batches]
    seconds = time.perf_counter() - started
    probabilities = torch.cat(outputs).numpy() if outputs else np.zeros(0, dtype=np.float32)
    return probabilities, len(samples) / max(seconds, 1e-9)


def _in_chunks(model: nn.Module, builder: BatchBuilder, batches, workers: int, rows: int) -> list[torch.Tensor]:
    """Each batch's probabilities, chunk by chunk from the workers, in order. At most 2 x workers
    chunks wait or run at a time: the next batch is built while the current one is scored."""
    cache = model.item_cache()
    if cache is not None:  # the whole catalog now: the forwards below only read the cache
        cache.fill_catalog(torch.from_numpy(builder.data.item_category))

    def score(chunk) -> torch.Tensor:  # [rows] in a worker, torch single-threaded there
        with torch.no_grad():  # grad mode is per thread: the caller's does not reach the workers
            return torch.sigmoid(model(chunk, cache))

    outputs: list[torch.Tensor] = []
    pending: deque = deque()
    with ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,),
                            thread_name_prefix="etarec-predict") as pool:
        for batch in batches:
            for start in range(0, len(batch), rows):
                pending.append(pool.submit(score, batch.rows(start, start + rows)))
            while len(pending) > 2 * workers:
                outputs.append(pending.popleft().result())
        outputs += [future.result() for future in pending]
    return outputs
