"""The service and the checkpoint loader under hostile or heavy use (issue 16, items 5, 6, 8, 9, 11).

Each test gives the bad input, checks the exact outcome (one line or one JSON error naming the
problem and the fix) and that the next valid command or request succeeds. The service runs as a
real `etarec serve` process on a loopback port (test_serve's fixtures), or, where a slow Scorer is
needed, as a real uvicorn server in a thread of this process.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import torch

from etarec.errors import EtarecError
from etarec.serve.scorer import Scorer
from etarec.store.checkpoint import load_checkpoint

from runs import children
from test_serve import MAX_CANDIDATES, MAX_HISTORY, REPO, free_port, one_thread, prepared_dir, runs, service  # noqa: F401

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
from etarec.serve.service import Limits, create_app  # noqa: E402  (needs the serve extra)

GOOD = {"history": {"items": [1, 50, 260], "timestamps": [964982703, 964982931, 964983815], "actions": [4, 5, 3]},
        "candidates": [1196, 2571], "user": 1}


def assert_serves(url: str) -> None:
    answer = httpx.post(f"{url}/score", json=GOOD, timeout=30)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["scores"]) == 2


def serve_fails(folder: Path, *options: str) -> str:
    """`etarec serve` on a bad checkpoint: exit 1 before serving, one stderr line; returns it."""
    result = subprocess.run([sys.executable, "-m", "etarec", "serve", "--checkpoint", str(folder), "--port",
                             str(free_port()), *options], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "on http://" not in result.stdout, "it must fail before serving"
    return result.stderr.strip()


# ----------------------------------------------------------------------------------------------
# 5. the body limit holds for chunked uploads (no Content-Length)
# ----------------------------------------------------------------------------------------------


def test_chunked_upload_past_the_limit_is_cut_off_while_it_is_read(service):
    url, process = service
    limit = Limits(MAX_CANDIDATES, MAX_HISTORY).max_body_bytes
    chunk = b"1, " * 5000
    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=30) as connection:
        connection.sendall(b"POST /score HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n")
        sent = 0
        started = time.monotonic()
        while sent <= limit:  # a little past the limit, and the body never ends: no final 0-chunk
            part = b'{"candidates": [' + chunk if sent == 0 else chunk
            connection.sendall(b"%x\r\n%s\r\n" % (len(part), part))
            sent += len(part)
        response = b""
        with contextlib.suppress(ConnectionResetError):
            while not response.endswith(b"}"):  # a server waiting for the whole body would never answer
                data = connection.recv(65536)
                if not data:
                    break
                response += data
        elapsed = time.monotonic() - started
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), response[:300]
    assert b"connection: close" in head.lower()
    error = httpx.Response(413, content=body).json()["error"]
    assert error.startswith("body: at least ") and f"the limit is {limit}" in error and "--max-candidates" in error
    assert elapsed < 10
    # a chunked body within the limit is read and scored as usual
    answer = httpx.post(f"{url}/score", content=iter([b'{"candidates": [1196, 2571], ', b'"user": 1}']),
                        headers={"content-type": "application/json"}, timeout=30)
    assert answer.status_code == 200, answer.text
    assert process.poll() is None
    assert_serves(url)
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'etarec_requests_total{path="/score",status="413"}' in metrics


# ----------------------------------------------------------------------------------------------
# 6. a model.pt of another model in a run folder is refused by every command
# ----------------------------------------------------------------------------------------------


def mixed_run(runs, folder: Path) -> Path:
    """An ETA run folder (its config.yaml) holding DIN's model.pt."""
    folder.mkdir()
    shutil.copy(runs["eta"] / "config.yaml", folder / "config.yaml")
    shutil.copy(runs["din"] / "model.pt", folder / "model.pt")
    return folder


@pytest.mark.parametrize("workers", ["1", "0"], ids=["worker-processes", "in-process"])
def test_serve_refuses_a_model_pt_of_another_model_than_its_config(runs, tmp_path, workers):
    folder = mixed_run(runs, tmp_path / "mixed")
    line = serve_fails(folder, "--workers", workers)
    assert line.startswith("etarec serve: error: checkpoint ") and "model.pt" in line
    for word in ("holds a 'din' model", "config.yaml says 'eta'", "different runs", "train again"):
        assert word in line, line


def test_every_loader_checks_the_model_against_the_run_config(runs, tmp_path):
    folder = mixed_run(runs, tmp_path / "mixed")
    for load in (load_checkpoint, Scorer.load):
        with pytest.raises(EtarecError, match="holds a 'din' model but the run's config.yaml says 'eta'"):
            load(folder)
    # the matching pair loads, and a checkpoint without a config.yaml is taken as it is
    shutil.copy(runs["din"] / "config.yaml", folder / "config.yaml")
    assert Scorer.load(folder).model_name == "din"
    (folder / "config.yaml").unlink()
    assert load_checkpoint(folder)[1].model.name == "din"
    # a config.yaml that names no model means the default model (eta)
    (folder / "config.yaml").write_text("train: {epochs: 1}\n")
    with pytest.raises(EtarecError, match="config.yaml says 'eta'"):
        load_checkpoint(folder)


