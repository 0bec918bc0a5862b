"""`etarec serve`: the Scorer behind HTTP (FastAPI + uvicorn).

    POST /score    {"user": 42, "history": {"items": [...], "timestamps": [...], "actions": [...]},
                    "candidates": [...], "request_time": 1700000000}
                -> {"scores": [...], "model": "eta", "version": "eta-1a2b3c...", "warnings": [...],
                    "timing_ms": {"queue": .., "score": ..}}
    GET  /healthz  model and version
    GET  /metrics  request counts by status, a latency histogram, the queue (Prometheus text format)

Every bad request gets one JSON {"error": "<field>: <problem and fix>"}: 422 for malformed JSON
(invalid UTF-8 and too deep nesting included), wrong types and inconsistent fields, 413 past the
configured limits. The body limit is applied while the body is read, so a chunked upload (no
Content-Length) is cut off as soon as it passes the limit.

Concurrency: `Workers` scoring processes each load the checkpoint and score one request at a time
with torch single-threaded; the service process only speaks HTTP and hands each request to a free
worker. Processes, not threads: a request is hundreds of small torch ops, and between them Python
holds the GIL: two threads scoring at once in one process got no more requests/s than one request
at a time over the Scorer's 2 threads, two processes 1.6x (2 cores, L = 1024, B = 1000;
benchmarks/RESULTS.md, "Service under concurrent load"). At most `Limits.queue` requests wait for a free
worker; beyond that a request is answered 503 with Retry-After at once instead of queueing without
bound. Without Workers (`--workers 0`) the given Scorer scores in the service process, one request
at a time, spread over the Scorer's threads: one copy of the model, the lowest latency when
requests come one at a time.
"""
from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from starlette.exceptions import HTTPException

from etarec.errors import EtarecError
from etarec.serve.scorer import BadRequest, History, Scorer

ItemId = StrictInt | StrictStr
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 15, 20, 30, 50, 100, 200, 500, 1000, 5000)
EXAMPLE = '{"history": {"items": [1, 2]}, "candidates": [3, 4]}'
ROUTES = ("/score", "/healthz", "/metrics")
BYTES_PER_ID = 64  # generous JSON size of one history behaviour (id, timestamp, action) or candidate


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Limits:
    max_candidates: int = 4096
    max_history: int = 100_000  # behaviours accepted; the model uses the most recent long_len of them
    queue: int = 32  # requests waiting for a free worker; one more is answered 503

    def __post_init__(self):
        if self.max_candidates < 1 or self.max_history < 0 or self.queue < 0:
            raise EtarecError(f"limits must be positive (--max-candidates {self.max_candidates}, "
                              f"--max-history {self.max_history}, --queue {self.queue})")

    @property
    def max_body_bytes(self) -> int:
        return BYTES_PER_ID * (self.max_history + self.max_candidates) + 65_536


@dataclass(frozen=True)
class Workers:
    """`count` scoring processes, each loading `checkpoint` and running torch with `threads` threads."""

    checkpoint: Path
    count: int = 2
    threads: int = 1

    def __post_init__(self):
        if self.count < 1 or self.threads < 1:
            raise EtarecError(f"--workers {self.count} and --threads {self.threads} must be at least 1 "
                              "(--workers 0: score in the service process)")


class HistoryIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[ItemId] = Field(default_factory=list)  # oldest first
    timestamps: list[StrictInt] | None = None  # Unix seconds, one per item
    actions: list[float] | None = None  # raw action values (e.g. ratings), one per item


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    candidates: list[ItemId]
    history: HistoryIn = Field(default_factory=HistoryIn)
    user: ItemId | None = None
    request_time: StrictInt | None = None  # Unix seconds; default: now


