"""ETA and DIN as the paper describes them: fixed hash, end-to-end retrieval, masked attention."""
import dataclasses

import pytest
import torch

from conftest import VOCAB, synthetic_batch
from etarec.config import Config, build_config
from etarec.errors import EtarecError
from etarec.models import MODELS, build_model
from etarec.nn.attention import DinAttention, MultiHeadTargetAttention
from etarec.nn.embeddings import category_of_items
from etarec.retrieval.simhash import table_codes
from etarec.store.checkpoint import load_checkpoint, save_checkpoint


def make(name="eta", **model) -> tuple[torch.nn.Module, Config]:
    config = build_config({"model": {"name": name, "long_len": 16, "short_len": 4, "top_k": 5, "hash_bits": 13,
                                     "use_time": True, "use_action": True, **model}})
    torch.manual_seed(0)
    return build_model(config.model, VOCAB), config


def history_codes(model, batch, cache=None) -> torch.Tensor:
    """[B, L, W] ETA's packed signatures of each position of the long window, as its retrieval reads them"""
    table = model.long_interest.selector.code_table(model.embeddings, batch.user_history(), cache=cache)  # [V, W]
    return table[batch.history_items]


def test_projection_is_a_fixed_buffer_that_survives_save_and_load(tmp_path):
    model, config = make()
    projection = model.long_interest.selector.simhash.projection
    assert all(p is not projection for p in model.parameters())
    assert "long_interest.selector.simhash.projection" in model.state_dict()
    batch = synthetic_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    before = projection.clone()
    torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels).backward()
    optimizer.step()
    assert torch.equal(model.long_interest.selector.simhash.projection, before), "training changed the hash"
    save_checkpoint(tmp_path, model, config, VOCAB)
    loaded, _, _ = load_checkpoint(tmp_path)
    assert torch.equal(loaded.long_interest.selector.simhash.projection, before)
    # a model built with another hash seed gets another projection; the checkpoint restores ours
    other, _ = make(hash_seed=1)
    assert not torch.equal(other.long_interest.selector.simhash.projection, before)
    model.eval()
    assert torch.equal(loaded(batch), model(batch))


def test_gradients_reach_only_retrieved_short_and_target_items():
    model, _ = make(long_len=24, short_len=3, top_k=4)
    batch = synthetic_batch(batch=1, long_len=24, short_len=3, valid_from=[2])
    # distinct items per position, so an embedding row identifies one behaviour
    batch.history_items[0, 2:] = torch.arange(100, 122)
    model.zero_grad()
    model(batch).sum().backward()
    grad_rows = model.embeddings.item.weight.grad.abs().sum(1) > 0
    index, found = model.retrieve(batch)
    retrieved = set(batch.history_items[0, index[0][found[0]]].tolist())
    short = set(batch.history_items[0, -3:].tolist())
    target = {int(batch.target_item[0])}
    assert len(retrieved) == 4
    assert retrieved - short, "the test needs a retrieved behaviour outside the short window"
    expected = retrieved | short | target
    assert set(torch.nonzero(grad_rows).flatten().tolist()) == expected


def test_retrieval_is_recomputed_from_current_embeddings():
    model, _ = make(long_len=16, top_k=3)
    batch = synthetic_batch(batch=2, valid_from=[0, 0])
    index_before, _ = model.retrieve(batch)
    with torch.no_grad():  # move the embeddings: a cached signature would not see it
        model.embeddings.item.weight.copy_(torch.randn_like(model.embeddings.item.weight))
    index_after, _ = model.retrieve(batch)
    assert not torch.equal(index_before, index_after)


