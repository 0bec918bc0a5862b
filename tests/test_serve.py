"""Serving: the Scorer, the HTTP service (a real uvicorn process) and the ONNX export.

The reference is always the trained model's own forward on a Batch built by BatchBuilder (what
`etarec evaluate` runs), on real samples of the bundled data, requested by raw ids.
"""
from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import VOCAB

from etarec.cli import main
from etarec.config import build_config
from etarec.data.batch import Batch, BatchBuilder
from etarec.data.prepare import prepare
from etarec.data.prepared import PreparedData, Samples, load_prepared
from etarec.errors import EtarecError
from etarec.models import build_model
from etarec.nn.embeddings import Vocab
from etarec.serve.scorer import CANDIDATE_CHUNK, History, Scorer
from etarec.store.checkpoint import load_checkpoint, save_checkpoint
from etarec.train.metrics import all_metrics

httpx = pytest.importorskip("httpx")

REPO = Path(__file__).resolve().parents[1]
LONG, SHORT, TOP_K = 32, 8, 8
TINY = ["--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=20", "--set", f"model.long_len={LONG}",
        "--set", f"model.short_len={SHORT}", "--set", f"model.top_k={TOP_K}", "--set", "model.hash_bits=72",
        "--set", "train.eval_batch_size=4096", "--no-progress"]
MAX_CANDIDATES, MAX_HISTORY = 50, 400


# ----------------------------------------------------------------------------------------------
# fixtures: real data, tiny trained runs, requests made from real samples
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: thousands of small requests run faster and steadier on a shared 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("prepared") / "ml-latest-small"
    prepare(build_config().data, folder, log=lambda *_: None)
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory, prepared_dir) -> dict[str, Path]:
    """Trained ETA and DIN; full attention, ETA with DIN's attention unit and Dice, and ETA with time
    as a user feature (time_in=user), with their initial weights (any weights do for parity)."""
    root = tmp_path_factory.mktemp("runs")
    folders = {}
    for name in ("eta", "din"):
        folders[name] = root / name
        argv = ["train", "--config", str(REPO / "configs" / f"quickstart_{name}.yaml"), "--out", str(folders[name]),
                "--set", f"data.prepared_dir={prepared_dir}", *TINY]
        assert main(argv) == 0
    vocab = Vocab.from_meta(json.loads((prepared_dir / "meta.json").read_text()))
    window = [arg for arg in TINY if arg.startswith("model.")] + ["model.use_time=true", "model.use_action=true"]
    for name, model in (("full_attention", ["model.name=full_attention"]),
                        ("eta_din_attention", ["model.attention=din", "model.activation=dice"]),
                        ("eta_time_in_user", ["model.time_in=user"])):
        config = build_config({"data": {"prepared_dir": str(prepared_dir)}}, window + model)
        torch.manual_seed(0)
        folders[name] = root / name
        save_checkpoint(folders[name], build_model(config.model, vocab), config, vocab)
    return folders


@dataclass
class Real:
    """The prepared data plus the raw ids a client would send (read straight from the Parquet files)."""

    data: PreparedData
    item_raw: np.ndarray  # [num_items] raw id of each item index
    user_raw: np.ndarray  # [num_users]
    action_raw: np.ndarray  # [num_actions] raw value of each action code (0: none)

    def request(self, samples: Samples, i: int) -> dict:
        """Sample i as Scorer.score keyword arguments: the user's whole history before it, raw ids."""
        seq = self.data.sequences
        start = seq.offsets[samples.user[i]]
        end = start + samples.position[i]
        history = History(self.item_raw[seq.item[start:end]].tolist(), seq.timestamp[start:end].tolist(),
                          self.action_raw[seq.action[start:end]].tolist())
        return {"history": history, "candidates": [self.item_raw[samples.item[i]]],
                "request_time": int(samples.timestamp[i]), "user": self.user_raw[samples.user[i]]}


@pytest.fixture(scope="module")
def real(prepared_dir) -> Real:
    data = load_prepared(prepared_dir)
    return Real(data, pq.read_table(prepared_dir / "items.parquet")["raw_id"].to_numpy(),
                pq.read_table(prepared_dir / "users.parquet")["raw_id"].to_numpy(),
                np.array([0.0] + data.meta["action_values"]))


def model_probabilities(run: Path, batch: Batch) -> np.ndarray:
    model, _, _ = load_checkpoint(run)
    with torch.no_grad():
        return torch.sigmoid(model(batch)).numpy()


def builder(real: Real) -> BatchBuilder:
    return BatchBuilder(real.data, LONG, SHORT)