class Metrics:
    """Request counts by (path, status) and the latency histogram of POST /score."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: Counter = Counter()
        self.buckets = [0] * len(LATENCY_BUCKETS_MS)
        self.latency_sum_ms = 0.0
        self.latency_count = 0

    def record(self, path: str, status: int, milliseconds: float) -> None:
        with self.lock:
            self.requests[(path, status)] += 1
            if path == "/score":
                self.latency_sum_ms += milliseconds
                self.latency_count += 1
                for i, bound in enumerate(LATENCY_BUCKETS_MS):
                    self.buckets[i] += milliseconds <= bound

    def text(self, gauges: dict[str, int] | None = None) -> str:
        with self.lock:
            lines = ["# TYPE etarec_requests_total counter"]
            lines += [f'etarec_requests_total{{path="{path}",status="{status}"}} {count}'
                      for (path, status), count in sorted(self.requests.items())]
            lines.append("# TYPE etarec_score_latency_ms histogram")
            lines += [f'etarec_score_latency_ms_bucket{{le="{bound}"}} {count}'
                      for bound, count in zip(LATENCY_BUCKETS_MS, self.buckets)]
            lines += [f'etarec_score_latency_ms_bucket{{le="+Inf"}} {self.latency_count}',
                      f"etarec_score_latency_ms_sum {self.latency_sum_ms:.3f}",
                      f"etarec_score_latency_ms_count {self.latency_count}"]
        for name, value in (gauges or {}).items():
            lines += [f"# TYPE {name} gauge", f"{name} {value}"]
        return "\n".join(lines) + "\n"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _validation_message(errors: list[dict]) -> str:
    """The first problem as "<field>: <what is wrong>" (e.g. "history.items: item 3 ...")."""
    first = errors[0]
    location = [part for part in first["loc"] if part != "body"]
    if first["type"] == "json_invalid":
        problem = first.get("ctx", {}).get("error", "parse error")
        if "recursion limit" in problem:
            return f"body: nested too deeply to be a request ({problem}); send {EXAMPLE}"
        hint = "; JSON text must be UTF-8" if "unicode" in problem or "utf" in problem.lower() else ""
        return f"body: not valid JSON ({problem}){hint}; send {EXAMPLE}"
    if not location:
        return f"body: {first['msg']}; send a JSON object (Content-Type: application/json) like {EXAMPLE}"
    # pydantic ends the location of a failed int | str union with the member's name
    union = location[-1] in ("int", "str")
    location = location[:-1] if union else location
    field = ".".join(str(part) for part in location if isinstance(part, str)) or "body"
    index = [part for part in location if isinstance(part, int)]
    where = f"item {index[0]}: " if index else ""
    message = "expected an id (an integer or a string)" if union else first["msg"]
    return f"{field}: {where}{message}"


# ----------------------------------------------------------------------------------------------
# the body limit and the metrics, applied to every request (a plain ASGI middleware)
# ----------------------------------------------------------------------------------------------


class Guard:
    """Reads each request body itself, stopping with 413 as soon as it passes the limit (declared
    or streamed), then hands the body to the app; records every response's status and latency."""

    def __init__(self, app, limits: Limits, metrics: Metrics):
        self.app, self.limits, self.metrics = app, limits, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path = scope["path"] if scope["path"] in ROUTES else "other"  # bounded label set
        status = 500  # unless a response starts: an exception answered by the 500 handler outside

        async def noting(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            body = await self._body(scope, receive, noting)
            if body is None:  # answered (413) or the client left
                status = status if status != 500 else 499
                return
            replayed = False

            async def replay():
                nonlocal replayed
                if replayed:
                    return await receive()  # after the body: only the disconnect is left to hear
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}

            await self.app(scope, replay, noting)
        finally:
            self.metrics.record(path, status, 1e3 * (time.perf_counter() - started))

    async def _body(self, scope, receive, send) -> bytes | None:
        limit = self.limits.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > limit:
            await self._too_large(scope, receive, send, f"{int(declared)} bytes")
            return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect: the client went away mid-body
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:  # stop reading here: the rest of the body is never taken in
                await self._too_large(scope, receive, send, f"at least {size} bytes")
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _too_large(self, scope, receive, send, size: str) -> None:
        response = _error(413, f"body: {size}, the limit is {self.limits.max_body_bytes}; send fewer candidates "
                               "or a shorter history (the limit follows from --max-candidates and --max-history)",
                          headers={"connection": "close"})  # the unread rest of the body ends the connection
        await response(scope, receive, send)