@pytest.mark.parametrize("path", ["gathered", "whole_table", "catalog"])
def test_unique_item_hashing_equals_per_position_hashing(path, monkeypatch):
    """Each way code_table hashes a window: the distinct items gathered, the whole item table from
    its rows with the categories the window gives, or with the catalog's categories and the window
    not read (chosen by the share of the catalog the window holds and by its length; forced here)."""
    from etarec.models import eta

    monkeypatch.setattr(eta, "WHOLE_TABLE", 2.0 if path == "gathered" else 0.0)
    monkeypatch.setattr(eta, "POSITIONS_PER_ITEM", 0 if path == "catalog" else 10**9)
    tables, scatters = [], []
    monkeypatch.setattr(eta, "table_codes", lambda *args: tables.append(1) or table_codes(*args))
    monkeypatch.setattr(eta, "category_of_items", lambda *args: scatters.append(1) or category_of_items(*args))
    model, _ = make()
    # the catalog the synthetic batches draw from: item i has category i % (C - 2) + 2
    catalog = torch.arange(VOCAB.num_items) % (VOCAB.num_categories - 2) + 2
    catalog[0] = 0
    model.embeddings.use_catalog(catalog)
    batch = synthetic_batch(batch=6, long_len=16)
    batch.history_items[:, 8:] = batch.history_items[:, :8].clone()  # repeated items
    batch.history_categories[:, 8:] = batch.history_categories[:, :8].clone()
    assert torch.equal(catalog[batch.history_items], batch.history_categories)
    per_position = model.long_interest.selector.simhash(
        model.embeddings.items(batch.history_items, batch.history_categories))
    assert torch.equal(history_codes(model, batch), per_position)
    assert (len(tables), len(scatters)) == {"gathered": (0, 1), "whole_table": (1, 1), "catalog": (1, 0)}[path]


def test_a_catalog_of_another_size_is_refused():
    model, _ = make()
    with pytest.raises(ValueError, match="catalog has 3 items"):
        model.embeddings.use_catalog(torch.zeros(3, dtype=torch.int64))


def reference_attention(module: MultiHeadTargetAttention, query, keys, mask):
    """Per row and head, in float64, over the real keys only."""
    heads = module.heads
    rows = []
    for b in range(len(query)):
        q = (module.query.weight.double() @ query[b].double()).view(heads, -1)
        real = keys[b][mask[b]].double()
        key_weight, value_weight = module.key_value.weight.double().chunk(2, dim=0)
        k = (real @ key_weight.T).view(len(real), heads, q.shape[1])
        v = (real @ value_weight.T).view(len(real), heads, q.shape[1])
        outputs = []
        for h in range(heads):
            if len(real) == 0:
                outputs.append(torch.zeros(q.shape[1], dtype=torch.float64))
                continue
            w = torch.softmax(k[:, h] @ q[h] / q.shape[1] ** 0.5, 0)
            outputs.append(w @ v[:, h])
        pooled = torch.cat(outputs)
        rows.append(module.output.weight.double() @ pooled + module.output.bias.double())
    return torch.stack(rows)


def test_multi_head_attention_masks_padding_in_every_head():
    torch.manual_seed(0)
    module = MultiHeadTargetAttention(query_dim=6, key_dim=10, attention_dim=12, heads=3)
    query, keys = torch.randn(5, 6), torch.randn(5, 9, 10)
    mask = torch.rand(5, 9) < 0.6
    mask[0] = False  # all padding -> zero interest
    mask[1] = True
    got = module(query, keys, mask)
    torch.testing.assert_close(got.double(), reference_attention(module, query, keys, mask), rtol=1e-5, atol=1e-5)
    keys_changed = keys.clone()
    keys_changed[~mask] = 1e3  # what padding holds must not matter
    torch.testing.assert_close(module(query, keys_changed, mask), got)