# ----------------------------------------------------------------------------------------------
# Scorer
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["eta", "din", "full_attention", "eta_din_attention", "eta_time_in_user"])
def test_scorer_equals_the_models_forward_on_real_samples(runs, real, name):
    scorer = Scorer.load(runs[name])
    test = real.data.splits["test"]
    index = np.linspace(0, len(test) - 1, 150).astype(np.int64)
    assert (test.position[index] > LONG).any(), "want histories longer than the window among these"
    expected = model_probabilities(runs[name], builder(real).build(test, index))
    got = np.array([scorer.score(**real.request(test, i)).probabilities[0] for i in index])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_scorer_reproduces_etarec_evaluate_on_the_whole_test_split(runs, real, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(runs["eta"]), "--split", "test", "--no-progress"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    scorer = Scorer.load(runs["eta"])
    test = real.data.splits["test"]
    probabilities = np.array([scorer.score(**real.request(test, i)).probabilities[0] for i in range(len(test))])
    metrics = all_metrics(test.user, test.label, probabilities)
    for metric in ("auc", "gauc", "logloss"):
        assert metrics[metric] == pytest.approx(evaluated[metric], abs=1e-6)


def test_one_request_with_many_candidates_and_unknown_ids_equals_the_model(runs, real):
    """One history shared by more candidates than a chunk; unknown ids are the out-of-vocabulary item."""
    scorer = Scorer.load(runs["eta"])
    test = real.data.splits["test"]
    sample = int(np.flatnonzero(test.position > LONG + 5)[0])
    request = real.request(test, sample)
    history = request["history"]
    unknown_at = [len(history.items) - 1, len(history.items) - 4]  # inside the window
    for position in unknown_at:
        history.items[position] = f"no-such-item-{position}"
    targets = test.item[:CANDIDATE_CHUNK + 72]
    candidates = real.item_raw[targets].tolist() + ["no-such-candidate"]
    scores = scorer.score(history, candidates, request["request_time"], request["user"])

    batch = builder(real).build(test, np.full(len(candidates), sample))
    for position in unknown_at:  # the window is right-aligned: history position p -> column p - n + L
        column = position - len(history.items) + LONG
        batch.history_items[:, column] = 1
        batch.history_categories[:, column] = 1
    batch.target_item = torch.from_numpy(np.append(targets, 1))
    batch.target_category = torch.from_numpy(np.append(real.data.item_category[targets], 1))
    np.testing.assert_allclose(scores.probabilities, model_probabilities(runs["eta"], batch), rtol=0, atol=1e-6)
    # chunks spread over worker threads give the very same scores
    parallel = Scorer.load(runs["eta"], threads=2).score(history, candidates, request["request_time"], request["user"])
    assert np.array_equal(parallel.probabilities, scores.probabilities)
    warnings = " ".join(scores.warnings)
    assert "'no-such-candidate'" in warnings and "'no-such-item-" in warnings and f"most recent {LONG}" in warnings


def test_empty_history_is_scored_like_a_window_of_padding(runs, real):
    train = real.data.splits["train"]
    first = np.flatnonzero(train.position == 0)[:20]  # each user's first event: nothing before it
    for name in ("eta", "din"):
        scorer = Scorer.load(runs[name])
        got = [scorer.score(**real.request(train, i)).probabilities[0] for i in first]
        expected = model_probabilities(runs[name], builder(real).build(train, first))
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
        assert len(scorer.score([], ["1"]).probabilities) == 1


def test_history_longer_than_the_window_uses_the_most_recent_behaviours(runs, real):
    scorer = Scorer.load(runs["eta"])
    test = real.data.splits["test"]
    request = real.request(test, int(np.flatnonzero(test.position > 3 * LONG)[0]))
    full = scorer.score(**request)
    history = request["history"]
    recent = History(history.items[-LONG:], history.timestamps[-LONG:], history.actions[-LONG:])
    assert full.probabilities[0] == scorer.score(**(request | {"history": recent})).probabilities[0]
    assert any(f"the most recent {LONG} were used" in warning for warning in full.warnings)


def test_scorer_refuses_truncated_foreign_and_catalogless_checkpoints(runs, tmp_path):
    cut = tmp_path / "cut"
    cut.mkdir()
    data = (runs["eta"] / "model.pt").read_bytes()
    (cut / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(EtarecError, match="truncated or corrupt"):
        Scorer.load(cut)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    torch.save({"weights": torch.zeros(3)}, foreign / "model.pt")
    with pytest.raises(EtarecError, match="not an etarec checkpoint"):
        Scorer.load(foreign)
    # a model trained on data that is not on disk has no catalog to map raw ids with
    config = build_config({"data": {"prepared_dir": str(tmp_path / "nowhere")}, "model": {"long_len": 16, "top_k": 4, "short_len": 4}})
    save_checkpoint(tmp_path / "bare", build_model(config.model, VOCAB), config, VOCAB)
    with pytest.raises(EtarecError, match="has no catalog.*train it again"):
        Scorer.load(tmp_path / "bare")


def test_bad_history_fields_are_refused_with_the_field_named(runs):
    scorer = Scorer.load(runs["eta"])
    with pytest.raises(EtarecError, match="history.timestamps: 1 values for 2 history items"):
        scorer.score(History(["1", "2"], timestamps=[5]), ["1"])
    with pytest.raises(EtarecError, match="history.timestamps: not in time order"):
        scorer.score(History(["1", "2"], timestamps=[5, 3]), ["1"])
    with pytest.raises(EtarecError, match="candidates: no candidate"):
        scorer.score(History(["1"]), [])
    with pytest.raises(EtarecError, match="history.timestamps: expected Unix seconds"):
        scorer.score(History(["1"], timestamps=[10**30]), ["1"])
    with pytest.raises(EtarecError, match="request_time: expected Unix seconds"):
        scorer.score(History(["1"], timestamps=[5]), ["1"], request_time=-(10**20))


# ----------------------------------------------------------------------------------------------
# HTTP service: `etarec serve` as a real process on a loopback port
# ----------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def running_service(*options: str):
    """(base url, process) of `etarec serve OPTIONS` on a free loopback port, up until the block ends."""
    port = free_port()
    command = [sys.executable, "-m", "etarec", "serve", "--port", str(port), *options]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"etarec serve exited: {process.communicate()[1][-2000:]}"
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "etarec serve did not come up"
                time.sleep(0.2)
        yield url, process
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def service(runs):
    """(base url, process) of `etarec serve` on the trained ETA run."""
    with running_service("--checkpoint", str(runs["eta"]), "--threads", "1", "--max-candidates", str(MAX_CANDIDATES),
                         "--max-history", str(MAX_HISTORY)) as running:
        yield running


def as_json(request: dict) -> dict:
    history = request["history"]
    return {"history": {"items": list(history.items), "timestamps": list(history.timestamps),
                        "actions": list(history.actions)},
            "candidates": list(request["candidates"]), "request_time": request["request_time"],
            "user": request["user"]}


def test_service_scores_like_the_model_and_reports_version_and_timing(service, runs, real):
    url, _ = service
    test = real.data.splits["test"]
    index = np.flatnonzero(test.position > LONG)[:5]
    expected = model_probabilities(runs["eta"], builder(real).build(test, index))
    for i, probability in zip(index, expected):
        answer = httpx.post(f"{url}/score", json=as_json(real.request(test, i)), timeout=30)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["scores"] == pytest.approx([probability], abs=1e-6)
        assert body["model"] == "eta" and body["version"].startswith("eta-")
        truncated = f"history: {test.position[i]} behaviours given; the most recent {LONG} were used (the model's long_len)"
        assert body["warnings"] == [truncated]
        assert body["timing_ms"]["score"] > 0
    health = httpx.get(f"{url}/healthz", timeout=5).json()
    assert health == {"status": "ok", "model": "eta", "version": body["version"]}


BAD_REQUESTS = [
    # (id, body as sent, status, words the error must hold)
    ("malformed-json", b'{"candidates": [1, 2', 422, ["body", "not valid JSON"]),
    ("not-an-object", b"[1, 2, 3]", 422, ["body", "JSON object"]),
    ("candidate-of-wrong-type", {"candidates": [1, 2.5]}, 422, ["candidates", "item 1", "integer or a string"]),
    ("history-of-wrong-type", {"history": {"items": "1,2"}, "candidates": [1]}, 422, ["history.items"]),
    ("timestamp-of-wrong-type", {"history": {"items": [1], "timestamps": ["noon"]}, "candidates": [1]}, 422,
     ["history.timestamps", "item 0"]),
    ("user-of-wrong-type", {"user": [7], "candidates": [1]}, 422, ["user"]),
    ("missing-candidates", {"history": {"items": [1]}}, 422, ["candidates", "required"]),
    ("misspelt-field", {"candidates": [1], "histroy": {"items": [1]}}, 422, ["histroy", "not permitted"]),
    ("timestamps-count", {"history": {"items": [1, 2], "timestamps": [1]}, "candidates": [1]}, 422,
     ["history.timestamps", "one per item"]),
    ("timestamps-order", {"history": {"items": [1, 2], "timestamps": [9, 1]}, "candidates": [1]}, 422,
     ["history.timestamps", "oldest first"]),
    ("no-candidates", {"candidates": []}, 422, ["candidates"]),
    ("timestamp-out-of-range", {"history": {"items": [1], "timestamps": [10**30]}, "candidates": [1]}, 422,
     ["history.timestamps", "Unix seconds"]),
    ("request-time-out-of-range", {"request_time": 10**25, "candidates": [1], "history": {"items": [1], "timestamps": [1]}},
     422, ["request_time", "Unix seconds"]),
    ("too-many-candidates", {"candidates": list(range(1, MAX_CANDIDATES + 2))}, 413,
     ["candidates", f"{MAX_CANDIDATES + 1} given", f"limit is {MAX_CANDIDATES}"]),
    ("too-long-history", {"history": {"items": [1] * (MAX_HISTORY + 1)}, "candidates": [1]}, 413,
     ["history.items", f"limit is {MAX_HISTORY}"]),
    ("huge-body", b'{"candidates": [' + b"1, " * 200_000 + b"1]}", 413, ["body", "bytes, the limit is"]),
]


@pytest.mark.parametrize("body,status,words", [case[1:] for case in BAD_REQUESTS], ids=[case[0] for case in BAD_REQUESTS])
def test_bad_request_gets_its_status_and_a_clear_error_then_the_service_goes_on(service, real, runs, body, status, words):
    url, process = service
    sent = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    answer = httpx.post(f"{url}/score", timeout=30, **sent)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    for word in words:
        assert word.lower() in error.lower(), f"{word!r} not in {error!r}"
    test = real.data.splits["test"]
    good = httpx.post(f"{url}/score", json=as_json(real.request(test, 0)), timeout=30)
    assert good.status_code == 200 and process.poll() is None
    expected = model_probabilities(runs["eta"], builder(real).build(test, np.array([0])))
    assert good.json()["scores"] == pytest.approx(expected.tolist(), abs=1e-6)


def test_unknown_ids_empty_and_overlong_histories_are_scored_with_warnings(service):
    url, _ = service
    answer = httpx.post(f"{url}/score", json={"history": {"items": [1, "nope", 50]}, "candidates": [1, "gone"]}, timeout=30)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["scores"]) == 2 and all(0 < score < 1 for score in body["scores"])
    assert any("'nope'" in w for w in body["warnings"]) and any("'gone'" in w for w in body["warnings"])
    empty = httpx.post(f"{url}/score", json={"history": {"items": []}, "candidates": [1, 2, 3]}, timeout=30)
    assert empty.status_code == 200 and len(empty.json()["scores"]) == 3
    items = list(range(1, 3 * LONG + 1))
    overlong = httpx.post(f"{url}/score", json={"history": {"items": items}, "candidates": [1]}, timeout=30).json()
    recent = httpx.post(f"{url}/score", json={"history": {"items": items[-LONG:]}, "candidates": [1]}, timeout=30).json()
    assert overlong["scores"] == recent["scores"]
    assert any(f"the most recent {LONG}" in w for w in overlong["warnings"])


def test_metrics_count_requests_by_status_and_hold_a_latency_histogram(service):
    url, _ = service
    httpx.post(f"{url}/score", json={"candidates": "x"}, timeout=30)
    text = httpx.get(f"{url}/metrics", timeout=5).text
    assert 'etarec_requests_total{path="/score",status="422"}' in text
    assert 'etarec_score_latency_ms_bucket{le="+Inf"}' in text and "etarec_score_latency_ms_count" in text


@pytest.mark.parametrize("damage", ["truncated", "foreign"])
def test_service_refuses_a_bad_checkpoint_at_start_up(runs, tmp_path, damage):
    folder = tmp_path / damage
    folder.mkdir()
    if damage == "truncated":
        data = (runs["eta"] / "model.pt").read_bytes()
        (folder / "model.pt").write_bytes(data[: len(data) // 3])
    else:
        torch.save({"weights": torch.zeros(3)}, folder / "model.pt")
    result = subprocess.run([sys.executable, "-m", "etarec", "serve", "--checkpoint", str(folder), "--port",
                             str(free_port())], check=False, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert ("truncated or corrupt" if damage == "truncated" else "not an etarec checkpoint") in result.stderr
    assert "on http://" not in result.stdout, "it must fail before serving"


def test_core_import_does_not_pull_the_serving_dependencies():
    code = ("import sys, etarec, etarec.cli, etarec.serve.scorer, etarec.store.checkpoint; "
            "heavy = [m for m in ('fastapi', 'uvicorn', 'onnx', 'onnxruntime') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=120)


# ----------------------------------------------------------------------------------------------
# ONNX export
# ----------------------------------------------------------------------------------------------

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(runs, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    files = {}
    for name in ("eta", "din", "eta_din_attention", "eta_time_in_user"):
        files[name] = folder / f"{name}.onnx"
        assert main(["export", "--checkpoint", str(runs[name]), "--format", "onnx", "--out", str(files[name])]) == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{name}.onnx" for name in files), \
        "temp or external-data files left"
    return files


@pytest.mark.parametrize("name", ["eta", "din", "eta_din_attention", "eta_time_in_user"])
def test_export_check_passes_on_real_samples(runs, exported, capsys, name):
    capsys.readouterr()
    out = exported[name].with_name(f"checked-{name}.onnx")
    assert main(["export", "--checkpoint", str(runs[name]), "--out", str(out), "--check"]) == 0
    check = json.loads(capsys.readouterr().out)["check"]
    assert check["passed"]
    for shape in ("samples", "request"):
        assert check[shape]["max_abs_diff_probability"] <= 1e-5
    assert check["samples"]["shape"]["batch"] > 100 and check["request"]["shape"]["candidates"] > 1


def test_exported_graph_keeps_retrieval_inside_with_dynamic_axes(exported):
    graph = onnx.load(str(exported["eta"])).graph
    operators = {node.op_type for node in graph.node}
    assert {"TopK", "MatMul"} <= operators and not operators & {"BitwiseXor", "BitShift"}
    axes = {tensor.name: [dim.dim_param for dim in tensor.type.tensor_type.shape.dim] for tensor in graph.input}
    assert axes["history_items"][0] and axes["history_items"][1] and axes["candidate_items"][1]
    assert axes["history_items"][0] == axes["candidate_items"][0]


@pytest.mark.parametrize("requests,length,candidates", [(1, 0, 5), (1, 3, 7), (3, LONG, 2), (2, 3 * LONG, 300)],
                         ids=["empty-history", "shorter-than-k", "batch", "longer-than-window"])
def test_onnx_graph_equals_the_model_at_any_shape(runs, real, exported, requests, length, candidates):
    """Real histories cut to `length` (the window keeps the last LONG), real targets as candidates."""
    session = onnxruntime.InferenceSession(str(exported["eta"]), providers=["CPUExecutionProvider"])
    test = real.data.splits["test"]
    samples = np.flatnonzero(test.position >= length)[:requests]
    wide = BatchBuilder(real.data, max(length, 1), 0).build(test, samples)  # right-aligned, length columns
    feeds = {"user": wide.user, "user_profile": wide.user_profile, "history_mask": wide.history_mask[:, wide.long_len - length:]}
    for column in ("items", "categories", "actions", "time_gaps"):
        feeds[f"history_{column}"] = getattr(wide, f"history_{column}")[:, wide.long_len - length:].to(torch.int64)  # the graph's id type
    targets = torch.from_numpy(test.item[:candidates])
    feeds["candidate_items"] = targets.expand(requests, -1)
    feeds["candidate_categories"] = torch.from_numpy(real.data.item_category[test.item[:candidates]]).expand(requests, -1)
    _, probabilities = session.run(None, {key: value.numpy() for key, value in feeds.items()})

    # the model's view: each (request, candidate) pair as a Batch row with the request's window
    rows = np.repeat(np.arange(requests), candidates)
    window = builder(real).build(test, samples[rows])
    keep = torch.arange(LONG)[None, :] >= LONG - min(length, LONG)  # the last `length` behaviours only
    for column in ("items", "categories", "actions", "time_gaps"):
        setattr(window, f"history_{column}", torch.where(keep, getattr(window, f"history_{column}"), 0))
    window.history_mask = window.history_mask & keep
    window.target_item = targets.repeat(requests)
    window.target_category = feeds["candidate_categories"].reshape(-1)
    expected = model_probabilities(runs["eta"], window).reshape(requests, candidates)
    np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-5)


def test_cached_serving_signatures_equal_the_training_time_signatures(runs, real):
    """The Scorer hashes the whole item table once at load; ETA hashes a batch's items on every
    training step. For the same checkpoint they must give the same packed codes."""
    scorer = Scorer.load(runs["eta"], threads=1)
    model, _, _ = load_checkpoint(runs["eta"])
    model.train()  # the per-step path, not the eval cache
    batch = builder(real).build(real.data.splits["test"], np.arange(256))
    selector = model.long_interest.selector
    with torch.no_grad():
        training_table = selector.code_table(model.embeddings, batch.user_history(), cache=None)
    items = torch.unique(batch.history_items[batch.history_mask])
    assert len(items) > 100
    assert torch.equal(scorer.cache.codes[items], training_table[items])
