"""Serving latency: the in-process Scorer, the ONNX graph on onnxruntime, and `etarec serve` under a
bounded loopback HTTP load.

The model is configs/quickstart_eta.yaml (d = 32, m = 64) with the paper's production window (short
48, top-k 48) and L = 1024 or 10000, with random weights: latency does not depend on what the
weights learned. The catalog is synthetic: 1M items, 10k categories, 100k users (raw ids are
decimal strings; requests send them as JSON integers, like MovieLens or Taobao ids).

    python benchmarks/serving.py                          # all parts, ~5 minutes on 2 cores
    python benchmarks/serving.py --parts scorer --requests 300
    python benchmarks/serving.py --parts models --requests 100 --threads 2   # a row per model, L=1024, B=1024
    python benchmarks/serving.py --parts scorer --device cuda --threads 1   # the Scorer on a GPU
    python benchmarks/serving.py --parts http             # ~2 minutes: before/after, 1 and 8 clients, overload

The HTTP part starts `etarec serve` once per setting: --before (default `--workers 0`: the
one-request-at-a-time service scoring in its own process) and --after (default: the service's
defaults, one scoring worker per core), each under 1 and 8 closed-loop clients (--clients) with
history 1000 and 1000 candidates per request; then --after with a small --overload-queue under
--overload-clients (64) clients that send their next request as soon as one is answered, 503 or
not. The clients run on the same cores as the service.

Results: benchmarks/results/serving/serving.json (written atomically) and a summary on stdout.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from etarec.config import load_config
from etarec.data.batch import Batch
from etarec.models import MODELS, build_model
from etarec.nn.embeddings import Vocab
from etarec.store.catalog import encode_strings
from etarec.serve.scorer import History, Scorer
from etarec.atomic import atomic_write_bytes
from etarec.store.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "serving"
VOCAB = Vocab(num_users=100_001, num_items=1_000_002, num_categories=10_002, num_actions=6)
WINDOW = {"short_len": 48, "top_k": 48}


def make_checkpoint(folder: Path, long_len: int, model_name: str = "eta") -> Path:
    """A random-weights checkpoint (ETA's quickstart config, another model by name) with a synthetic
    catalog; item i (>= 2) has raw id str(i)."""
    config = load_config(REPO / "configs" / "quickstart_eta.yaml",
                         [f"model.long_len={long_len}", f"model.name={model_name}"]
                         + [f"model.{key}={value}" for key, value in WINDOW.items()])
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


def scorer_part(folders: dict[int, Path], shapes: list[tuple[int, int]], requests: int, threads: list[int],
                device: str = "cpu") -> list[dict]:
    results = []
    for length, candidates in shapes:
        inputs = make_requests(requests, length, candidates, seed=length)
        for count in threads:
            torch.set_num_threads(count)
            scorer = Scorer.load(folders[length], threads=count, device=device)
            result = timed(lambda request, scorer=scorer: scorer.score(**request), inputs)
            results.append({"what": "Scorer.score (raw ids in, probabilities out)", "L": length, "B": candidates,
                            "threads": count, "device": device, **result})
            print(f"Scorer {device:4s} L={length:5d} B={candidates:4d} threads={count}: p50 {result['p50_ms']:6.1f} ms  "
                  f"p99 {result['p99_ms']:6.1f} ms  cpu p50 {result['cpu_ms']['p50_ms']:6.1f} ms  "
                  f"(load {result['loadavg_1min_before']:.1f})")
    return results


def models_part(folder: Path, names: list[str], length: int, candidates: int, requests: int, threads: int,
                device: str = "cpu") -> list[dict]:
    """One Scorer row per model at the same shape: every model serves through its own forward."""
    inputs = make_requests(requests, length, candidates, seed=length)
    torch.set_num_threads(threads)
    results = []
    for name in names:
        scorer = Scorer.load(make_checkpoint(folder / name, length, name), threads=threads, device=device)
        result = timed(lambda request, scorer=scorer: scorer.score(**request), inputs)
        results.append({"what": f"Scorer.score, {name}", "model": name, "L": length, "B": candidates,
                        "threads": threads, "device": device, **result})
        print(f"Scorer {name:18s} L={length:5d} B={candidates:4d} threads={threads}: p50 {result['p50_ms']:6.1f} ms  "
              f"p99 {result['p99_ms']:6.1f} ms  cpu p50 {result['cpu_ms']['p50_ms']:6.1f} ms")
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


@contextlib.contextmanager
def running_service(folder: Path, serve_args: list[str]):
    """`etarec serve` on a free loopback port in its own process: yields its base url."""
    import httpx

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "etarec", "serve", "--checkpoint", str(folder), "--port", str(port), *serve_args]
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
        yield url
    finally:
        server.terminate()
        server.wait(timeout=60)


def http_bodies(length: int, candidates: int, count: int = 50) -> list[bytes]:
    """Request bodies, encoded up front: the clients share the 2 cores with the server."""
    return [json.dumps({"history": {"items": r["history"].items, "timestamps": r["history"].timestamps,
                                    "actions": r["history"].actions},
                        "candidates": r["candidates"], "request_time": r["request_time"], "user": r["user"]}).encode()
            for r in make_requests(count, length, candidates, seed=3)]


class LoopbackClient:
    """A minimal keep-alive HTTP/1.1 client for the load: pre-encoded requests, the status, two
    headers and the body back. httpx costs 3.5-6.5 ms of CPU per request here (measured, 8 and 64
    client threads), on the cores the service is measured on; this costs a small fraction of that."""

    def __init__(self, url: str, timeout: float):
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.address, self.timeout, self.sock, self.buffer = (host, int(port)), timeout, None, b""

    def post(self, path: str, body: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=self.timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buffer = b""
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.address[0]}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        self.sock.sendall(head + body)
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.lower().split(b": ", 1) for line in lines[1:] if b": " in line)
        length = int(headers.get(b"content-length", b"0"))
        while len(self.buffer) < length:
            self._read()
        payload, self.buffer = self.buffer[:length], self.buffer[length:]
        if headers.get(b"connection") == b"close":
            self.close()
        return status, headers, payload

    def _read(self) -> None:
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("the service closed the connection")
        self.buffer += data

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def http_load(url: str, bodies: list[bytes], clients: int, total: int, timeout: float = 30.0,
              honour_retry_after: bool = False) -> dict:
    """`clients` closed-loop clients send `total` requests between them, then stop. Each sends its
    next request as soon as the last is answered; after a 503 at once too, or, honouring
    Retry-After, that many seconds later."""
    def client(worker: int) -> list[tuple[float, int, float, str | None]]:
        outcomes = []
        session = LoopbackClient(url, timeout)
        for i in range(worker, total, clients):
            started = time.perf_counter()
            retry_after, scored = None, float("nan")
            try:
                status, headers, payload = session.post("/score", bodies[i % len(bodies)])
                retry_after = headers.get(b"retry-after", b"").decode() or None
                if status == 200:  # "timing_ms": {"queue": q, "score": s}}: read s without decoding 1000 scores
                    scored = float(payload.rsplit(b'"score":', 1)[1].strip(b" }"))
            except socket.timeout:
                status = -2
                session.close()
            except (OSError, ValueError, IndexError):  # connection lost, or an answer that is no HTTP
                status = -1
                session.close()
            outcomes.append((1e3 * (time.perf_counter() - started), status, scored, retry_after))
            if status == 503 and honour_retry_after and retry_after:
                time.sleep(float(retry_after))
        session.close()
        return outcomes

    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        outcomes = [outcome for part in pool.map(client, range(clients)) for outcome in part]
    seconds = time.perf_counter() - started
    ok = [latency for latency, status, _, _ in outcomes if status == 200]
    busy = [latency for latency, status, _, _ in outcomes if status == 503]
    statuses = Counter(status for _, status, _, _ in outcomes)
    return {"clients": clients, "honour_retry_after": honour_retry_after, "requests": total, "seconds": seconds,
            "ok": len(ok),
            "ok_per_second": len(ok) / seconds, **(summary(ok) if ok else {}),
            "busy_503": len(busy), "busy_latency_ms": summary(busy) if busy else None,
            "busy_without_retry_after": sum(1 for _, status, _, retry in outcomes if status == 503 and not retry),
            "timeouts": statuses[-2], "errors": sum(count for status, count in statuses.items() if status not in (200, 503)),
            "statuses": {str(status): count for status, count in sorted(statuses.items())},
            "server_score_ms": summary([s for _, status, s, _ in outcomes if status == 200]) if ok else None,
            "loadavg_1min_before": load_before, "loadavg_1min_after": os.getloadavg()[0]}


def http_part(folder: Path, length: int, candidates: int, servers: dict[str, list[str]], clients: list[int],
              total: int, overload_clients: int, overload_queue: int) -> list[dict]:
    """Each server setting under 1, 8, ... closed-loop clients; then the last setting with a small
    queue under `overload_clients` clients."""
    import httpx

    bodies = http_bodies(length, candidates)
    runs = [(name, serve_args, [(count, False) for count in clients], total) for name, serve_args in servers.items()]
    if overload_clients:  # clients that retry at once (a stress test), then clients that honour Retry-After
        name, serve_args = list(servers.items())[-1]
        runs.append((f"{name}, --queue {overload_queue}", [*serve_args, "--queue", str(overload_queue)],
                     [(overload_clients, False), (overload_clients, True)], max(total, 10 * overload_clients)))
    results = []
    for name, serve_args, loads, requests in runs:
        with running_service(folder, serve_args) as url:
            http_load(url, bodies, 4, 24)  # warm-up: every worker's allocator and caches
            for count, honour in loads:
                result = {"what": " ".join(["POST /score through etarec serve", *serve_args]),
                          "server": name, "serve_args": serve_args, "L": length, "B": candidates,
                          **http_load(url, bodies, count, requests, honour_retry_after=honour)}
                metrics = httpx.get(f"{url}/metrics", timeout=10).text
                result["server_metrics_count_line"] = next(line for line in metrics.splitlines()
                                                           if line.startswith("etarec_score_latency_ms_count"))
                results.append(result)
                busy = result["busy_latency_ms"]
                how = " honouring Retry-After" if honour else ""
                print(f"HTTP {name:28s} {count:3d} clients{how} x {requests}: {result['ok_per_second']:5.1f} ok/s, "
                      f"p50 {result.get('p50_ms', float('nan')):6.1f} ms p99 {result.get('p99_ms', float('nan')):6.1f} ms, "
                      f"503: {result['busy_503']}" + (f" (p99 {busy['p99_ms']:.1f} ms, max {busy['max_ms']:.1f} ms)" if busy else "")
                      + f", timeouts {result['timeouts']}, errors {result['errors']} (load {result['loadavg_1min_before']:.1f})")
    return results


def http_verdict(results: list[dict], before: str, after: str) -> dict:
    """The issue's acceptance figures: throughput and p99 at 8 clients against 1 client, same run."""
    pick = {(r["server"], r["clients"]): r for r in results}
    verdict = {}
    many = max((r["clients"] for r in results if r["server"] == after), default=1)
    if many == 1:
        return verdict
    if (before, many) in pick and (after, many) in pick:
        verdict["throughput_ratio"] = pick[(after, many)]["ok_per_second"] / pick[(before, many)]["ok_per_second"]
    for server in (before, after):
        if (server, 1) in pick and (after, many) in pick:
            verdict[f"p99_{many}_clients_over_single_client_p99_{server}"] = \
                pick[(after, many)]["p99_ms"] / pick[(server, 1)]["p99_ms"]
    if verdict:
        print("HTTP verdict: " + ", ".join(f"{key} {value:.2f}" for key, value in verdict.items()))
    return verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["scorer", "onnx", "forward", "http"],
                        choices=["scorer", "models", "onnx", "forward", "http"])
    parser.add_argument("--models", nargs="+", default=sorted(MODELS),
                        help="models of the `models` part: one Scorer row each at L=1024, B=1024")
    parser.add_argument("--requests", type=int, default=300, help="timed requests per Scorer / ONNX measurement")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1], help="Scorer worker threads (and torch threads of the caller)")
    parser.add_argument("--device", default="cpu", help="where the Scorer part runs: cpu or cuda")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8], help="closed-loop HTTP clients per run")
    parser.add_argument("--http-requests", type=int, default=320, help="requests per HTTP run")
    parser.add_argument("--http-history", type=int, default=1000, help="history length of each HTTP request")
    parser.add_argument("--http-candidates", type=int, default=1000, help="candidates of each HTTP request")
    parser.add_argument("--before", default="--workers 0 --queue 100000",
                        help="`etarec serve` options of the one-at-a-time service to compare with ('' to skip)")
    parser.add_argument("--after", default="", help="`etarec serve` options of the service measured (default: its defaults)")
    parser.add_argument("--overload-clients", type=int, default=64, help="then these many clients against --after "
                        "with --overload-queue (0: skip)")
    parser.add_argument("--overload-queue", type=int, default=8)
    parser.add_argument("--out", default=str(OUT / "serving.json"))
    args = parser.parse_args()

    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                          "torch": torch.__version__, "numpy": np.__version__, "scorer_device": args.device,
                          "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None},
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "results": []}
    shapes = [(1024, 1024), (10_000, 1000)]
    with tempfile.TemporaryDirectory(prefix="etarec-serving-") as tmp:
        folders = {length: make_checkpoint(Path(tmp) / f"L{length}", length) for length, _ in shapes}
        if "scorer" in args.parts:
            report["results"] += scorer_part(folders, shapes, args.requests, args.threads, args.device)
        if "models" in args.parts:
            report["results"] += models_part(Path(tmp) / "models", args.models, 1024, 1024, args.requests,
                                             max(args.threads), args.device)
        if "onnx" in args.parts:
            report["results"] += onnx_part(folders[1024], 1024, 1024, args.requests, max(args.threads))
        if "forward" in args.parts:
            report["results"].append(forward_part(folders[1024], 1024, 1024, 20, max(args.threads)))
        if "http" in args.parts:
            servers = {"one at a time (before)": args.before.split()} if args.before.strip() else {}
            servers["workers (after)"] = args.after.split()
            results = http_part(folders[1024], args.http_history, args.http_candidates, servers, args.clients,
                                args.http_requests, args.overload_clients, args.overload_queue)
            report["results"] += results
            report["http_verdict"] = http_verdict(results, "one at a time (before)", "workers (after)")
    out = Path(args.out)
    atomic_write_bytes(out, lambda tmp: tmp.write_text(json.dumps(report, indent=2)))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