@pytest.mark.parametrize("name", ["eta", "din"])
@pytest.mark.parametrize("attention", ["multihead", "din"])
@pytest.mark.parametrize("activation", ["relu", "prelu", "dice"])
def test_models_score_every_history_shape(name, attention, activation):
    model, _ = make(name, attention=attention, activation=activation)
    batch = synthetic_batch(batch=5, valid_from=[16, 15, 12, 0, 3])  # empty, 1, 4, full, most
    logits = model(batch)
    assert logits.shape == (5,) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_padding_content_does_not_change_scores():
    model, _ = make()
    model.eval()
    batch = synthetic_batch(batch=4, valid_from=[16, 5, 9, 2])
    changed = synthetic_batch(batch=4, valid_from=[16, 5, 9, 2])
    for name in ("user", "user_profile", "target_item", "target_category", "labels"):
        setattr(changed, name, getattr(batch, name))
    for name in ("history_items", "history_categories", "history_actions", "history_time_gaps"):
        real = getattr(batch, name)
        getattr(changed, name).copy_(torch.where(batch.history_mask, real, real.max()))
    torch.testing.assert_close(model(changed), model(batch))


@pytest.mark.parametrize("kind", ["multihead", "din"])
def test_projecting_then_gathering_equals_gathering_then_projecting(kind):
    """What lets a scorer project one shared history once for all candidates."""
    model, _ = make(attention=kind)
    attention = model.long_interest.attention
    query, history = torch.randn(6, model.embeddings.item_dim), torch.randn(1, 20, model.embeddings.behaviour_dim)
    index = torch.randint(0, 20, (6, 5))
    mask = torch.rand(6, 5) < 0.8
    gathered = history.expand(6, -1, -1).gather(1, index[:, :, None].expand(-1, -1, history.shape[-1]))
    projected = attention.project(history)[0][index]  # [6, 5, P]
    attended = attention.attend(query[:, None, :], projected, mask)  # [6, 1, A]: one candidate per row
    torch.testing.assert_close(attended[:, 0], attention(query, gathered, mask))


def test_eval_signature_cache_equals_fresh_hashing_and_a_new_one_follows_training():
    """Evaluation owns the cache (model.item_cache()); there is no hidden one: a cache made before a
    weight change is not used after it, the next evaluation asks for a fresh one."""
    model, _ = make()
    batches = [synthetic_batch(batch=6, seed=s) for s in range(3)]

    def per_position(batch):
        return model.long_interest.selector.simhash(model.embeddings.items(batch.history_items, batch.history_categories))

    model.eval()
    cache = model.item_cache()
    for batch in batches + batches:  # the second pass is served from the cache
        assert torch.equal(history_codes(model, batch, cache), per_position(batch))
        assert torch.equal(model(batch, cache), model(batch)), "evaluation with a cache differs from without"
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=10.0)
    model(batches[0]).sum().backward()
    optimizer.step()
    model.eval()
    # the old cache is stale now (the test's premise: training moved the signatures)...
    assert not torch.equal(history_codes(model, batches[0], cache), per_position(batches[0]))
    fresh = model.item_cache()  # ...so evaluation after the change hashes anew
    assert fresh is not cache and not fresh.hashed[1:].any()  # row 0 is padding, never read
    assert torch.equal(history_codes(model, batches[0], fresh), per_position(batches[0])), "stale signatures after training"
    assert torch.equal(history_codes(model, batches[0]), per_position(batches[0]))  # no cache: hashed now
    for batch in batches:
        assert torch.equal(model(batch, fresh), model(batch))


def test_embedding_init_std_sets_the_scale_and_keeps_padding_zero():
    model, _ = make(embedding_init_std=0.01)
    weight = model.embeddings.item.weight.detach()
    assert abs(float(weight[1:].std()) - 0.01) < 0.002
    assert torch.equal(weight[0], torch.zeros_like(weight[0]))
    default, _ = make()
    assert float(default.embeddings.item.weight.detach()[1:].std()) > 0.5  # torch's N(0, 1) when unset