# ----------------------------------------------------------------------------------------------
# scoring: in this process, or in worker processes; a bounded queue in front of either
# ----------------------------------------------------------------------------------------------


def _score(scorer: Scorer, job: dict) -> tuple:
    """One request -> ("ok", probabilities, warnings, score ms) | ("bad", message) | ("error", message)."""
    started = time.perf_counter()
    try:
        result = scorer.score(History(job["items"], job["timestamps"], job["actions"]), job["candidates"],
                              job["request_time"], job["user"])
    except BadRequest as error:
        return ("bad", str(error))
    except Exception as error:  # noqa: BLE001 - answered 500; the service keeps running
        return ("error", f"{type(error).__name__}: {error}")
    return ("ok", result.probabilities, result.warnings, 1e3 * (time.perf_counter() - started))


class _Local:
    """The service process's own Scorer (one request at a time; its threads spread it over the cores)."""

    def __init__(self, scorer: Scorer):
        self.scorer = scorer

    def call(self, job: dict) -> tuple[tuple, float]:
        started = time.perf_counter()
        return _score(self.scorer, job), started

    def close(self) -> None:
        pass


def _score_forever(connection, checkpoint: str, threads: int) -> None:
    """A worker process: load the checkpoint, then score the jobs that arrive, one at a time."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the service stops us
    import torch

    from etarec.allocator import keep_freed_memory

    keep_freed_memory()  # a spawned process starts with malloc's defaults

    torch.set_num_threads(threads)
    try:
        scorer = Scorer.load(checkpoint, threads=threads)
    except Exception as error:  # noqa: BLE001 - reported by the service as one line
        connection.send(("failed", str(error) if isinstance(error, EtarecError) else f"{type(error).__name__}: {error}"))
        return
    connection.send(("ready", scorer.model_name, scorer.version))
    while True:
        try:
            job = connection.recv()
        except (EOFError, OSError):  # the service is gone
            return
        if job is None:
            return
        try:
            connection.send(_score(scorer, job))
        except OSError:  # the service is gone
            return


class _Remote:
    """One scoring process and its pipe; used by one dispatch thread at a time."""

    def __init__(self, workers: Workers, index: int):
        self.workers, self.index = workers, index
        self.process = self.connection = None
        self.identity: tuple[str, str] | None = None  # (model, version) it loaded
        self.stopping = threading.Lock()  # the dispatch thread and the service's shutdown may both stop it

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process holding threads
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_score_forever, name=f"etarec-scorer-{self.index}", daemon=True,
                                       args=(child, str(self.workers.checkpoint), self.workers.threads))
        self.process.start()
        child.close()

    def ready(self) -> tuple[str, str]:
        """Wait for the loaded checkpoint's (model, version); one EtarecError line when it failed."""
        try:
            while not self.connection.poll(0.2):
                if not self.process.is_alive():
                    raise EOFError
            message = self.connection.recv()
        except (EOFError, OSError):
            self.process.join(timeout=5)
            code = self.process.exitcode
            self.stop()
            raise EtarecError(f"scoring worker {self.index} exited while loading {self.workers.checkpoint} "
                              f"(exit code {code}); check memory, or run with --workers 0") from None
        if message[0] != "ready":
            self.stop()
            raise EtarecError(message[1])
        if self.identity is None:  # the first load: what this worker serves from now on
            self.identity = message[1], message[2]
        return message[1], message[2]

    def call(self, job: dict) -> tuple[tuple, float]:
        started = time.perf_counter()
        try:
            if self.process is None:  # restart after a crash
                self.start()
                if self.ready() != self.identity:
                    self.stop()
                    return ("error", f"{self.workers.checkpoint} changed since the service started; restart the "
                                     "service to serve the new model"), started
                started = time.perf_counter()
            connection = self.connection  # the service's shutdown may close it meanwhile: then OSError
            connection.send(job)
            return connection.recv(), started
        except (EOFError, OSError, EtarecError) as error:
            code = self.process.exitcode if self.process is not None else None
            self.stop()
            return ("error", f"scoring worker {self.index} failed ({error or f'exit code {code}'}); it is "
                             "restarted for the next request, send this one again"), started

    def stop(self) -> None:
        with self.stopping:
            if self.process is None:
                return
            try:
                self.connection.send(None)
            except (OSError, ValueError):
                pass
            self.process.join(timeout=5)
            if self.process.is_alive():  # busy or hung: a request in flight gets its 500
                self.process.kill()
                self.process.join(timeout=5)
            self.connection.close()
            self.process = self.connection = None

    close = stop


