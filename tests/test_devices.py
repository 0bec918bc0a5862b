"""Every device present (`device`: cpu, and cuda where torch sees one; `pytest -m cuda` runs the
CUDA cases alone): models keep their tensors on their device and never wait for it, signatures do
not depend on autocast, the Scorer serves on the device what the model computes, training on the
device is deterministic and bfloat16 trains close to float32; with two GPUs, nccl DDP trains what
one process trains.

The first test needs no GPU: it runs every model on the 'meta' device, where tensors have shapes
but no data. A tensor made on the CPU (a factory without device=, a table copied per call) then
shows up as a CPU tensor in some op, and anything that reads a value on the host (.item(), `if
tensor.any()`, a numpy round trip, a nonzero whose size depends on the data) raises: on CUDA each
of these is a host allocation or a host sync on the hot path.
"""
from __future__ import annotations

import json
import os
import shutil
import traceback

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from conftest import VOCAB, synthetic_batch
from etarec.config import build_config
from etarec.data.batch import Batch
from etarec.data.prepare import ensure_prepared
from etarec.models import MODELS, build_model
from etarec.retrieval.selectors import BucketHash
from etarec.retrieval.sign_product import sign_vectors
from etarec.retrieval.simhash import SimHash, pack_bits, table_order_keys
from etarec.serve.scorer import History, Scorer
from etarec.store.catalog import encode_strings
from etarec.store.checkpoint import save_checkpoint
from etarec.train.trainer import train
from runs import final_weights, run, tiny_raw, torchrun, write_config

META = torch.device("meta")
SMALL = {"long_len": 16, "short_len": 4, "top_k": 5, "hash_bits": 72, "use_time": True, "use_action": True,
         "sdim_hashes": 12, "sdim_tau": 3, "embedding_dim": 8, "attention_dim": 16, "mlp": [16]}


def small_model(name: str, **model) -> tuple[torch.nn.Module, object]:
    config = build_config({"model": {"name": name, **SMALL, **model}})
    torch.manual_seed(0)
    return build_model(config.model, VOCAB), config


