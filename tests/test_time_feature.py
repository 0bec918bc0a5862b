"""Where the time gap goes: model.time_in_keys: false keeps it out of multihead attention's keys (in
its values); model.time_in: user takes it off the behaviours, as one user feature for the head."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from conftest import VOCAB, synthetic_batch
from etarec.config import ModelConfig, build_config
from etarec.errors import EtarecError
from etarec.models import build_model
from etarec.nn.attention import MultiHeadTargetAttention, target_attention


def test_keys_without_the_gap_equal_a_projection_of_the_other_columns_alone():
    torch.manual_seed(0)
    d, key_width, a = 24, 16, 8
    attention = MultiHeadTargetAttention(12, d, a, heads=2, key_width=key_width).double()
    behaviours = torch.randn(3, 5, d, dtype=torch.float64)
    keys, values = attention.project(behaviours).chunk(2, dim=-1)
    weight = attention.key_value.weight
    # reference: keys from the first key_width columns only, values from all of them
    assert torch.allclose(keys, behaviours[..., :key_width] @ weight[:a, :key_width].T, atol=1e-12)
    assert torch.allclose(values, behaviours @ weight[a:].T, atol=1e-12)
    changed = behaviours.clone()
    changed[..., key_width:] = torch.randn_like(changed[..., key_width:])  # other time gaps
    keys2, values2 = attention.project(changed).chunk(2, dim=-1)
    assert torch.equal(keys, keys2) and not torch.allclose(values, values2)
    # no masked weight learns: its gradient is zero
    attention(torch.randn(3, 12, dtype=torch.float64), behaviours, torch.ones(3, 5, dtype=torch.bool)).sum().backward()
    assert attention.key_value.weight.grad[:a, key_width:].abs().max() == 0
    assert attention.key_value.weight.grad[:a, :key_width].abs().max() > 0
    assert set(attention.state_dict()) == set(MultiHeadTargetAttention(12, d, a, heads=2).state_dict())


def test_the_config_routes_the_gap_out_of_the_keys_only_when_asked():
    on = ModelConfig(use_time=True, embedding_dim=8)
    off = ModelConfig(use_time=True, embedding_dim=8, time_in_keys=False)
    assert target_attention(on, 16, 32).key_mask is None
    assert target_attention(off, 16, 32).key_mask[:64, 24:].abs().sum() == 0
    assert target_attention(ModelConfig(use_time=False, time_in_keys=False), 16, 32).key_mask is None
    # the default is left out of dumps, so recorded runs keep their config digests
    assert "time_in_keys" not in on.model_dump() and off.model_dump()["time_in_keys"] is False
    with pytest.raises(ValueError, match="time_in_keys=false needs attention=multihead"):
        ModelConfig(use_time=True, time_in_keys=False, attention="din")


def time_in_user_model(name: str):
    config = build_config({"model": {"name": name, "long_len": 16, "short_len": 4, "top_k": 5, "hash_bits": 13,
                                     "use_time": True, "use_action": True, "time_in": "user", "embedding_dim": 8}})
    torch.manual_seed(0)
    return build_model(config.model, VOCAB).eval()


def reference_bucket(seconds: int, real: bool) -> int:
    """The time bucket by hand: 0 for no behaviour, else 1 + floor(log2(1 + minutes)), at most 32"""
    return min(1 + math.floor(math.log2(1 + seconds / 60)), 32) if real else 0


@pytest.mark.parametrize("name", ["eta", "din", "twin", "avg_pool"])
def test_time_in_user_reads_how_long_the_user_was_away_and_nothing_else_of_time(name):
    model = time_in_user_model(name)
    assert model.embeddings.behaviour_dim == 8 * 3 and not model.embeddings.uses_time  # item, category, action
    assert "time_gaps" in model.inputs  # the builder still builds the gaps the feature is read from
    batch = synthetic_batch(batch=6, long_len=16, valid_from=[0, 3, 9, 15, 16, 2], seed=4)  # row 4: no history
    batch.history_time_gaps[0, -1], batch.history_time_gaps[1, -1] = 0, 3_600  # buckets 1 and 6
    history = batch.user_history()
    users = model.embeddings.users(history.user, history.user_profile)
    buckets = [reference_bucket(int(gap), bool(real)) for gap, real in zip(history.time_gaps[:, -1], history.mask[:, -1])]
    assert buckets[:2] == [1, 6] and buckets[4] == 0
    expected = torch.cat([users, model.recency.weight[buckets]], dim=-1)
    assert torch.equal(model.user_features(history), expected)
    assert model.user_features(history)[4, -8:].abs().sum() == 0  # no history: the padding row

    earlier = batch.history_time_gaps.clone()
    earlier[:, :-1] = torch.randint(0, 10**9, earlier[:, :-1].shape)  # every gap but the last one changed
    away_longer = batch.history_time_gaps.clone()
    away_longer[:, -1] = away_longer[:, -1] * 4 + 10**6  # another bucket for every row with history
    with torch.no_grad():
        scores = model(batch)
        assert torch.equal(model(dataclasses.replace(batch, history_time_gaps=torch.where(batch.history_mask, earlier, 0))),
                           scores)
        moved = model(dataclasses.replace(batch, history_time_gaps=torch.where(batch.history_mask, away_longer, 0)))
    with_history = batch.history_mask[:, -1]
    assert not torch.isclose(moved, scores)[with_history].any() and torch.equal(moved[~with_history], scores[~with_history])


def test_time_in_user_scores_a_shared_request_as_the_training_forward_and_learns_its_table():
    model = time_in_user_model("eta")
    batch = synthetic_batch(batch=5, long_len=16, valid_from=[0, 3, 9, 15, 16], seed=5)
    batch.target_category = batch.target_item % (VOCAB.num_categories - 2) + 2  # one category per item
    with torch.no_grad():
        side = model.user_side(batch.user_history(), shared=True, cache=model.item_cache())
        shared = model.candidate_logits(side, batch.target_item[:, None], batch.target_category[:, None])[:, 0]
        torch.testing.assert_close(shared, model(batch), rtol=1e-6, atol=1e-6)
    model.train()
    model(batch).sum().backward()
    used = {reference_bucket(int(g), True) for g, real in zip(batch.history_time_gaps[:, -1], batch.history_mask[:, -1]) if real}
    touched = set(torch.nonzero(model.recency.weight.grad.abs().sum(1)).flatten().tolist())
    assert touched == used


def test_time_in_user_is_left_out_of_dumps_at_its_default_and_refused_where_it_cannot_apply():
    assert "time_in" not in ModelConfig(use_time=True).model_dump()
    assert ModelConfig(use_time=True, time_in="user").model_dump()["time_in"] == "user"
    with pytest.raises(ValueError, match="time_in=user embeds a time gap, which is off"):
        ModelConfig(time_in="user")
    for other in ({"time_in_keys": False}, {"time_origin": "last_behaviour"}):
        with pytest.raises(ValueError, match="which time_in=user leaves out"):
            ModelConfig(use_time=True, time_in="user", **other)
    with pytest.raises(EtarecError, match="time_in"):
        build_config({"model": {"time_in": "head"}})
