"""Scoring a split in chunks on worker threads (etarec.train.inference) gives the forward's scores.

Every registered model, on real samples of the bundled data (histories beyond the window, short
ones and empty ones among them): the chunked scores equal one forward over all samples, in sample
order, whatever the number of workers; a collective forward (workers=1) keeps whole batches.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from etarec.config import build_config
from etarec.data.batch import BatchBuilder
from etarec.data.prepare import prepare
from etarec.data.prepared import Samples, load_prepared
from etarec.models import MODELS, build_model
from etarec.nn.embeddings import Vocab
from etarec.train.inference import CHUNK_POSITIONS, CHUNK_ROWS, chunk_rows, predict

LONG, SHORT = 32, 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prepared") / "ml-latest-small"
    prepare(build_config().data, folder, log=lambda *_: None)
    return load_prepared(folder)


@pytest.fixture(scope="module")
def samples(data) -> Samples:
    """Test samples spread over the split and the first samples of some users (short and empty histories)."""
    test, train = data.splits["test"], data.splits["train"]
    picked = [(test, np.linspace(0, len(test) - 1, 97).astype(np.int64)),
              (train, np.flatnonzero(train.position < 4)[::5][:20])]
    chosen = Samples(**{field.name: np.concatenate([getattr(split, field.name)[index] for split, index in picked])
                        for field in dataclasses.fields(Samples)})
    assert (chosen.position > LONG).any() and (chosen.position == 0).any()
    return chosen


def model_of(name: str, data):
    config = build_config({"model": {"name": name, "long_len": LONG, "short_len": SHORT, "top_k": 6, "hash_bits": 24,
                                     "embedding_dim": 16, "attention_dim": 16, "mlp": [16], "use_time": True,
                                     "use_action": True}})
    torch.manual_seed(3)
    return build_model(config.model, Vocab.from_meta(data.meta)).eval(), config


@pytest.mark.parametrize("name", sorted(MODELS))
def test_chunked_scores_equal_one_forward_whatever_the_workers(name, data, samples):
    model, config = model_of(name, data)
    builder = BatchBuilder(data, LONG, SHORT, model.inputs)
    with torch.no_grad():  # the reference: every sample in one forward, no item cache
        forward = torch.sigmoid(model(builder.build(samples, np.arange(len(samples))))).numpy()
    assert np.std(forward) > 1e-3, "a model that scores everything alike proves nothing"
    # 7 rows per chunk: chunks end inside batches of 50, and the last batch (17 samples) is short
    two = predict(model, builder, samples, batch_size=50, workers=2, rows=7)[0]
    three = predict(model, builder, samples, batch_size=50, workers=3, rows=7)[0]
    whole = predict(model, builder, samples, batch_size=50, workers=1)[0]  # whole batches, torch's threads
    np.testing.assert_array_equal(two, three)  # the workers change who scores a chunk, never its scores
    np.testing.assert_allclose(two, forward, rtol=0, atol=1e-6)
    np.testing.assert_allclose(whole, forward, rtol=0, atol=1e-6)


def test_nothing_to_score_and_fewer_rows_than_workers(data, samples):
    model, _ = model_of("eta", data)
    builder = BatchBuilder(data, LONG, SHORT, model.inputs)
    empty = Samples(**{field.name: getattr(samples, field.name)[:0] for field in dataclasses.fields(Samples)})
    assert predict(model, builder, empty, batch_size=50, workers=2)[0].shape == (0,)
    one = Samples(**{field.name: getattr(samples, field.name)[:1] for field in dataclasses.fields(Samples)})
    chunked = predict(model, builder, one, batch_size=50, workers=4)[0]
    np.testing.assert_allclose(chunked, predict(model, builder, one, batch_size=50, workers=1)[0], rtol=0, atol=1e-6)


def test_chunks_hold_a_bounded_number_of_window_positions():
    assert chunk_rows(256) == CHUNK_ROWS
    for length in (4096, 16384, 65536, 10**7):
        rows = chunk_rows(length)
        assert rows >= 1 and (rows * length <= CHUNK_POSITIONS or rows == 1)
    assert chunk_rows(16384) == 64


def test_the_catalog_fill_gives_every_item_the_bits_of_hashing_it_alone(data):
    """ETA's cache filled from the whole tables at once (fill_catalog) against item by item (fill)."""
    model, _ = model_of("eta", data)
    categories = torch.from_numpy(data.item_category)
    whole, one_by_one = model.item_cache(), model.item_cache()
    whole.fill_catalog(categories)
    for start in range(0, len(categories), 97):  # small groups: each item's rows gathered and hashed
        items = torch.arange(start, min(start + 97, len(categories)))
        one_by_one.fill(items, categories[items])
    assert whole.hashed.all() and one_by_one.hashed.all()
    assert torch.equal(whole.codes, one_by_one.codes)
    assert len(torch.unique(whole.codes, dim=0)) > len(categories) // 2, "signatures that do not tell items apart"
