"""Sharded tables (model.embeddings: torchrec): two processes holding half of every table each
train exactly what one process trains with whole, dense tables on the same global batch; a
killed sharded run resumes to the uninterrupted result; the checkpoint a sharded run writes is
the plain one that `etarec evaluate`, the Scorer and `etarec export` load. Real torchrun + gloo
on the bundled data.

TorchRec is the optional extra `scale`: without it these tests skip (CI installs it: `make dev`).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from etarec.cli import main
from etarec.config import build_config, dump_config
from etarec.data.batch import BatchBuilder
from etarec.data.prepare import ensure_prepared
from etarec.data.prepared import Samples, load_prepared
from etarec.serve.scorer import Scorer
from etarec.store.checkpoint import load_checkpoint
from etarec.train.inference import predict
from etarec.train.trainer import train
from runs import (ENV, REPO, assert_same_metrics, killed_and_resumed_two_process_run, run, tiny_raw, torchrun,
                  write_config)
from test_every_model_serves import request

needs_torchrec = pytest.mark.skipif(importlib.util.find_spec("torchrec") is None,
                                    reason="TorchRec is not installed: pip install -e '.[scale]'")


def sharded(raw: dict, sharding: str = "row_wise") -> dict:
    return {**raw, "model": {**raw["model"], "embeddings": "torchrec", "sharding": sharding}}


def weights(out) -> dict[str, torch.Tensor]:
    return torch.load(out / "model.pt", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prepared") / "ml-latest-small"
    ensure_prepared(build_config(tiny_raw(folder)).data, log=lambda *_: None)
    return folder


STEPS = 150  # an epoch of 150 global steps: over ~300 a last-bit difference (the order of a sum)
# grows into 1e-2 in the weights for any two-process run, dense DDP as much (see the full-epoch test)


@pytest.fixture(scope="module")
def one_dense_epoch(prepared_dir, tmp_path_factory):
    """(raw config, run folder, metrics) of one epoch on one process with dense tables."""
    raw = tiny_raw(prepared_dir, epochs=1, max_steps_per_epoch=STEPS)
    out = tmp_path_factory.mktemp("dense") / "run"
    return raw, out, train(build_config(raw), out, progress=False, log=lambda *_: None)


@pytest.fixture(scope="module")
def two_sharded_epoch(one_dense_epoch, tmp_path_factory):
    """The same epoch on two processes, every table split by rows between them, each holding
    half of the data."""
    raw, _, _ = one_dense_epoch
    folder = tmp_path_factory.mktemp("sharded")
    out = folder / "run"
    config = write_config(folder / "sharded.yaml", sharded(raw))
    run(torchrun("-m", "etarec", "train", "--config", str(config), "--out", str(out), "--no-progress"))
    return out


def assert_same_training(one: dict, one_out, two: dict, two_out, processes: int = 1) -> None:
    assert two["processes"] == 2 and one["processes"] == processes
    for one_epoch, two_epoch in zip(one["history"], two["history"], strict=True):
        assert two_epoch["train_loss"] == pytest.approx(one_epoch["train_loss"], abs=1e-6)
    for split in ("valid", "test"):
        for metric in ("auc", "gauc", "logloss"):
            assert two[split][metric] == pytest.approx(one[split][metric], abs=1e-4), (split, metric)
    expected, got = weights(one_out), weights(two_out)
    assert set(got) == set(expected), "the sharded run's model.pt is not in the plain (dense) layout"
    for name, weight in expected.items():
        torch.testing.assert_close(got[name], weight, rtol=1e-4, atol=1e-5, msg=name)


@needs_torchrec
@pytest.mark.slow
def test_two_processes_with_sharded_tables_train_like_one_with_dense_tables(one_dense_epoch, two_sharded_epoch):
    _, one_out, one = one_dense_epoch
    two = json.loads((two_sharded_epoch / "metrics.json").read_text())
    assert_same_training(one, one_out, two, two_sharded_epoch)
    assert two["test"]["auc"] > 0.7, "equal, but equally untrained"
    # its training state is split: state.pt without the tables, one folder of shards beside it
    state = torch.load(two_sharded_epoch / "state.pt", weights_only=True)
    assert not any(key.startswith("embeddings.") for key in state["model"])
    assert [p.name for p in two_sharded_epoch.glob("state-shards-*")] == [state["shards"]]


@needs_torchrec
@pytest.mark.slow
def test_over_a_whole_epoch_sharded_tables_train_bit_for_bit_as_dense_ddp_on_the_same_parts(prepared_dir, tmp_path):
    """The whole epoch of the bundled data (313 steps), two processes each: sharded tables against
    replicated tables (DDP), both holding the data by share, so each rank's part of every global
    batch is the same samples. Every weight and metric is equal, not close: the parts' sums are the
    same sums. (With DDP's default halves of each batch instead, the same global gradient is summed
    in another order, and Adam's first steps turn a last-bit difference in a near-zero gradient
    into ~1e-5 in a weight; over the 313 steps, 3.5e-4 in valid logloss: measured.)"""
    raw = tiny_raw(prepared_dir, epochs=1)
    raw["model"]["name"] = "din"
    raw["train"]["data_by_share"] = True
    assert "data_by_share" not in dump_config(build_config(tiny_raw(prepared_dir)))  # unset: left out of dumps
    outs = {}
    for name, config in (("ddp", raw), ("sharded", sharded(raw))):
        outs[name] = tmp_path / name
        path = write_config(tmp_path / f"{name}.yaml", config)
        run(torchrun("-m", "etarec", "train", "--config", str(path), "--out", str(outs[name]), "--no-progress"))
    ddp, two = (json.loads((outs[name] / "metrics.json").read_text()) for name in ("ddp", "sharded"))
    assert two["history"][0]["epoch"] == 1 and ddp["processes"] == two["processes"] == 2
    assert [epoch["train_loss"] for epoch in two["history"]] == [epoch["train_loss"] for epoch in ddp["history"]]
    for split in ("valid", "test"):
        assert {m: two[split][m] for m in ("auc", "gauc", "logloss")} == {m: ddp[split][m] for m in ("auc", "gauc", "logloss")}
    expected, got = weights(outs["ddp"]), weights(outs["sharded"])
    assert set(got) == set(expected)
    assert [name for name in expected if not torch.equal(got[name], expected[name])] == []


@needs_torchrec
@pytest.mark.slow
def test_table_wise_and_planner_chosen_sharding_train_the_same(one_dense_epoch, tmp_path):
    raw, one_out, _ = one_dense_epoch
    short = {**raw, "train": {**raw["train"], "max_steps_per_epoch": 20}}  # ETA
    one = train(build_config(short), tmp_path / "one", progress=False, log=lambda *_: None)
    for sharding in ("table_wise", "planner"):
        out = tmp_path / sharding
        config = write_config(tmp_path / f"{sharding}.yaml", sharded(short, sharding))
        run(torchrun("-m", "etarec", "train", "--config", str(config), "--out", str(out), "--no-progress"))
        assert_same_training(one, tmp_path / "one", json.loads((out / "metrics.json").read_text()), out)


@needs_torchrec
@pytest.mark.slow
def test_a_killed_sharded_run_resumes_to_the_uninterrupted_result(prepared_dir, tmp_path):
    raw = sharded(tiny_raw(prepared_dir, max_steps_per_epoch=16, state_every_steps=3))
    config = write_config(tmp_path / "sharded.yaml", raw)
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    # a worker dies mid-epoch, perhaps while the shards are being written
    killed_and_resumed_two_process_run(config, reference, killed)
    assert_same_metrics(killed, reference)
    for name, weight in weights(reference).items():
        assert torch.equal(weights(killed)[name], weight), name
    assert len(list(killed.glob("state-shards-*"))) == 1, "old shard folders were left behind"


@needs_torchrec
@pytest.mark.slow
def test_the_checkpoint_of_a_sharded_run_scores_alike_in_evaluate_and_the_scorer(two_sharded_epoch, prepared_dir,
                                                                                 capsys, tmp_path):
    # `etarec evaluate` on one process, dense tables, from model.pt: the sharded run's own test metrics
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(two_sharded_epoch), "--split", "test", "--no-progress"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    own = json.loads((two_sharded_epoch / "metrics.json").read_text())["test"]
    for metric in ("auc", "gauc", "logloss"):
        assert evaluated[metric] == pytest.approx(own[metric], abs=1e-6), metric

    # the Scorer (etarec serve's engine) gives the scores evaluate's predictions are made of
    data = load_prepared(prepared_dir)
    model, config, _ = load_checkpoint(two_sharded_epoch)
    test = data.splits["test"]
    index = np.linspace(0, len(test) - 1, 60).astype(np.int64)
    samples = Samples(**{field.name: getattr(test, field.name)[index] for field in dataclasses.fields(Samples)})
    builder = BatchBuilder(data, config.model.long_len, config.model.short_len)
    predicted, _ = predict(model, builder, samples, batch_size=25)
    scorer = Scorer.load(two_sharded_epoch, threads=1)
    raw = {"item": pq.read_table(prepared_dir / "items.parquet")["raw_id"].to_numpy(),
           "user": pq.read_table(prepared_dir / "users.parquet")["raw_id"].to_numpy(),
           "action": np.array([0.0] + data.meta["action_values"])}
    served = np.array([scorer.score(**request(data, samples, raw, i)).probabilities[0] for i in range(len(samples))])
    np.testing.assert_allclose(served, predicted, rtol=0, atol=1e-6)
    assert np.std(predicted) > 1e-3

    if importlib.util.find_spec("onnxruntime") is not None:  # etarec export loads it unchanged too
        assert main(["export", "--checkpoint", str(two_sharded_epoch), "--out", str(tmp_path / "m.onnx"), "--check"]) == 0
        assert json.loads(capsys.readouterr().out)["check"]["passed"]


def test_without_the_option_configs_read_as_before():
    dumped = dump_config(build_config({}))
    assert "embeddings:" not in dumped.replace("sparse_embeddings:", "") and "sharding:" not in dumped
    assert "embeddings: torchrec" in dump_config(build_config({"model": {"embeddings": "torchrec"}}))


def test_a_missing_torchrec_is_one_line_naming_the_install(tmp_path, prepared_dir):
    """torchrec made unimportable in a fresh interpreter: `etarec train` says what to install."""
    config = write_config(tmp_path / "sharded.yaml", sharded(tiny_raw(prepared_dir, epochs=1)))
    code = ("import sys; sys.modules['torchrec'] = None; from etarec.cli import main; "
            f"sys.exit(main(['train', '--config', {str(config)!r}, '--out', {str(tmp_path / 'out')!r}, '--no-progress']))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, result.stderr
    assert "pip install -e '.[scale]'" in line and "torchrec" in line


def test_each_process_holds_only_its_share_of_the_data(prepared_dir):
    """By share: disjoint users, their sequences and samples, together the whole dataset; every
    held sample builds the same window as from the whole data."""
    whole = load_prepared(prepared_dir)
    parts = [load_prepared(prepared_dir, share=(rank, 2)) for rank in (0, 1)]
    events = len(whole.sequences.item)
    assert sum(len(part.sequences.item) for part in parts) == events
    assert all(len(part.sequences.item) < 0.6 * events for part in parts), "a share is not about half"
    for split in ("train", "valid", "test"):
        ids = [part.shares[split].ids for part in parts]
        assert not set(ids[0]) & set(ids[1])
        assert sorted(np.concatenate(ids)) == list(range(len(whole.splits[split])))
        assert all(part.split_size(split) == len(whole.splits[split]) for part in parts)
    for part in parts:
        held = part.shares["train"].ids[::97]
        mine = BatchBuilder(part, 32, 8).build(part.splits["train"], np.arange(0, len(part.splits["train"]), 97))
        reference = BatchBuilder(whole, 32, 8).build(whole.splits["train"], held)
        for field in ("user", "target_item", "history_items", "history_categories", "history_time_gaps", "labels"):
            assert torch.equal(getattr(mine, field), getattr(reference, field)), field
