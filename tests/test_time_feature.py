"""model.time_in_keys: false keeps the time gap out of multihead attention's keys, in its values."""
from __future__ import annotations

import pytest
import torch

from etarec.config import ModelConfig
from etarec.errors import EtarecError
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