class DeviceAudit(TorchDispatchMode):
    """Records every op that reads or makes a tensor (0-d scalars aside) off `device`, with the
    etarec line that called it."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.device, self.found = device, {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten((args, kwargs, out))[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device != self.device and tensor.dim() > 0:
                ours = [f"{frame.filename.split('src/')[-1]}:{frame.lineno}" for frame in traceback.extract_stack()
                        if "/etarec/" in frame.filename and "/tests/" not in frame.filename]
                self.found.setdefault(f"{func} on {tensor.device} at {ours[-1] if ours else '?'}", None)
        return out


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("attention", ["multihead", "din"])
def test_every_model_keeps_its_tensors_on_the_device_and_never_waits_for_it(name, attention):
    model, _ = small_model(name, attention=attention, activation="dice")
    model.to(META)
    batch = synthetic_batch(batch=7, seed=3).to(META)
    candidates = batch.target_item[:, None].repeat(1, 3), batch.target_category[:, None].repeat(1, 3)

    def every_path():
        model.train()
        model(batch).sum().backward()  # a training step's forward and backward
        model.eval()
        with torch.no_grad():
            model(batch)  # evaluation without and with the item cache
            model(batch, model.item_cache())
            for cache in (None, model.item_cache()):  # serving: the shared user side, C candidates
                model.candidate_logits(model.user_side(batch.user_history(), shared=True, cache=cache), *candidates)

    every_path()  # the first pass copies module constants to the device, once (retrieval/fast_path.py)
    with DeviceAudit(META) as audit:
        every_path()
    assert not audit.found, "tensors off the model's device:\n" + "\n".join(audit.found)


def test_signatures_do_not_depend_on_autocast(device):
    """An item's SimHash bits (ETA, the sign product, SDIM's buckets) are the same in a bfloat16
    step as in float32: the projection runs in float32 under autocast."""
    torch.manual_seed(0)
    embeddings = torch.randn(2000, 32, device=device)
    simhash, buckets = SimHash(32, 64, seed=1, split=16).to(device), BucketHash(32, 48, 3, seed=1).to(device)
    expected = simhash(embeddings), sign_vectors(simhash.project(embeddings), torch.float32), buckets(embeddings)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        got = simhash(embeddings), sign_vectors(simhash.project(embeddings), torch.float32), buckets(embeddings)
        plain = embeddings @ simhash.projection > 0  # what a bare product would give under autocast
    for name, a, b in zip(("simhash", "sign_vectors", "buckets"), got, expected):
        assert torch.equal(a, b), name
    assert not torch.equal(plain, embeddings @ simhash.projection > 0), "the test's premise: bfloat16 flips bits"


@pytest.mark.skipif(not (shutil.which("c++") or shutil.which("g++")), reason="no C++ compiler for torch.compile on CPU")
@pytest.mark.slow
def test_the_device_keys_compile_into_one_graph_that_equals_the_eager_keys():
    """CUDA runs table_order_keys compiled (one Triton kernel); here the same graph is compiled
    for the CPU: no graph break, one graph for all batch sizes and window lengths, the same keys."""
    compiled = torch.compile(table_order_keys, dynamic=True, fullgraph=True)
    g = torch.Generator().manual_seed(0)
    for rows, length, bits in [(3, 40, 13), (5, 33, 64), (2, 17, 130), (4, 50, 7)]:
        table = pack_bits(torch.rand(300, bits, generator=g) > 0.5)
        items = torch.randint(0, 300, (rows, length), generator=g)
        mask = torch.rand(rows, length, generator=g) > 0.3
        query = pack_bits(torch.rand(rows, bits, generator=g) > 0.5)
        keys = compiled(query, table, items, mask)
        assert keys.dtype == torch.int32 and torch.equal(keys, table_order_keys(query, table, items, mask))


# --- serving: the Scorer on the device equals the model's forward on the CPU -------------------


def scorer_checkpoint(folder, name: str) -> torch.nn.Module:
    """A random-weights checkpoint with a catalog: raw item id str(i) is item i, user str(u) is user u."""
    model, config = small_model(name)
    g = np.random.default_rng(0)
    categories = np.concatenate([[0, 1], np.arange(2, VOCAB.num_items) % (VOCAB.num_categories - 2) + 2])
    catalog = {
        "item_raw_ids": encode_strings(["", ""] + [str(i) for i in range(2, VOCAB.num_items)]),
        "item_category": torch.from_numpy(categories),
        "user_raw_ids": encode_strings([""] + [str(u) for u in range(1, VOCAB.num_users)]),
        "user_profiles": torch.from_numpy(np.stack([g.integers(0, s, VOCAB.num_users) for s in VOCAB.profile_sizes], 1)),
        "action_values": [float(v) for v in range(1, VOCAB.num_actions)],
    }
    save_checkpoint(folder, model, config, VOCAB, catalog=catalog)
    return model.eval()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_scorer_on_the_device_scores_like_the_models_forward(name, device, tmp_path):
    model = scorer_checkpoint(tmp_path, name)
    scorer = Scorer.load(tmp_path, threads=1, device=device)
    assert next(scorer.model.parameters()).device.type == device.type
    rng = np.random.default_rng(1)
    now, long_len, short_len = 1_700_000_000, SMALL["long_len"], SMALL["short_len"]
    categories = torch.from_numpy(scorer.catalog.item_category)
    for length in (0, 1, 9, 16, 21):  # empty, short, full and longer than the window
        items = rng.integers(2, VOCAB.num_items, length)
        timestamps = np.sort(rng.integers(now - 10**7, now, length))
        actions = rng.integers(1, VOCAB.num_actions, length)
        candidates = rng.integers(2, VOCAB.num_items, 300)  # more than one CPU chunk (128)
        user = int(rng.integers(1, VOCAB.num_users))
        got = scorer.score(History(items.tolist(), timestamps.tolist(), actions.astype(float).tolist()),
                           candidates.tolist(), request_time=now, user=user).probabilities
        # the same request as a Batch: one row per candidate, the last long_len behaviours right-aligned
        kept, pad = slice(max(length - long_len, 0), length), max(long_len - length, 0)

        def window(values):
            return torch.from_numpy(np.pad(values[kept], (pad, 0)).astype(np.int64))[None].expand(len(candidates), -1)

        history_items = window(items)
        batch = Batch(user=torch.full((len(candidates),), user),
                      user_profile=torch.from_numpy(scorer.catalog.user_profiles[[user] * len(candidates)]),
                      target_item=torch.from_numpy(candidates), target_category=categories[candidates],
                      history_items=history_items, history_categories=categories[history_items],
                      history_actions=window(actions), history_time_gaps=window(now - timestamps),
                      history_mask=history_items > 0, labels=torch.zeros(len(candidates)), short_len=short_len)
        with torch.no_grad():
            expected = torch.sigmoid(model(batch)).numpy()
        tolerance = 1e-6 if device.type == "cpu" else 1e-5
        np.testing.assert_allclose(got, expected, rtol=tolerance, atol=tolerance, err_msg=f"history of {length}")


# --- training on the device ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prepared") / "ml-latest-small"
    ensure_prepared(build_config(tiny_raw(folder)).data, log=lambda *_: None)
    return folder


def quick_train(prepared_dir, out, device, **train_settings) -> dict:
    raw = tiny_raw(prepared_dir, epochs=2, max_steps_per_epoch=6, state_every_steps=4, **train_settings)
    return train(build_config(raw), out, progress=False, log=lambda *_: None, device=device)


@pytest.fixture
def deterministic(device, monkeypatch):
    """On CUDA, deterministic kernels; cuBLAS needs CUBLAS_WORKSPACE_CONFIG for them (gpu.sh sets it
    before the process starts, which is when it counts for every cuBLAS handle)."""
    if device.type != "cuda":
        yield
        return
    if "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.slow
def test_training_on_the_device_is_deterministic(prepared_dir, tmp_path, device, deterministic):
    first = quick_train(prepared_dir, tmp_path / "a", device)
    second = quick_train(prepared_dir, tmp_path / "b", device)
    assert [epoch["train_loss"] for epoch in first["history"]] == [epoch["train_loss"] for epoch in second["history"]]
    for split in ("valid", "test"):
        for metric in ("auc", "gauc", "logloss"):
            assert first[split][metric] == second[split][metric], f"{split} {metric}"
    for name, weight in final_weights(tmp_path / "a").items():
        assert torch.equal(final_weights(tmp_path / "b")[name], weight), name
    assert 0.5 < first["test"]["auc"] < 1.0


@pytest.mark.slow
def test_bfloat16_trains_close_to_float32_and_float32_is_the_default(prepared_dir, tmp_path, device):
    assert build_config({}).train.precision == "float32"
    single = quick_train(prepared_dir, tmp_path / "float32", device)
    half = quick_train(prepared_dir, tmp_path / "bfloat16", device, precision="bfloat16")
    assert (tmp_path / "bfloat16" / "config.yaml").read_text().count("precision: bfloat16") == 1
    assert "precision" not in (tmp_path / "float32" / "config.yaml").read_text()  # old configs read the same
    for one, other in zip(single["history"], half["history"]):
        assert other["train_loss"] == pytest.approx(one["train_loss"], abs=0.01)
    assert half["test"]["auc"] == pytest.approx(single["test"]["auc"], abs=0.01)
    assert half["test"]["logloss"] == pytest.approx(single["test"]["logloss"], abs=0.01)
    assert half["test"]["auc"] > 0.55  # it learned


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible")
def test_pinned_batches_copy_to_the_gpu_without_blocking():
    batch = synthetic_batch(batch=8, long_len=32)
    pinned = batch.pin_memory()
    assert all(getattr(pinned, name).is_pinned() for name in ("history_items", "history_mask", "labels", "user_profile"))
    moved = pinned.to("cuda")
    torch.cuda.synchronize()
    assert moved.history_items.is_cuda and torch.equal(moved.history_items.cpu(), batch.history_items)
    assert moved.short_len == batch.short_len


@pytest.mark.cuda
@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (nccl DDP); fewer are visible")
def test_two_gpus_over_nccl_train_like_one_process(prepared_dir, tmp_path):
    raw = tiny_raw(prepared_dir, max_steps_per_epoch=8, batch_size=512)
    config = write_config(tmp_path / "tiny.yaml", raw)
    two = tmp_path / "two"
    run(torchrun("-m", "etarec", "train", "--config", str(config), "--out", str(two), "--no-progress"))
    single = train(build_config(raw), tmp_path / "one", progress=False, log=lambda *_: None, device="cuda")
    double = json.loads((two / "metrics.json").read_text())
    assert double["processes"] == 2 and single["processes"] == 1
    for name, weight in final_weights(tmp_path / "one").items():
        torch.testing.assert_close(final_weights(two)[name].cpu(), weight.cpu(), rtol=1e-4, atol=1e-5, msg=name)
    for split in ("valid", "test"):
        assert double[split]["auc"] == pytest.approx(single[split]["auc"], abs=1e-4)
