"""Target attention: candidate items as queries over a set of behaviours.

Every variant has two halves. project(behaviours [..., L, Dk]) -> [..., L, P] acts on each
behaviour alone; attend(query [N, C, Dq], projected [N, L, P], mask [N, L]) -> [N, C, A] lets C
candidates attend over one set of L behaviours (a row without any real behaviour gives the zero
vector). Because projection is per behaviour, a caller may project a whole history once and gather
projected rows for each candidate (serving), or gather behaviours first and project only those
(training, where only the retrieved behaviours should learn): both give the same interest.

forward(query [N, Dq], behaviours [N, K, Dk], mask [N, K]) -> [N, A] is the one-candidate case.
"""
from __future__ import annotations

import torch
from torch import nn

from etarec.config import ModelConfig
from etarec.nn.mlp import MLP


class TargetAttention(nn.Module):
    def forward(self, query: torch.Tensor, behaviours: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.attend(query[:, None, :], self.project(behaviours), mask)[:, 0]

    def project(self, behaviours: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def attend(self, query: torch.Tensor, projected: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class MultiHeadTargetAttention(TargetAttention):
    """The ETA paper's softmax(Q K^T / sqrt(d_k)) V with H heads.

    key_width: the keys read only the first key_width columns of a behaviour (the values read all
    of them); None: all. The key half of the one key/value weight is masked, so the parameters and
    the checkpoint are the same either way."""

    def __init__(self, query_dim: int, key_dim: int, attention_dim: int, heads: int, key_width: int | None = None):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(query_dim, attention_dim, bias=False)
        self.key_value = nn.Linear(key_dim, 2 * attention_dim, bias=False)  # one GEMM for both
        self.output = nn.Linear(attention_dim, attention_dim)
        mask = None
        if key_width is not None and key_width < key_dim:
            mask = torch.ones(2 * attention_dim, key_dim)  # [2A, Dk]: rows [:A] make the keys
            mask[:attention_dim, key_width:] = 0
        self.register_buffer("key_mask", mask, persistent=False)  # None: no buffer

    def project(self, behaviours: torch.Tensor) -> torch.Tensor:
        """[..., L, Dk] -> [..., L, 2A] keys and values side by side"""
        if self.key_mask is None:
            return self.key_value(behaviours)
        return nn.functional.linear(behaviours, self.key_value.weight * self.key_mask)

    def attend(self, query: torch.Tensor, projected: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keys, values = projected.chunk(2, dim=-1)  # [N, L, A] each
        scores = head_scores(self.query(query), keys, self.heads)  # [N, H, C, L]
        return self.output(pool_heads(scores, values, mask))  # [N, C, A]


class TwinAttention(TargetAttention):
    """TWIN's target attention (Chang et al., arXiv 2302.02352): the keys come from the item alone
    (item and category embeddings) and the behaviour's user-item features (action, time gap) add one
    logit per head. Item keys depend on the item only, so a retrieval stage can project each
    distinct item once and score the whole window with exactly the logits this attention uses."""

    def __init__(self, query_dim: int, item_dim: int, behaviour_dim: int, attention_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(query_dim, attention_dim, bias=False)
        self.key = nn.Linear(item_dim, attention_dim, bias=False)
        self.value = nn.Linear(behaviour_dim, attention_dim, bias=False)
        cross_dim = behaviour_dim - item_dim
        self.cross = nn.Linear(cross_dim, heads, bias=False) if cross_dim else None
        self.output = nn.Linear(attention_dim, attention_dim)

    def cross_logits(self, cross: torch.Tensor) -> torch.Tensor:
        """[..., L, Dc] user-item features -> [..., L, H] (H zeros when there are none)"""
        if self.cross is None:
            return cross.new_zeros((*cross.shape[:-1], self.heads))
        return self.cross(cross)

    def project(self, behaviours: torch.Tensor) -> torch.Tensor:
        """[..., L, Db] -> [..., L, 2A + H]: item keys, values, user-item logits side by side"""
        items, cross = behaviours.split([self.key.in_features, behaviours.shape[-1] - self.key.in_features], dim=-1)
        return torch.cat([self.key(items), self.value(behaviours), self.cross_logits(cross)], dim=-1)

    def logits(self, query: torch.Tensor, item_keys: torch.Tensor, cross_logits: torch.Tensor) -> torch.Tensor:
        """query [N, C, Dq], item_keys [N, L, A] = key(item features), cross_logits [N, L, H]
        -> [N, H, C, L] attention logits"""
        scores = head_scores(self.query(query), item_keys, self.heads)  # [N, H, C, L]
        return scores + cross_logits.transpose(1, 2)[:, :, None, :]  # [N, L, H] -> [N, H, 1, L]

    def attend(self, query: torch.Tensor, projected: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        width = self.key.out_features
        keys, values, cross = projected.split([width, width, self.heads], dim=-1)
        return self.output(pool_heads(self.logits(query, keys, cross), values, mask))  # [N, C, A]


def head_scores(query: torch.Tensor, keys: torch.Tensor, heads: int) -> torch.Tensor:
    """Projected queries [N, C, A] and keys [N, L, A] -> scaled dot products per head [N, H, C, L]"""
    n, c, _ = query.shape
    length = keys.shape[1]
    q = query.view(n, c, heads, -1).transpose(1, 2)  # [N, H, C, dh]
    k = keys.reshape(n, length, heads, -1).transpose(1, 2)  # [N, H, L, dh]
    return (q @ k.transpose(-1, -2)) / k.shape[-1] ** 0.5


def pool_heads(scores: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the real behaviours of each head's scores [N, H, C, L], applied to that head's
    slice of values [N, L, A] -> [N, C, A]"""
    n, heads, c, length = scores.shape
    v = values.reshape(n, length, heads, -1).transpose(1, 2)  # [N, H, L, dh]
    mask = mask[:, None, None, :]  # one mask for every head and candidate
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    # zeroing after the softmax makes an all-padding row contribute nothing instead of a mean
    weights = torch.softmax(scores, dim=-1) * mask
    return (weights @ v).transpose(1, 2).reshape(n, c, -1)  # [N, H, C, dh] -> [N, C, A]


class DinAttention(TargetAttention):
    """DIN's activation unit: an MLP scores [q, k, q - k, q * k]; weights are not softmax-normalised."""

    def __init__(self, query_dim: int, key_dim: int, attention_dim: int, units: list[int], activation: str):
        super().__init__()
        self.query = nn.Linear(query_dim, attention_dim, bias=False)
        self.key = nn.Linear(key_dim, attention_dim, bias=False)
        self.score = MLP(4 * attention_dim, units, 1, activation)

    def project(self, behaviours: torch.Tensor) -> torch.Tensor:
        """[..., L, Dk] -> [..., L, A]"""
        return self.key(behaviours)

    def attend(self, query: torch.Tensor, projected: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        n, c, _ = query.shape
        k = projected[:, None].expand(n, c, -1, -1)  # [N, C, L, A]
        q = self.query(query)[:, :, None, :].expand_as(k)  # [N, C, L, A]
        weights = self.score(torch.cat([q, k, q - k, q * k], dim=-1)).squeeze(-1) * mask[:, None, :]  # [N, C, L]
        return (weights[..., None] * k).sum(2)  # [N, C, A]


def target_attention(config: ModelConfig, query_dim: int, key_dim: int) -> TargetAttention:
    """The configured attention (model.attention: multihead | din) from item to behaviour space.
    model.time_in_keys false: the keys skip the time gap, a behaviour's last part (nn/embeddings)."""
    if config.attention == "multihead":
        key_width = key_dim - config.embedding_dim if config.use_time and not config.time_in_keys else None
        return MultiHeadTargetAttention(query_dim, key_dim, config.attention_dim, config.heads, key_width)
    return DinAttention(query_dim, key_dim, config.attention_dim, config.din_attention_units, config.activation)
