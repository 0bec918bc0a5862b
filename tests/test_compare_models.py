"""The comparison suite's models: each trains, each handles every history shape, and each selects
what its paper says it selects."""
import pytest
import torch

from conftest import VOCAB, synthetic_batch
from etarec.config import build_config
from etarec.errors import EtarecError
from etarec.models import MODELS, build_model
from etarec.models.base import Candidates
from etarec.retrieval.selectors import inner_product_top_k

SHAPES = [16, 15, 12, 0, 3]  # first real column per row: empty, one, four, full, most


def make(name, **model):
    config = build_config({"model": {"name": name, "long_len": 16, "short_len": 4, "top_k": 5, "hash_bits": 13,
                                     "sdim_hashes": 12, "sdim_tau": 3, "use_time": True, "use_action": True,
                                     **model}})
    torch.manual_seed(0)
    return build_model(config.model, VOCAB)


def target_vectors(model, batch) -> torch.Tensor:
    """[B, item_dim] the embeddings of the samples' targets: the attention queries"""
    return model.embeddings.items(batch.target_item, batch.target_category)


def long_interest(model, batch) -> torch.Tensor:
    """[B, width] the long interest of each sample's target, as forward computes it"""
    side = model.prepared(model.user_side(batch.user_history(), shared=False))
    items, categories = batch.target_item[:, None], batch.target_category[:, None]
    candidates = Candidates(items, categories, model.embeddings.items(items, categories))
    return model.long_interest(model.embeddings, side.history, side.long, candidates)[:, 0]


