"""Two processes (torchrun, DDP over gloo) train exactly what one process trains with the same
global batch and seed: disjoint shares of every global batch, one AUC over the gathered
predictions, only rank 0 writing; and a killed two-process run resumes to the uninterrupted result."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ddp_probe import cut_train
from etarec.config import build_config
from etarec.data.batch import epoch_order, rank_share
from etarec.data.prepare import ensure_prepared
from etarec.data.prepared import load_prepared
from etarec.train.trainer import train
from runs import (REPO, assert_same_metrics, final_weights, killed_and_resumed_two_process_run, run, tiny_raw,
                  torchrun, write_config)

BATCH = 511  # odd: each global batch splits 255 / 256 between the two ranks
STEPS = 13
TRAIN_SAMPLES = (STEPS - 1) * BATCH + 1  # the last global batch has one sample: a rank gets none of it


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prepared") / "ml-latest-small"
    ensure_prepared(build_config(tiny_raw(folder)).data, log=lambda *_: None)
    return folder


def test_rank_shares_are_disjoint_cover_the_batch_and_differ_by_at_most_one():
    for size in (0, 1, 2, 7, 511):
        for ranks in (1, 2, 3, 8):
            index = epoch_order(size, seed=3, epoch=1)
            shares = [rank_share(index, rank, ranks) for rank in range(ranks)]
            assert np.array_equal(np.concatenate(shares), index)  # contiguous, in order, complete
            assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert not np.array_equal(epoch_order(100, 3, 0), epoch_order(100, 3, 1)), "each epoch is reshuffled"


@pytest.mark.slow
def test_two_processes_train_like_one_with_the_same_global_batch(prepared_dir, tmp_path):
    raw = tiny_raw(prepared_dir, batch_size=BATCH)
    two = tmp_path / "two"
    run(torchrun(str(REPO / "tests" / "ddp_probe.py"), json.dumps(raw), str(two), str(TRAIN_SAMPLES)))

    # what each rank trained on: its disjoint part of every global batch, together the whole epoch
    steps = [json.loads((two / f"steps-rank{rank}.json").read_text()) for rank in (0, 1)]
    assert len(steps[0]) == len(steps[1]) == 2 * STEPS
    orders = []
    for epoch in range(2):
        records = [steps[rank][epoch * STEPS:(epoch + 1) * STEPS] for rank in (0, 1)]
        trained = [[], []]
        for first, second in zip(*records):
            assert first["global"] == second["global"], "the ranks disagree on the global batch"
            weighted = [record for record in (first, second) if record["scale"] > 0]  # weight 0 trains nothing
            assert sorted(i for record in weighted for i in record["local"]) == sorted(first["global"])
            for rank, record in enumerate((first, second)):
                trained[rank] += record["local"] if record["scale"] > 0 else []
        assert not set(trained[0]) & set(trained[1])
        assert sorted(trained[0] + trained[1]) == list(range(TRAIN_SAMPLES))
        assert {len(records[rank][0]["local"]) for rank in (0, 1)} == {255, 256}
        # one sample left: one rank trains on it (weight 2 / 1), the other runs a zero-weight stand-in
        assert sorted(records[rank][-1]["scale"] for rank in (0, 1)) == [0.0, 2.0]
        orders.append([i for record in records[0] for i in record["global"]])
    assert orders[0] != orders[1], "the epochs were not reshuffled"

    # the same training as one process with the same global batch and seed
    one = tmp_path / "one"
    data = cut_train(load_prepared(prepared_dir), TRAIN_SAMPLES)
    single = train(build_config(raw), one, progress=False, log=lambda *_: None, data=data)
    for name, weight in final_weights(one).items():
        torch.testing.assert_close(final_weights(two)[name], weight, rtol=1e-4, atol=1e-5, msg=name)
    double = json.loads((two / "metrics.json").read_text())
    assert double["processes"] == 2 and single["processes"] == 1
    for one_epoch, two_epochs in zip(single["history"], double["history"]):
        assert two_epochs["train_loss"] == pytest.approx(one_epoch["train_loss"], abs=1e-6)
    for split in ("valid", "test"):
        for metric in ("auc", "gauc", "logloss"):
            assert double[split][metric] == pytest.approx(single[split][metric], abs=1e-4)
    # only rank 0 wrote the run's files (the probe's step records aside), and nothing half-written
    assert {p.name for p in two.iterdir()} == {"config.yaml", "model.pt", "state.pt", "metrics.json",
                                               "steps-rank0.json", "steps-rank1.json"}


@pytest.mark.slow
def test_a_killed_two_process_run_resumes_to_the_uninterrupted_result(prepared_dir, tmp_path):
    config = write_config(tmp_path / "tiny.yaml", tiny_raw(prepared_dir, max_steps_per_epoch=16, state_every_steps=3))
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    killed_and_resumed_two_process_run(config, reference, killed)
    assert_same_metrics(killed, reference)
    for name, weight in final_weights(reference).items():
        assert torch.equal(final_weights(killed)[name], weight), name