# ----------------------------------------------------------------------------------------------
# 8. undecodable bodies get the documented 422 {"error": ...}
# ----------------------------------------------------------------------------------------------

DEEP = 20_000  # far past any parser's recursion limit, within the body limit
UNREADABLE = [
    ("invalid-utf8-in-a-string", b'{"candidates": ["\xff\xfe"]}', ["body", "not valid JSON", "UTF-8"]),
    ("invalid-utf8-in-a-key", b'{"\xc3\x28": [1]}', ["body", "UTF-8"]),
    ("deeply-nested-list", b'{"candidates": ' + b"[" * DEEP + b"]" * DEEP + b"}", ["body", "nested too deeply"]),
    ("deeply-nested-object", b'{"history": ' + b'{"a":' * (DEEP // 3) + b"1" + b"}" * (DEEP // 3) + b', "candidates": [1]}',
     ["body", "nested too deeply"]),
    ("empty-body", b"", ["body", "not valid JSON"]),
]


@pytest.mark.parametrize("body,words", [case[1:] for case in UNREADABLE], ids=[case[0] for case in UNREADABLE])
def test_undecodable_body_gets_422_with_one_error(service, body, words):
    url, process = service
    answer = httpx.post(f"{url}/score", content=body, headers={"content-type": "application/json"}, timeout=30)
    assert answer.status_code == 422, answer.text
    payload = answer.json()
    assert list(payload) == ["error"], payload
    for word in words:
        assert word in payload["error"], payload["error"]
    assert process.poll() is None
    assert_serves(url)


def test_unknown_route_and_method_get_the_same_error_shape(service):
    url, _ = service
    missing = httpx.get(f"{url}/scores", timeout=10)
    assert missing.status_code == 404 and list(missing.json()) == ["error"]
    assert "POST /score" in missing.json()["error"]
    wrong = httpx.get(f"{url}/score", timeout=10)
    assert wrong.status_code == 405 and list(wrong.json()) == ["error"] and "POST" in wrong.headers["allow"]


# ----------------------------------------------------------------------------------------------
# 9. a code-executing pickle is named as such
# ----------------------------------------------------------------------------------------------


class RunsCode:
    """Unpickling this would run a shell command (it must never happen)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class NotWeights:  # an object torch.save pickles by reference: weights_only refuses its global
    pass


def unsafe_checkpoints(root: Path, marker: Path) -> dict[str, Path]:
    folders = {}
    for name, write in (
            ("plain-pickle", lambda path: path.write_bytes(pickle.dumps(RunsCode(marker)))),
            ("plain-pickle-protocol-2", lambda path: path.write_bytes(pickle.dumps(RunsCode(marker), protocol=2))),
            ("torch-save-of-an-object", lambda path: torch.save({"format": "etarec-checkpoint-v1",
                                                                  "state_dict": NotWeights()}, path))):
        folders[name] = root / name
        folders[name].mkdir()
        write(folders[name] / "model.pt")
    return folders


def test_code_executing_pickle_is_refused_for_safety_in_one_line(tmp_path):
    marker = tmp_path / "code-ran"
    for name, folder in unsafe_checkpoints(tmp_path, marker).items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(EtarecError) as refused:
                load_checkpoint(folder)
        message = str(refused.value)
        assert "\n" not in message and "truncated" not in message, message
        assert "is not a weights-only checkpoint, refused for safety (it could run code when loaded" in message
        assert "etarec train" in message
        assert not caught, [str(w.message) for w in caught]
        expected = "NotWeights" if name == "torch-save-of-an-object" else "system"
        assert expected in message, message
    assert not marker.exists(), "the pickle's code ran"


def test_code_executing_pickle_stops_serve_and_evaluate_without_torch_warnings(tmp_path):
    marker = tmp_path / "code-ran"
    folders = unsafe_checkpoints(tmp_path, marker)
    line = serve_fails(folders["plain-pickle"])
    assert "refused for safety" in line and "Warning" not in line
    result = subprocess.run([sys.executable, "-m", "etarec", "evaluate", "--checkpoint",
                             str(folders["torch-save-of-an-object"]), "--no-progress"],
                            cwd=REPO, capture_output=True, text=True, timeout=180)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "refused for safety" in result.stderr
    assert not marker.exists()


def test_truncated_checkpoints_keep_their_own_message(runs, tmp_path):
    data = (runs["eta"] / "model.pt").read_bytes()
    plain = pickle.dumps(RunsCode(tmp_path / "never"))
    for name, cut in (("zip", data[: len(data) // 2]), ("plain-pickle", plain[:-5]), ("empty", b""),
                      ("noise", bytes(range(256)) * 8)):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.pt").write_bytes(cut)
        with pytest.raises(EtarecError, match="truncated or corrupt") as refused:
            load_checkpoint(folder)
        assert "\n" not in str(refused.value) and "safety" not in str(refused.value)
    assert Scorer.load(runs["eta"]).model_name == "eta"  # the next valid load succeeds


# ----------------------------------------------------------------------------------------------
# 11. a bounded queue: 503 + Retry-After when full, at once; worker processes that recover
# ----------------------------------------------------------------------------------------------


class SlowScorer:
    """A real Scorer that takes `seconds` longer per request (the service's view: model_name, version, score)."""

    def __init__(self, scorer: Scorer, seconds: float):
        self.scorer, self.seconds = scorer, seconds
        self.model_name, self.version = scorer.model_name, scorer.version

    def score(self, *args, **kwargs):
        time.sleep(self.seconds)
        return self.scorer.score(*args, **kwargs)


@contextlib.contextmanager
def server_in_a_thread(app):
    """A real uvicorn server on a loopback port, in a thread of this process."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def gauge(url: str, name: str) -> int:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return int(next(line.split()[1] for line in text.splitlines() if line.startswith(f"{name} ")))


def test_full_queue_answers_503_with_retry_after_at_once_then_serves_again(runs):
    app = create_app(SlowScorer(Scorer.load(runs["eta"], threads=1), seconds=1.5), Limits(queue=1))
    with server_in_a_thread(app) as url:
        results: list[int] = []
        first_two = [threading.Thread(target=lambda: results.append(
            httpx.post(f"{url}/score", json=GOOD, timeout=60).status_code)) for _ in range(2)]
        for thread in first_two:
            thread.start()
        deadline = time.monotonic() + 20
        while gauge(url, "etarec_requests_scoring") + gauge(url, "etarec_requests_waiting") < 2:
            assert time.monotonic() < deadline, "the two requests never got in"
            time.sleep(0.02)
        assert (gauge(url, "etarec_requests_scoring"), gauge(url, "etarec_requests_waiting")) == (1, 1)
        started = time.monotonic()
        busy = httpx.post(f"{url}/score", json=GOOD, timeout=60)
        answered = time.monotonic() - started
        assert busy.status_code == 503, busy.text
        assert answered < 0.5, f"the 503 took {answered:.2f} s: it waited instead of refusing"
        assert int(busy.headers["retry-after"]) >= 1
        error = busy.json()["error"]
        assert list(busy.json()) == ["error"] and error.startswith("service: busy") and "--queue" in error
        for thread in first_two:
            thread.join(timeout=60)
        assert results == [200, 200], "the admitted requests are scored, the queue drained"
        after = httpx.post(f"{url}/score", json=GOOD, timeout=60)
        assert after.status_code == 200 and after.json()["timing_ms"]["score"] >= 1500
        metrics = httpx.get(f"{url}/metrics", timeout=10).text
        assert 'etarec_requests_total{path="/score",status="503"} 1' in metrics


def scoring_workers(pid: int) -> list[int]:
    """The scoring processes among the children of `pid` (not multiprocessing's resource tracker)."""
    found = []
    for child in children(pid):
        try:
            command = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in command:
            found.append(child)
    return found


def test_a_killed_scoring_worker_is_replaced_and_none_outlives_the_service(runs, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("config.yaml", "model.pt"):
        shutil.copy(runs["eta"] / name, folder / name)
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "etarec", "serve", "--checkpoint", str(folder), "--port",
                                str(port), "--workers", "1", "--queue", "4"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()[1][-2000:]
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            assert time.monotonic() < deadline, "etarec serve did not come up"
            time.sleep(0.2)
        version = httpx.get(f"{url}/healthz", timeout=10).json()["version"]
        assert_serves(url)
        (worker,) = scoring_workers(process.pid)
        os.kill(worker, signal.SIGKILL)
        time.sleep(0.2)
        failed = httpx.post(f"{url}/score", json=GOOD, timeout=60)
        assert failed.status_code == 500 and "scoring worker 0 failed" in failed.json()["error"], failed.text
        assert_serves(url)  # a new worker took its place
        (replacement,) = scoring_workers(process.pid)
        assert replacement != worker
        # a replacement never serves another model.pt than the one /healthz names
        shutil.copy(runs["eta_din_attention"] / "model.pt", folder / "model.pt")
        os.kill(replacement, signal.SIGKILL)
        time.sleep(0.2)
        assert httpx.post(f"{url}/score", json=GOOD, timeout=60).status_code == 500
        changed = httpx.post(f"{url}/score", json=GOOD, timeout=60)
        assert changed.status_code == 500 and "changed since the service started" in changed.json()["error"]
        assert httpx.get(f"{url}/healthz", timeout=10).json()["version"] == version
        survivors = scoring_workers(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=60)
    assert process.returncode in (0, -signal.SIGTERM)
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in survivors + [replacement]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in survivors + [replacement]), \
        "a scoring worker outlived the service"