def all_behaviours(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, L, Db], mask [B, L]) every behaviour of the window embedded on its own"""
    history = batch.user_history()
    return model.embeddings.behaviours(*history.behaviour_columns()), history.mask


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_learns_a_batch(name):
    model = make(name)
    batch = synthetic_batch(batch=32, valid_from=torch.arange(32) % 17)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch.labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], f"{name}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("attention", ["multihead", "din"])
def test_every_model_scores_empty_short_and_full_histories(name, attention):
    model = make(name, attention=attention)
    batch = synthetic_batch(batch=5, valid_from=SHAPES)
    logits = model(batch)
    assert logits.shape == (5,) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_padding_content_does_not_change_any_model(name):
    model = make(name).eval()
    batch = synthetic_batch(batch=5, valid_from=SHAPES)
    before = model(batch)
    for column in (batch.history_items, batch.history_categories, batch.history_actions, batch.history_time_gaps):
        column.copy_(torch.where(batch.history_mask, column, column.max()))  # padded positions get other ids
    torch.testing.assert_close(model(batch), before)


def test_sim_hard_retrieves_only_the_targets_category_most_recent_first():
    model = make("sim_hard", top_k=5)
    batch = synthetic_batch(batch=5, valid_from=SHAPES)
    batch.history_categories[:, ::3] = batch.target_category[:, None]  # some matches in every row
    index, found = model.retrieve(batch)
    for row in range(5):
        matches = [j for j in reversed(range(16)) if batch.history_mask[row, j]
                   and batch.history_categories[row, j] == batch.target_category[row]]
        assert index[row][found[row]].tolist() == matches[:5]


def test_eta_inner_product_retrieves_the_exact_inner_product_top_k():
    model = make("eta_inner_product", top_k=5)
    batch = synthetic_batch(batch=5, valid_from=SHAPES)
    index, found = model.retrieve(batch)
    with torch.no_grad():
        target = target_vectors(model, batch).double()
        keys = model.embeddings.items(batch.history_items, batch.history_categories).double()
    for row in range(5):
        real = [j for j in reversed(range(16)) if batch.history_mask[row, j]]
        expected = sorted(real, key=lambda j: -float(keys[row, j] @ target[row]))[:5]
        assert index[row][found[row]].tolist() == expected
    # the same selector measures SimHash's recall in `etarec compare`: the model is that reference
    reference, _ = inner_product_top_k(target_vectors(model, batch)[:, None], model.embeddings.items(
        batch.history_items, batch.history_categories), batch.history_mask, 5)  # [B, 1, K]: one candidate per row
    torch.testing.assert_close(index, reference[:, 0])


@pytest.mark.parametrize("attention", ["multihead", "din"])
def test_full_attention_equals_eta_that_retrieves_the_whole_window(attention):
    full = make("full_attention", top_k=16, attention=attention).eval()
    eta = make("eta", top_k=16, attention=attention).eval()
    weights = {name: value for name, value in eta.state_dict().items()
               if name != "long_interest.selector.simhash.projection"}
    assert weights.keys() == full.state_dict().keys()
    assert all(torch.equal(value, full.state_dict()[name]) for name, value in weights.items())
    batch = synthetic_batch(batch=5, valid_from=SHAPES)
    index, found = eta.retrieve(batch)
    for row in range(5):
        assert set(index[row][found[row]].tolist()) == set(torch.nonzero(batch.history_mask[row]).flatten().tolist())
    torch.testing.assert_close(eta(batch), full(batch))


def test_avg_pool_is_a_dnn_over_the_mean_and_din_long_adds_short_attention():
    avg_pool, din_long = make("avg_pool"), make("din_long")
    assert avg_pool.short_attention is None and din_long.short_attention is not None
    batch = synthetic_batch(batch=5, valid_from=SHAPES)
    history, mask = all_behaviours(avg_pool, batch)  # the behaviours one by one, as attention sees them
    expected = torch.stack([history[row][mask[row]].mean(0) if mask[row].any() else torch.zeros(history.shape[-1])
                            for row in range(5)])
    pooled = long_interest(avg_pool, batch)  # summed table by table (embedding_bag)
    torch.testing.assert_close(pooled, expected)
    # the same gradient into every table (item, category, action, time gap) as the row-by-row mean
    tables = [avg_pool.embeddings.item, avg_pool.embeddings.category, avg_pool.embeddings.action, avg_pool.embeddings.time_gap]
    upstream = torch.randn_like(expected)
    by_bag = torch.autograd.grad((pooled * upstream).sum(), [t.weight for t in tables])
    by_row = torch.autograd.grad((expected * upstream).sum(), [t.weight for t in tables])
    for table, bag, row in zip(tables, by_bag, by_row):
        torch.testing.assert_close(bag, row, msg=f"{table}")


def test_sdim_gathers_the_targets_bucket_from_a_fixed_hash():
    model = make("sdim")
    assert list(dict(model.named_buffers())) == ["long_interest.hash.projection"], "the hash must be fixed, not trained"
    # one real behaviour, the target item itself: it shares the target's bucket in every signature,
    # so the interest is that behaviour, l2-normalised
    batch = synthetic_batch(batch=5, valid_from=[15] * 5)
    batch.history_items[:, -1], batch.history_categories[:, -1] = batch.target_item, batch.target_category
    behaviour, _ = all_behaviours(model, batch)  # [B, L, Db]
    expected = torch.nn.functional.normalize(behaviour[:, -1], dim=-1)
    torch.testing.assert_close(long_interest(model, batch), expected)


def test_sdim_hashes_must_split_into_signatures():
    with pytest.raises(EtarecError, match="sdim_hashes=10 is not divisible by sdim_tau=3"):
        build_config({"model": {"name": "sdim", "sdim_hashes": 10, "sdim_tau": 3}})


def test_twin_retrieves_the_top_k_of_its_own_attention_logits():
    model = make("twin", top_k=5)
    batch = synthetic_batch(batch=5, valid_from=SHAPES)
    index, found = model.retrieve(batch)
    attention = model.long_interest.attention
    with torch.no_grad():  # float64 brute force: every behaviour embedded and projected on its own
        behaviours, _ = all_behaviours(model, batch)  # [B, L, Db]
        item_part, cross = behaviours.double().split([model.embeddings.item_dim, behaviours.shape[-1] - model.embeddings.item_dim], -1)
        query = target_vectors(model, batch).double() @ attention.query.weight.double().T  # [B, A]
        keys = item_part @ attention.key.weight.double().T  # [B, L, A]
        heads = attention.heads
        per_head = (query.view(5, 1, heads, -1) * keys.view(5, 16, heads, -1)).sum(-1) / (keys.shape[-1] // heads) ** 0.5
        scores = (per_head + cross @ attention.cross.weight.double().T).mean(-1)  # [B, L]
    for row in range(5):
        real = [j for j in reversed(range(16)) if batch.history_mask[row, j]]
        expected = sorted(real, key=lambda j: -float(scores[row, j]))[:5]
        assert index[row][found[row]].tolist() == expected


def test_twin_attends_over_the_retrieved_with_the_logits_it_retrieved_by():
    model = make("twin", top_k=5)
    batch = synthetic_batch(batch=5, valid_from=SHAPES)
    target = target_vectors(model, batch)[:, None]  # [B, 1, Dq]: one candidate per row
    attention = model.long_interest.attention
    history = batch.user_history()
    with torch.no_grad():
        index, found = model.retrieve(batch)
        # one key projection per distinct item; the user-item logits already through attention.cross
        selection = model.long_interest.prepare_selection(model.embeddings, history, False, None, None)
        keys, cross = selection.keys, selection.cross  # [B, L, A], [B, L, H]
        retrieval_logits = attention.logits(target, keys, cross).squeeze(2)  # [B, H, L]
        retrieved = model.embeddings.behaviours(*history.gather(index))  # [B, K, Db] as the attention stage embeds them
        item_part, retrieved_cross = retrieved.split([model.embeddings.item_dim, retrieved.shape[-1] - model.embeddings.item_dim], -1)
        attention_logits = attention.logits(target, attention.key(item_part),
                                            attention.cross_logits(retrieved_cross)).squeeze(2)  # [B, H, K]
    expected = torch.gather(retrieval_logits, 2, index[:, None, :].expand(-1, attention.heads, -1))
    torch.testing.assert_close(attention_logits[found[:, None, :].expand_as(expected)],
                               expected[found[:, None, :].expand_as(expected)])
