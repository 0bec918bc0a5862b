"""`etarec serve`: the Scorer behind HTTP (FastAPI + uvicorn).

    POST /score    {"user": 42, "history": {"items": [...], "timestamps": [...], "actions": [...]},
                    "candidates": [...], "request_time": 1700000000}
                -> {"scores": [...], "model": "eta", "version": "eta-1a2b3c...", "warnings": [...],
                    "timing_ms": {"queue": .., "score": ..}}
    GET  /healthz  model and version
    GET  /metrics  request counts by status and a latency histogram (Prometheus text format)

Every bad request gets one JSON {"error": "<field>: <problem and fix>"}: 422 for malformed JSON,
wrong types and inconsistent fields, 413 past the configured limits. Scoring runs one request at a
time: torch already spreads one request over the cores, and two at once would only fight for them.
"""
from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from etarec.errors import EtarecError
from etarec.serve.scorer import BadRequest, History, Scorer

ItemId = StrictInt | StrictStr
LATENCY_BUCKETS_MS = (1, 2, 5, 10, 15, 20, 30, 50, 100, 200, 500, 1000, 5000)
EXAMPLE = '{"history": {"items": [1, 2]}, "candidates": [3, 4]}'
ROUTES = ("/score", "/healthz", "/metrics")
BYTES_PER_ID = 64  # generous JSON size of one history behaviour (id, timestamp, action) or candidate


@dataclass(frozen=True)
class Limits:
    max_candidates: int = 4096
    max_history: int = 100_000  # behaviours accepted; the model uses the most recent long_len of them

    def __post_init__(self):
        if self.max_candidates < 1 or self.max_history < 0:
            raise EtarecError(f"limits must be positive (--max-candidates {self.max_candidates}, "
                              f"--max-history {self.max_history})")

    @property
    def max_body_bytes(self) -> int:
        return BYTES_PER_ID * (self.max_history + self.max_candidates) + 65_536


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

    def text(self) -> str:
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
        return "\n".join(lines) + "\n"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _validation_message(error: RequestValidationError) -> str:
    """The first problem as "<field>: <what is wrong>" (e.g. "history.items: item 3 ...")."""
    first = error.errors()[0]
    if first["type"] == "json_invalid":
        return f"body: not valid JSON ({first.get('ctx', {}).get('error', 'parse error')}); send {EXAMPLE}"
    if tuple(first["loc"]) == ("body",):
        return f"body: {first['msg']}; send a JSON object (Content-Type: application/json) like {EXAMPLE}"
    # pydantic ends the location of a failed int | str union with the member's name
    location = [part for part in first["loc"] if part != "body"]
    union = bool(location) and location[-1] in ("int", "str")
    location = location[:-1] if union else location
    field = ".".join(str(part) for part in location if isinstance(part, str)) or "body"
    index = [part for part in location if isinstance(part, int)]
    where = f"item {index[0]}: " if index else ""
    message = "expected an id (an integer or a string)" if union else first["msg"]
    return f"{field}: {where}{message}"


def create_app(scorer: Scorer, limits: Limits = Limits()) -> FastAPI:
    app = FastAPI(title="etarec", docs_url=None, redoc_url=None)
    metrics = Metrics()
    scoring = threading.Lock()

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        path = request.url.path if request.url.path in ROUTES else "other"  # bounded label set
        declared = request.headers.get("content-length", "0")
        if declared.isdigit() and int(declared) > limits.max_body_bytes:
            response = _error(413, f"body: {declared} bytes, the limit is {limits.max_body_bytes}; "
                                   "send fewer candidates or a shorter history")
        else:
            try:
                response = await call_next(request)
            except Exception:  # answered with a 500 by the handler below, outside this middleware
                metrics.record(path, 500, 1e3 * (time.perf_counter() - started))
                raise
        metrics.record(path, response.status_code, 1e3 * (time.perf_counter() - started))
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        return _error(422, _validation_message(error))

    @app.exception_handler(Exception)
    async def failed(_: Request, error: Exception) -> JSONResponse:
        return _error(500, f"internal error ({type(error).__name__}: {error}); the service keeps running")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok", "model": scorer.model_name, "version": scorer.version}

    @app.get("/metrics")
    def metrics_text() -> PlainTextResponse:
        return PlainTextResponse(metrics.text())

    @app.post("/score")
    def score(request: ScoreRequest) -> JSONResponse:
        for field, given, limit, option in (
                ("candidates", len(request.candidates), limits.max_candidates, "--max-candidates"),
                ("history.items", len(request.history.items), limits.max_history, "--max-history")):
            if given > limit:
                return _error(413, f"{field}: {given} given, the limit is {limit}; split the request "
                                   f"or start the service with a larger {option}")
        history = History(request.history.items, request.history.timestamps, request.history.actions)
        queued = time.perf_counter()
        with scoring:
            started = time.perf_counter()
            try:
                result = scorer.score(history, request.candidates, request.request_time, request.user)
            except BadRequest as error:
                return _error(422, str(error))
            finished = time.perf_counter()
        return JSONResponse({
            "scores": result.probabilities.tolist(), "model": scorer.model_name, "version": scorer.version,
            "warnings": result.warnings,
            "timing_ms": {"queue": 1e3 * (started - queued), "score": 1e3 * (finished - started)},
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


def serve(scorer: Scorer, host: str, port: int, limits: Limits = Limits()) -> None:
    """Serve until interrupted (uvicorn handles SIGINT / SIGTERM and drains open requests)."""
    uvicorn.run(create_app(scorer, limits), host=host, port=port, log_level="warning", access_log=False)
