"""The training input pipeline: batches built ahead equal batches built in the step, windows as
int32 score like int64, a model's unread columns change nothing, and the allocator setting keeps
freed memory (page faults counted, not timed)."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
from dataclasses import fields

import numpy as np
import pytest
import torch

from etarec.config import DataConfig, build_config
from etarec.data.batch import OPTIONAL_INPUTS, Batch, BatchBuilder, epoch_order
from etarec.data.prefetch import prefetched
from etarec.data.prepare import prepare
from etarec.data.prepared import load_prepared
from etarec.models import MODELS, build_model
from etarec.nn.embeddings import Vocab, distinct_items


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prepared") / "ml-latest-small"
    prepare(DataConfig(dataset="ml-latest-small"), folder, log=lambda *_: None)
    return load_prepared(folder)


def assert_batches_equal(got: Batch, want: Batch) -> None:
    for field in fields(Batch):
        a, b = getattr(got, field.name), getattr(want, field.name)
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype and torch.equal(a, b), field.name
        else:
            assert a == b, field.name


@pytest.mark.parametrize("ahead", [0, 1, 3])
def test_prefetched_batches_are_the_synchronous_builders_batches_in_order(data, ahead):
    builder = BatchBuilder(data, long_len=64, short_len=8)
    samples = data.splits["train"]
    order = epoch_order(len(samples), seed=7, epoch=2)
    indices = [order[start : start + 100] for start in range(0, 1000, 100)]
    built = list(prefetched(lambda index: builder.build(samples, index), indices, ahead))
    assert len(built) == len(indices)
    for batch, index in zip(built, indices):
        assert_batches_equal(batch, builder.build(samples, index))


def test_an_error_in_a_prefetched_build_is_raised_at_its_batch():
    def build(i):
        if i == 3:
            raise ValueError("bad batch 3")
        return i

    got = []
    with pytest.raises(ValueError, match="bad batch 3"):
        for value in prefetched(build, range(6), ahead=2):
            got.append(value)
    assert got == [0, 1, 2]


def test_windows_are_int32_and_the_unread_columns_are_zeros_without_memory(data):
    samples = data.splits["train"]
    index = np.arange(50)
    full = BatchBuilder(data, 32, 4).build(samples, index)
    bare = BatchBuilder(data, 32, 4, inputs=()).build(samples, index)
    assert full.history_items.dtype == torch.int32 and full.history_categories.dtype == torch.int32
    for name in ("history_items", "history_categories", "history_mask", "target_item", "labels"):
        assert torch.equal(getattr(bare, name), getattr(full, name)), name
    for name in ("history_actions", "history_time_gaps"):
        column = getattr(bare, name)
        assert column.shape == full.history_items.shape and not column.any() and column.stride() == (0, 0)
    assert full.history_actions.any() and full.history_time_gaps.any()  # the full batch has them
    with pytest.raises(ValueError, match="unknown batch inputs"):
        BatchBuilder(data, 32, 4, inputs=("ratings",))


def widened(batch: Batch) -> Batch:
    """The batch with every id column as int64 (what the builder gave before int32 windows)."""
    return dataclasses.replace(batch, **{name: getattr(batch, name).to(torch.int64) for name in
                                         ("history_items", "history_categories", "history_actions")})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_scores_int32_windows_and_only_its_inputs_as_int64_full_batches(data, name):
    config = build_config({"model": {"name": name, "long_len": 48, "short_len": 8, "top_k": 8, "embedding_dim": 8,
                                     "attention_dim": 8, "mlp": [16], "use_time": True, "use_action": True}})
    torch.manual_seed(0)
    model = build_model(config.model, Vocab.from_meta(data.meta)).eval()
    samples, index = data.splits["test"], np.arange(64)
    assert model.inputs == OPTIONAL_INPUTS  # time and actions on: it reads both
    everything = BatchBuilder(data, 48, 8).build(samples, index)
    with torch.no_grad():
        reference = model(widened(everything))
        assert torch.equal(model(everything), reference)
        assert torch.equal(model(BatchBuilder(data, 48, 8, model.inputs).build(samples, index)), reference)
    # with time and actions off, the builder leaves them out and the scores do not move
    config = build_config({"model": {**config.model.model_dump(), "use_time": False, "use_action": False}})
    torch.manual_seed(0)
    model = build_model(config.model, Vocab.from_meta(data.meta)).eval()
    assert model.inputs == frozenset()
    with torch.no_grad():
        assert torch.equal(model(BatchBuilder(data, 48, 8, model.inputs).build(samples, index)),
                           model(widened(everything)))


FAULTS = textwrap.dedent("""
    import resource, torch
    from etarec.allocator import keep_freed_memory
    applied = keep_freed_memory()
    faults = []
    for _ in range(40):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        torch.ones(8 * 2**20)  # 32 MB allocated, touched, freed
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(applied, *faults)
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the setting is for glibc's malloc")
def test_keeping_freed_memory_stops_the_page_faults_of_repeated_large_tensors():
    """Per allocation, the steady state: the heap takes a few allocations to settle (measured: the
    first 5-8 of 40 still fault their pages in with the setting), so the median is compared."""
    def faults(setting: str) -> tuple[str, list[int]]:
        result = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, check=True,
                                env={**__import__("os").environ, "ETAREC_KEEP_FREED_MEMORY": setting})
        applied, *counts = result.stdout.split()
        return applied, sorted(map(int, counts))

    default_applied, default_faults = faults("0")
    kept_applied, kept_faults = faults("1")
    assert (default_applied, kept_applied) == ("False", "True")
    pages = 32 * 2**20 // 4096
    median = len(default_faults) // 2
    assert default_faults[median] > pages / 2, "malloc's default should fault each freed block in again"
    assert kept_faults[median] < pages / 10, f"kept memory still faults in: {kept_faults}"


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_distinct_items_equal_numpy_unique_with_each_items_category(dtype):
    generator = torch.Generator().manual_seed(3)
    num_items = 5000
    category = torch.randint(1, 40, (num_items,), generator=generator)  # each item's one category
    category[0] = 0  # padding
    items = torch.randint(0, num_items, (64, 700), generator=generator)
    items[:, :100] = 0  # left padding
    ids, categories = distinct_items(items.flatten().to(dtype), category[items].flatten().to(dtype), num_items)
    want = np.unique(items.numpy())
    want = want[want > 0]
    np.testing.assert_array_equal(ids.numpy(), want)
    np.testing.assert_array_equal(categories.numpy(), category.numpy()[want])
