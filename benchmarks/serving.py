"""Serving latency: the in-process Scorer, the ONNX graph on onnxruntime, and `etarec serve` under a
bounded loopback HTTP load.

The model is configs/quickstart_eta.yaml (d = 32, m = 64) with the paper's production window (short
48, top-k 48) and L = 1024 or 10000, with random weights: latency does not depend on what the
weights learned. The catalog is synthetic: 1M items, 10k categories, 100k users (raw ids are
decimal strings; requests send them as JSON integers, like MovieLens or Taobao ids).

    python benchmarks/serving.py                          # all parts, ~5 minutes on 2 cores
    python benchmarks/serving.py --parts scorer --requests 300
    python benchmarks/serving.py --parts http --clients 8 --http-requests 400

Results: benchmarks/results/serving/serving.json (written atomically) and a summary on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from etarec.config import load_config
from etarec.data.batch import Batch
from etarec.models import build_model
from etarec.nn.embeddings import Vocab
from etarec.store.catalog import encode_strings
from etarec.serve.scorer import History, Scorer
from etarec.atomic import atomic_write_bytes
from etarec.store.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "serving"
VOCAB = Vocab(num_users=100_001, num_items=1_000_002, num_categories=10_002, num_actions=6)
WINDOW = {"short_len": 48, "top_k": 48}


def make_checkpoint(folder: Path, long_len: int) -> Path:
    """A random-weights ETA checkpoint with a synthetic catalog; item i (>= 2) has raw id str(i)."""
    config = load_config(REPO / "configs" / "quickstart_eta.yaml",
                         [f"model.long_len={long_len}"] + [f"model.{key}={value}" for key, value in WINDOW.items()])
    torch.manual_seed(0)
    model = build_model(config.model, VOCAB)
    categories = np.random.default_rng(0).integers(2, VOCAB.num_categories, VOCAB.num_items)
    categories[:2] = [0, 1]
    catalog = {
        "item_raw_ids": encode_strings(["", ""] + [str(i) for i in range(2, VOCAB.num_items)]),
        "item_category": torch.from_numpy(categories),
        "user_raw_ids": encode_strings([""] + [str(i) for i in range(1, VOCAB.num_users)]),
        "user_profiles": torch.zeros((VOCAB.num_users, 0), dtype=torch.int64),
        "action_values": [1.0, 2.0, 3.0, 4.0, 5.0],
    }
    save_checkpoint(folder, model, config, VOCAB, catalog=catalog)
    return folder


def make_requests(count: int, length: int, candidates: int, seed: int) -> list[dict]:
    """Scorer.score keyword arguments: random histories (oldest first) and candidates, raw int ids."""
    rng = np.random.default_rng(seed)
    now = 1_700_000_000
    requests = []
    for _ in range(count):
        timestamps = np.sort(rng.integers(now - 3 * 365 * 86400, now, length))
        history = History(rng.integers(2, VOCAB.num_items, length).tolist(), timestamps.tolist(),
                          rng.integers(1, 6, length).astype(float).tolist())
        requests.append({"history": history, "candidates": rng.integers(2, VOCAB.num_items, candidates).tolist(),
                         "request_time": now, "user": int(rng.integers(1, VOCAB.num_users))})
    return requests


def summary(milliseconds: list[float]) -> dict:
    values = np.asarray(milliseconds)
    return {"n": len(values), "p50_ms": float(np.percentile(values, 50)), "p90_ms": float(np.percentile(values, 90)),
            "p99_ms": float(np.percentile(values, 99)), "mean_ms": float(values.mean()), "max_ms": float(values.max())}


def timed(fn, inputs: list, warmup: int = 10) -> dict:
    for item in inputs[:warmup]:
        fn(item)
    load_before = os.getloadavg()[0]
    latencies, cpu = [], []
    for item in inputs:
        started, cpu_started = time.perf_counter(), time.process_time()
        fn(item)
        latencies.append(1e3 * (time.perf_counter() - started))
        cpu.append(1e3 * (time.process_time() - cpu_started))
    # CPU time of the whole process per request: with other jobs on the box, wall time waits for
    # cores and CPU time does not
    return summary(latencies) | {"cpu_ms": summary(cpu), "loadavg_1min_before": load_before,
                                 "loadavg_1min_after": os.getloadavg()[0]}


def scorer_part(folders: dict[int, Path], shapes: list[tuple[int, int]], requests: int, threads: list[int]) -> list[dict]:
    results = []
    for length, candidates in shapes:
        inputs = make_requests(requests, length, candidates, seed=length)
        for count in threads:
            torch.set_num_threads(count)
            scorer = Scorer.load(folders[length], threads=count)
            result = timed(lambda request, scorer=scorer: scorer.score(**request), inputs)
            results.append({"what": "Scorer.score (raw ids in, probabilities out)", "L": length, "B": candidates,
                            "threads": count, **result})
            print(f"Scorer      L={length:5d} B={candidates:4d} threads={count}: p50 {result['p50_ms']:6.1f} ms  "
                  f"p99 {result['p99_ms']:6.1f} ms  cpu p50 {result['cpu_ms']['p50_ms']:6.1f} ms  "
                  f"(load {result['loadavg_1min_before']:.1f})")
    return results


def request_tensors(scorer: Scorer, request: dict) -> dict[str, torch.Tensor]:
    """The graph inputs of one request (N = 1): what the Scorer derives from raw ids, done up front."""
    catalog, history = scorer.catalog, request["history"]
    items = torch.from_numpy(catalog.items(history.items).index)[None]
    candidates = torch.from_numpy(catalog.items(request["candidates"]).index)[None]
    gaps = request["request_time"] - torch.tensor(history.timestamps)[None]
    return {"user": torch.tensor([request["user"]]), "user_profile": torch.zeros((1, 0), dtype=torch.int64),
            "history_items": items, "history_categories": torch.from_numpy(catalog.item_category)[items],
            "history_actions": torch.from_numpy(catalog.actions(history.actions)[0])[None],
            "history_time_gaps": gaps, "history_mask": torch.ones_like(items, dtype=torch.bool),
            "candidate_items": candidates, "candidate_categories": torch.from_numpy(catalog.item_category)[candidates]}


def onnx_part(folder: Path, length: int, candidates: int, requests: int, threads: int) -> list[dict]:
    """The exported graph on onnxruntime vs the same graph in PyTorch (no item cache), same inputs."""
    import onnxruntime

    from etarec.serve.export import RequestGraph, export_onnx

    torch.set_num_threads(threads)
    onnx_file = export_onnx(folder, folder / "model.onnx")
    scorer = Scorer.load(folder)
    inputs = [request_tensors(scorer, request) for request in make_requests(requests, length, candidates, seed=7)]
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
    graph = RequestGraph(_model(folder)).eval()
    arrays = [{key: value.numpy() for key, value in feeds.items()} for feeds in inputs]
    with torch.inference_mode():
        eager = timed(lambda feeds: graph(**feeds), inputs)
    runtime = timed(lambda feeds: session.run(["probabilities"], feeds), arrays)
    results = [{"what": "ONNX graph on onnxruntime (ids in)", "L": length, "B": candidates, "threads": threads, **runtime},
               {"what": "same graph in PyTorch eager, no item cache (ids in)", "L": length, "B": candidates,
                "threads": threads, **eager}]
    for result in results:
        print(f"{result['what'][:40]:40s} L={length} B={candidates}: p50 {result['p50_ms']:6.1f} ms  p99 {result['p99_ms']:6.1f} ms")
    return results


def _model(folder: Path) -> torch.nn.Module:
    from etarec.store.checkpoint import load_checkpoint

    return load_checkpoint(folder)[0]


def forward_part(folder: Path, length: int, candidates: int, requests: int, threads: int) -> dict:
    """The model's own forward on the equivalent Batch (one history row per candidate): the baseline."""
    torch.set_num_threads(threads)
    model = _model(folder)
    scorer = Scorer.load(folder)
    inputs = []
    for request in make_requests(requests, length, candidates, seed=11):
        feeds = request_tensors(scorer, request)
        # one row per candidate, each with the request's history
        rows = {name: feeds[name].expand(candidates, -1) for name in feeds if name.startswith(("history", "user_"))}
        inputs.append(Batch(user=feeds["user"].expand(candidates), target_item=feeds["candidate_items"][0],
                            target_category=feeds["candidate_categories"][0], labels=torch.zeros(candidates),
                            short_len=scorer.config.model.short_len, **rows))
    with torch.inference_mode():
        result = timed(model, inputs, warmup=2)
    print(f"model forward on a [B, L] Batch       L={length} B={candidates}: p50 {result['p50_ms']:6.1f} ms")
    return {"what": "model.forward on the equivalent Batch (B rows of the same history)", "L": length,
            "B": candidates, "threads": threads, **result}