def start_workers(workers: Workers) -> tuple[list[_Remote], str, str]:
    """Start the scoring processes (loading in parallel); (them, model name, version)."""
    remotes = [_Remote(workers, index) for index in range(workers.count)]
    try:
        for remote in remotes:
            remote.start()
        identities = {remote.ready() for remote in remotes}
    except BaseException:
        for remote in remotes:
            remote.stop()
        raise
    if len(identities) > 1:
        for remote in remotes:
            remote.stop()
        raise EtarecError(f"{workers.checkpoint / 'model.pt'} changed while the scoring workers loaded it; "
                          "start the service again once it is written")
    (model_name, version), = identities
    return remotes, model_name, version


class Dispatcher:
    """Hands each admitted request to a free worker; at most `queue` requests wait for one."""

    def __init__(self, workers: list, queue: int):
        self.workers, self.queue = workers, queue
        self.idle: asyncio.Queue = asyncio.Queue()
        for worker in workers:
            self.idle.put_nowait(worker)
        self.threads = ThreadPoolExecutor(len(workers), thread_name_prefix="etarec-dispatch")
        self.admitted = 0  # scoring + waiting (only touched on the event loop)
        self.scoring = 0
        self.mean_score_s = 0.05  # moving average, for Retry-After

    @property
    def full(self) -> bool:
        return self.admitted >= len(self.workers) + self.queue

    def retry_after(self) -> int:
        """Seconds until a slot is likely free (HTTP wants whole seconds: at least 1)."""
        return max(1, math.ceil(self.admitted / len(self.workers) * self.mean_score_s))

    async def run(self, job: dict) -> tuple[tuple, float]:
        self.admitted += 1
        try:
            worker = await self.idle.get()
            self.scoring += 1
            loop = asyncio.get_running_loop()
            future = self.threads.submit(worker.call, job)
            # the worker is free again when its call ends, even if this coroutine is cancelled first
            future.add_done_callback(lambda _: self._release(loop, worker))
            outcome, started = await asyncio.wrap_future(future)
            if outcome[0] == "ok":
                self.mean_score_s += 0.1 * (outcome[3] / 1e3 - self.mean_score_s)
            return outcome, started
        finally:
            self.admitted -= 1

    def _release(self, loop, worker) -> None:
        def free():
            self.scoring -= 1
            self.idle.put_nowait(worker)

        try:
            loop.call_soon_threadsafe(free)
        except RuntimeError:  # the loop has closed: the service is stopping
            pass

    def gauges(self) -> dict[str, int]:
        return {"etarec_scoring_workers": len(self.workers), "etarec_requests_scoring": self.scoring,
                "etarec_requests_waiting": self.admitted - self.scoring, "etarec_queue_limit": self.queue}

    def close(self) -> None:
        for worker in self.workers:  # first: a dispatch thread waiting on a hung worker is released
            worker.close()
        self.threads.shutdown(wait=True, cancel_futures=True)


# ----------------------------------------------------------------------------------------------
# the app
# ----------------------------------------------------------------------------------------------


