"""Target attention: one query (the candidate item) over a set of behaviours.

Both variants take query [B, Dq], keys [B, K, Dk], mask [B, K] (True = real behaviour) and return
an interest vector [B, A]; a row without any real behaviour gets the zero vector.

forward = attend(query, project(keys), mask). The projection acts on each behaviour alone, so a
caller that shares one history across many candidates (serving) projects the history once and
gathers projected rows per candidate instead of projecting k rows per candidate.
"""
from __future__ import annotations

import torch
from torch import nn

from etarec.config import ModelConfig
from etarec.nn.mlp import MLP


class MultiHeadTargetAttention(nn.Module):
    """The ETA paper's softmax(Q K^T / sqrt(d_k)) V with H heads."""

    def __init__(self, query_dim: int, key_dim: int, attention_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(query_dim, attention_dim, bias=False)
        self.key_value = nn.Linear(key_dim, 2 * attention_dim, bias=False)  # one GEMM for both
        self.output = nn.Linear(attention_dim, attention_dim)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.attend(query, self.project(keys), mask)

    def project(self, keys: torch.Tensor) -> torch.Tensor:
        """[..., K, Dk] behaviours -> [..., K, 2A] their keys and values side by side"""
        return self.key_value(keys)

    def attend(self, query: torch.Tensor, projected: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keys, values = projected.chunk(2, dim=-1)  # [B, K, A] each
        scores = head_scores(self.query(query), keys, self.heads)  # [B, H, 1, K]
        return self.output(pool_heads(scores, values, mask))


class TwinAttention(nn.Module):
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

    def logits(self, query: torch.Tensor, item_keys: torch.Tensor, cross: torch.Tensor) -> torch.Tensor:
        """query [B, Dq] candidates, item_keys [B, K, A] = key(item features), cross [B, K, Dc] user-item
        features -> [B, H, 1, K] attention logits"""
        scores = head_scores(self.query(query), item_keys, self.heads)  # [B, H, 1, K]
        if self.cross is None:
            return scores
        return scores + self.cross(cross).transpose(1, 2)[:, :, None, :]  # [B, K, H] -> [B, H, 1, K]

    def forward(self, query: torch.Tensor, behaviours: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        item_dim = self.key.in_features
        items, cross = behaviours.split([item_dim, behaviours.shape[-1] - item_dim], dim=-1)
        scores = self.logits(query, self.key(items), cross)  # [B, H, 1, K]
        return self.output(pool_heads(scores, self.value(behaviours), mask))


def head_scores(query: torch.Tensor, keys: torch.Tensor, heads: int) -> torch.Tensor:
    """Projected query [B, A] and keys [B, K, A] -> scaled dot products per head [B, H, 1, K]"""
    batch, length, _ = keys.shape
    q = query.view(batch, heads, 1, -1)  # [B, H, 1, dh]
    k = keys.reshape(batch, length, heads, -1).transpose(1, 2)  # [B, H, K, dh]
    return (q @ k.transpose(-1, -2)) / k.shape[-1] ** 0.5


def pool_heads(scores: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the real behaviours of each head's scores [B, H, 1, K], applied to that head's
    slice of values [B, K, A] -> [B, A]"""
    batch, length, _ = values.shape
    v = values.reshape(batch, length, scores.shape[1], -1).transpose(1, 2)  # [B, H, K, dh]
    mask = mask[:, None, None, :]  # one mask for every head
    scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    # zeroing after the softmax makes an all-padding row contribute nothing instead of a mean
    weights = torch.softmax(scores, dim=-1) * mask
    return (weights @ v).reshape(batch, -1)


class DinAttention(nn.Module):
    """DIN's activation unit: an MLP scores [q, k, q - k, q * k]; weights are not softmax-normalised."""

    def __init__(self, query_dim: int, key_dim: int, attention_dim: int, units: list[int], activation: str):
        super().__init__()
        self.query = nn.Linear(query_dim, attention_dim, bias=False)
        self.key = nn.Linear(key_dim, attention_dim, bias=False)
        self.score = MLP(4 * attention_dim, units, 1, activation)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.attend(query, self.project(keys), mask)

    def project(self, keys: torch.Tensor) -> torch.Tensor:
        """[..., K, Dk] -> [..., K, A]"""
        return self.key(keys)

    def attend(self, query: torch.Tensor, k: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = self.query(query)[:, None, :].expand_as(k)  # [B, K, A]
        weights = self.score(torch.cat([q, k, q - k, q * k], dim=-1)).squeeze(-1) * mask  # [B, K]
        return (weights[:, :, None] * k).sum(1)  # [B, A]


def target_attention(config: ModelConfig, query_dim: int, key_dim: int) -> nn.Module:
    """The configured attention (model.attention: multihead | din) from item to behaviour space."""
    if config.attention == "multihead":
        return MultiHeadTargetAttention(query_dim, key_dim, config.attention_dim, config.heads)
    return DinAttention(query_dim, key_dim, config.attention_dim, config.din_attention_units, config.activation)