def http_part(folder: Path, length: int, candidates: int, clients: int, total: int, threads: int | None) -> dict:
    """`etarec serve` in its own process; `clients` concurrent clients send `total` requests, then stop."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "etarec", "serve", "--checkpoint", str(folder), "--port", str(port)]
    command += ["--threads", str(threads)] if threads else []
    server = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"etarec serve exited: {server.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("etarec serve did not come up in 300 s") from None
                time.sleep(0.5)
        # bodies are encoded up front: the client shares the 2 cores with the server
        bodies = [json.dumps({"history": {"items": r["history"].items, "timestamps": r["history"].timestamps,
                                          "actions": r["history"].actions},
                              "candidates": r["candidates"], "request_time": r["request_time"], "user": r["user"]}).encode()
                  for r in make_requests(min(total, 50), length, candidates, seed=3)]

        def client(worker: int) -> list[tuple[float, int, float]]:
            outcomes = []
            with httpx.Client(timeout=60, headers={"content-type": "application/json"}) as session:
                for i in range(worker, total, clients):
                    started = time.perf_counter()
                    try:
                        answer = session.post(f"{url}/score", content=bodies[i % len(bodies)])
                        status = answer.status_code
                        scored = answer.json()["timing_ms"]["score"] if status == 200 else float("nan")
                    except httpx.HTTPError:
                        status, scored = -1, float("nan")
                    outcomes.append((1e3 * (time.perf_counter() - started), status, scored))
            return outcomes

        load_before = os.getloadavg()[0]
        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            outcomes = [outcome for part in pool.map(client, range(clients)) for outcome in part]
        seconds = time.perf_counter() - started
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
    finally:
        server.terminate()
        server.wait(timeout=60)
    latencies = [latency for latency, _, _ in outcomes]
    errors = sum(status != 200 for _, status, _ in outcomes)
    scored = [value for _, status, value in outcomes if status == 200]
    result = {"what": f"POST /score through `etarec serve`, {clients} concurrent clients, {total} requests",
              "L": length, "B": candidates, "server_threads": threads or torch.get_num_threads(), "clients": clients,
              "requests": total, "errors": errors, "seconds": seconds, "requests_per_second": total / seconds,
              **summary(latencies), "server_score_ms": summary(scored) if scored else None,
              "loadavg_1min_before": load_before, "loadavg_1min_after": os.getloadavg()[0],
              "server_metrics_count_line": next(line for line in metrics.splitlines()
                                                if line.startswith("etarec_score_latency_ms_count"))}
    print(f"HTTP        L={length} B={candidates} {clients} clients x {total}: {result['requests_per_second']:.1f} req/s, "
          f"p50 {result['p50_ms']:.1f} ms p99 {result['p99_ms']:.1f} ms, errors {errors}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["scorer", "onnx", "forward", "http"],
                        choices=["scorer", "onnx", "forward", "http"])
    parser.add_argument("--requests", type=int, default=300, help="timed requests per Scorer / ONNX measurement")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="Scorer worker threads (and torch threads of the caller)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--http-requests", type=int, default=400)
    parser.add_argument("--out", default=str(OUT / "serving.json"))
    args = parser.parse_args()

    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "torch": torch.__version__, "numpy": np.__version__},
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "results": []}
    shapes = [(1024, 1024), (10_000, 1000)]
    with tempfile.TemporaryDirectory(prefix="etarec-serving-") as tmp:
        folders = {length: make_checkpoint(Path(tmp) / f"L{length}", length) for length, _ in shapes}
        if "scorer" in args.parts:
            report["results"] += scorer_part(folders, shapes, args.requests, args.threads)
        if "onnx" in args.parts:
            report["results"] += onnx_part(folders[1024], 1024, 1024, args.requests, max(args.threads))
        if "forward" in args.parts:
            report["results"].append(forward_part(folders[1024], 1024, 1024, 20, max(args.threads)))
        if "http" in args.parts:
            report["results"].append(http_part(folders[1024], 1024, 1024, args.clients, args.http_requests, None))
    out = Path(args.out)
    atomic_write_bytes(out, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