def repeat_histories(batch, times: int):
    """Each sample's history `times` times in a row ([B] -> [B * times]), with targets left to the caller."""
    repeated = {name: getattr(batch, name) for name in batch.__dataclass_fields__}
    for name, value in repeated.items():
        if isinstance(value, torch.Tensor):
            repeated[name] = value.repeat_interleave(times, dim=0)
    return type(batch)(**repeated)


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("attention", ["multihead", "din"])
def test_shared_history_scores_many_candidates_as_forward_scores_each(name, attention, device):
    """What serving relies on: candidate_logits over C candidates of one shared user side (each
    window embedded and projected once) equals forward over a batch that repeats the history for
    each candidate, and forward(batch) itself is the first candidate's column. On every device."""
    model, _ = make(name, attention=attention, sdim_hashes=12, sdim_tau=3)
    if attention == "din" and not any(isinstance(m, DinAttention) for m in model.modules()):
        pytest.skip(f"{name} has no attention that model.attention configures")
    model.eval().to(device)  # dropout off; random weights as initialised
    tolerance = 1e-6 if device.type == "cpu" else 1e-5  # a GPU's GEMMs sum in shape-dependent orders
    rows, c = 7, 4
    batch = synthetic_batch(batch=rows, seed=3, valid_from=[16, 0, 9, 16, 15, 3, 12])  # two empty, one full
    # one category per item, as in the data (ETA's signatures and SIM's search read categories by item)
    batch.target_category = batch.target_item % (VOCAB.num_categories - 2) + 2
    batch.target_item[2], batch.target_category[2] = batch.history_items[1, 5], batch.history_categories[1, 5]
    # the candidates of row b: the targets of samples b, b+1, ..., b+C-1 (its own target first)
    pick = (torch.arange(rows)[:, None] + torch.arange(c)[None, :]) % rows  # [B, C]
    items, categories = batch.target_item[pick], batch.target_category[pick]  # [B, C]
    repeated = repeat_histories(batch, c)
    repeated.target_item, repeated.target_category = items.flatten(), categories.flatten()
    batch, repeated, items, categories = batch.to(device), repeated.to(device), items.to(device), categories.to(device)
    with torch.no_grad():
        expected = model(repeated).view(rows, c)  # one candidate per history row, as in training
        torch.testing.assert_close(model(batch), expected[:, 0], rtol=tolerance, atol=tolerance)
        for shared in (True, False):
            caches = [None, model.item_cache()] if model.item_cache() is not None else [None]
            for cache in caches:
                side = model.user_side(batch.user_history(), shared=shared, cache=cache)
                got = model.candidate_logits(side, items, categories)  # [B, C]
                assert got.device.type == expected.device.type == device.type
                torch.testing.assert_close(got, expected, rtol=tolerance, atol=tolerance,
                                           msg=lambda m: f"shared={shared} cache={cache is not None}: {m}")
                assert torch.isfinite(got).all()


@pytest.mark.parametrize("name", ["eta", "din", "twin"])
def test_gaps_from_the_last_behaviour_ignore_how_long_the_user_was_away(name):
    """time_origin last_behaviour: a request made later (every gap larger by the same amount)
    scores as the earlier one, and scores as the request-origin model fed gaps rebased by hand."""
    from_last, _ = make(name, time_origin="last_behaviour")
    from_request, _ = make(name)
    from_last.eval(), from_request.eval()
    batch = synthetic_batch(batch=5, long_len=16, valid_from=[0, 3, 9, 15, 16])  # the last row has no history
    later = dataclasses.replace(batch, history_time_gaps=torch.where(batch.history_mask,
                                                                     batch.history_time_gaps + 86_400 * 30, 0))
    rebased = dataclasses.replace(batch, history_time_gaps=torch.where(
        batch.history_mask, batch.history_time_gaps - batch.history_time_gaps[:, -1:], 0))
    with torch.no_grad():
        scores = from_last(batch)
        assert torch.equal(from_last(later), scores)
        assert torch.equal(from_request(rebased), scores)
        assert not torch.equal(from_request(later), from_request(batch))  # the request origin does see it


def test_a_time_origin_without_time_gaps_is_refused():
    with pytest.raises(EtarecError, match="time_origin=last_behaviour measures the time gaps, which are off"):
        make(use_time=False, time_origin="last_behaviour")