def create_app(scorer: Scorer | None = None, limits: Limits = Limits(), workers: Workers | None = None) -> FastAPI:
    """With `workers`, requests are scored by that many worker processes (started here: a bad
    checkpoint is one EtarecError line before any port opens) and `scorer` is not needed; without,
    by `scorer` in this process, one request at a time."""
    if workers is not None:
        remotes, model_name, version = start_workers(workers)
        dispatcher = Dispatcher(remotes, limits.queue)
    elif scorer is not None:
        model_name, version = scorer.model_name, scorer.version
        dispatcher = Dispatcher([_Local(scorer)], limits.queue)
    else:
        raise EtarecError("create_app needs a Scorer or Workers")

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        await asyncio.get_running_loop().run_in_executor(None, dispatcher.close)

    app = FastAPI(title="etarec", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.model_name, app.state.version, app.state.dispatcher = model_name, version, dispatcher
    metrics = Metrics()
    app.add_middleware(Guard, limits=limits, metrics=metrics)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(error.errors()))

    @app.exception_handler(HTTPException)
    async def refused(request: Request, error: HTTPException) -> JSONResponse:  # 404, 405 ...
        return _error(error.status_code, f"{request.method} {request.url.path}: {error.detail}; the service "
                                         "answers POST /score, GET /healthz and GET /metrics", error.headers)

    @app.exception_handler(Exception)
    async def failed(_: Request, error: Exception) -> JSONResponse:
        return _error(500, f"internal error ({type(error).__name__}: {error}); the service keeps running")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "model": model_name, "version": version}

    @app.get("/metrics")
    def metrics_text() -> PlainTextResponse:
        return PlainTextResponse(metrics.text(dispatcher.gauges()))

    @app.post("/score")
    async def score(http: Request) -> JSONResponse:
        body = await http.body()  # read even when refusing: the connection stays usable
        if dispatcher.full:  # refused before any parsing: under overload a 503 must cost next to nothing
            retry = dispatcher.retry_after()
            return _error(503, f"service: busy, {len(dispatcher.workers)} request(s) being scored and "
                               f"{dispatcher.queue} waiting (--queue); retry after {retry} s, or start the "
                               "service with more --workers", {"Retry-After": str(retry)})
        try:  # pydantic's own JSON parser: invalid UTF-8 or deep nesting are its errors, not exceptions
            request = ScoreRequest.model_validate_json(body)
        except ValidationError as error:
            return _error(422, _validation_message(error.errors()))
        for field, given, limit, option in (
                ("candidates", len(request.candidates), limits.max_candidates, "--max-candidates"),
                ("history.items", len(request.history.items), limits.max_history, "--max-history")):
            if given > limit:
                return _error(413, f"{field}: {given} given, the limit is {limit}; split the request "
                                   f"or start the service with a larger {option}")
        job = {"items": request.history.items, "timestamps": request.history.timestamps,
               "actions": request.history.actions, "candidates": request.candidates,
               "request_time": request.request_time, "user": request.user}
        queued = time.perf_counter()
        outcome, started = await dispatcher.run(job)
        if outcome[0] == "bad":
            return _error(422, outcome[1])
        if outcome[0] == "error":
            return _error(500, f"internal error ({outcome[1]}); the service keeps running")
        _, probabilities, warnings, score_ms = outcome
        return JSONResponse({
            "scores": probabilities.tolist(), "model": model_name, "version": version, "warnings": warnings,
            "timing_ms": {"queue": 1e3 * max(started - queued, 0.0), "score": score_ms},
        })

    return app


def check_port(host: str, port: int) -> None:
    """Fail with one clear line now, rather than from inside uvicorn, when the address is taken."""
    if not 0 <= port <= 65535:
        raise EtarecError(f"--port {port} is not a TCP port; pick one in 1..65535")
    try:
        family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            probe.bind(address)
    except OSError as error:
        raise EtarecError(f"cannot listen on {host}:{port} ({error.strerror or error}); "
                          "pick another --port or --host, or stop what uses it") from None


def serve(app: FastAPI, host: str, port: int) -> None:
    """Serve until interrupted (uvicorn handles SIGINT / SIGTERM, drains open requests, then the
    app's shutdown stops the scoring workers)."""
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    finally:
        app.state.dispatcher.close()  # again if uvicorn never started: the workers must not outlive us
