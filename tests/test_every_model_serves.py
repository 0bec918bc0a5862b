"""Every registered model trains, evaluates, serves and exports through its one forward.

Parametrized over the model registry: a model added to etarec.models.MODELS is covered here
without touching this file. Each model is trained briefly on the bundled data; then, on real test
samples, the Scorer (the model's shared-history path, one request per sample) must equal the
model's forward on the equivalent Batch and the predictions `etarec evaluate` makes, the ONNX
graph must equal PyTorch on onnxruntime (`etarec export --check`), and `etarec serve` must answer
POST /score with the same scores.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from etarec.cli import main
from etarec.data.batch import BatchBuilder
from etarec.data.prepared import Samples, load_prepared
from etarec.models import MODELS
from etarec.serve.scorer import History, Scorer
from etarec.store.checkpoint import load_checkpoint
from etarec.train.inference import predict

# the fixtures (one torch thread, the prepared bundled data) and the loopback server of the ETA serving tests
from test_serve import REPO, one_thread, prepared_dir, running_service  # noqa: F401

LONG, SHORT, TOP_K = 32, 8, 8
SETTINGS = ["train.epochs=1", "train.max_steps_per_epoch=15", f"model.long_len={LONG}", f"model.short_len={SHORT}",
            f"model.top_k={TOP_K}", "model.hash_bits=72", "model.embedding_dim=16", "model.attention_dim=32",
            "model.use_time=true", "model.use_action=true", "model.mlp=[32,16]", "train.eval_batch_size=4096"]
SAMPLES = 120  # real test samples per check


@pytest.fixture(scope="module")
def trained(tmp_path_factory, prepared_dir):
    """name -> run folder, trained on demand (once per model)."""
    root = tmp_path_factory.mktemp("runs")
    folders = {}

    def run(name: str):
        if name not in folders:
            argv = ["train", "--config", str(REPO / "configs" / "quickstart_eta.yaml"), "--out", str(root / name),
                    "--no-progress", "--set", f"model.name={name}", "--set", f"data.prepared_dir={prepared_dir}"]
            for setting in SETTINGS:
                argv += ["--set", setting]
            assert main(argv) == 0
            folders[name] = root / name
        return folders[name]

    return run


@pytest.fixture(scope="module")
def real(prepared_dir):
    """(prepared data, samples, raw ids): SAMPLES test samples (histories beyond the window among
    them) and the first events of some users (histories shorter than top_k, empty ones included)."""
    data = load_prepared(prepared_dir)
    test, train = data.splits["test"], data.splits["train"]
    picked = [(test, np.linspace(0, len(test) - 1, SAMPLES).astype(np.int64)),
              (train, np.flatnonzero(train.position < TOP_K)[::7][:30])]
    samples = Samples(**{field.name: np.concatenate([getattr(split, field.name)[index] for split, index in picked])
                         for field in dataclasses.fields(Samples)})
    assert (samples.position > LONG).any() and (samples.position == 0).any() and (samples.position < TOP_K).sum() >= 20
    raw = {"item": pq.read_table(prepared_dir / "items.parquet")["raw_id"].to_numpy(),
           "user": pq.read_table(prepared_dir / "users.parquet")["raw_id"].to_numpy(),
           "action": np.array([0.0] + data.meta["action_values"])}
    return data, samples, raw


def request(data, samples, raw, i: int) -> dict:
    """Sample i as Scorer.score arguments in raw ids: the user's whole history before it."""
    seq = data.sequences
    start = seq.offsets[samples.user[i]]
    end = start + samples.position[i]
    history = History(raw["item"][seq.item[start:end]].tolist(), seq.timestamp[start:end].tolist(),
                      raw["action"][seq.action[start:end]].tolist())
    return {"history": history, "candidates": [raw["item"][samples.item[i]]],
            "request_time": int(samples.timestamp[i]), "user": raw["user"][samples.user[i]]}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_scorer_equals_the_forward_and_the_evaluation_of_every_model(trained, real, name):
    data, samples, raw = real
    run = trained(name)
    model, config, _ = load_checkpoint(run)
    builder = BatchBuilder(data, config.model.long_len, config.model.short_len)
    with torch.no_grad():  # no item cache: the training path
        forward = torch.sigmoid(model(builder.build(samples, np.arange(len(samples))))).numpy()
    evaluated, _ = predict(model, builder, samples, batch_size=50)  # what `etarec evaluate` computes, item cache on
    scorer = Scorer.load(run, threads=1)
    served = np.array([scorer.score(**request(data, samples, raw, i)).probabilities[0] for i in range(len(samples))])
    np.testing.assert_allclose(served, forward, rtol=0, atol=1e-6)
    np.testing.assert_allclose(evaluated, forward, rtol=0, atol=1e-6)
    assert np.std(forward) > 1e-3, "a model that scores everything alike proves nothing"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_exports_to_onnx_and_passes_the_parity_check(trained, tmp_path, capsys, name):
    pytest.importorskip("onnxruntime")
    capsys.readouterr()
    out = tmp_path / f"{name}.onnx"
    assert main(["export", "--checkpoint", str(trained(name)), "--out", str(out), "--check"]) == 0
    check = json.loads(capsys.readouterr().out)["check"]
    assert check["passed"] and check["model"] == name
    for shape in ("samples", "request"):
        assert check[shape]["max_abs_diff_probability"] <= 1e-5
    assert check["request"]["shape"]["candidates"] > 1


@pytest.mark.parametrize("name", sorted(MODELS))
def test_etarec_serve_answers_for_every_model(trained, real, name):
    httpx = pytest.importorskip("httpx")
    data, samples, raw = real
    run = trained(name)
    with running_service("--checkpoint", str(run), "--threads", "1") as (url, _):
        model, config, _ = load_checkpoint(run)
        sample = int(np.argmax(samples.position))  # the longest history
        asked = request(data, samples, raw, sample)
        # one request: the sample's history shared by the targets of 40 samples
        targets = samples.item[:40]
        history = asked["history"]
        body = {"history": {"items": list(history.items), "timestamps": list(history.timestamps),
                            "actions": list(history.actions)},
                "candidates": raw["item"][targets].tolist(), "request_time": asked["request_time"], "user": asked["user"]}
        answer = httpx.post(f"{url}/score", json=body, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == name
        batch = BatchBuilder(data, config.model.long_len, config.model.short_len).build(
            samples, np.full(len(targets), sample))
        batch.target_item = torch.from_numpy(targets)
        batch.target_category = torch.from_numpy(data.item_category[targets])
        with torch.no_grad():
            expected = torch.sigmoid(model(batch)).numpy()
        np.testing.assert_allclose(answer.json()["scores"], expected, rtol=0, atol=1e-6)
