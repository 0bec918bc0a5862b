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
        batch, length, _ = projected.shape
        keys, values = projected.chunk(2, dim=-1)  # [B, K, A] each
        q = self.query(query).view(batch, self.heads, 1, -1)  # [B, H, 1, dh]
        k = keys.reshape(batch, length, self.heads, -1).transpose(1, 2)  # [B, H, K, dh]
        v = values.reshape(batch, length, self.heads, -1).transpose(1, 2)  # [B, H, K, dh]
        scores = (q @ k.transpose(-1, -2)) / k.shape[-1] ** 0.5  # [B, H, 1, K]
        mask = mask[:, None, None, :]  # one mask for every head
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        # zeroing after the softmax makes an all-padding row contribute nothing instead of a mean
        weights = torch.softmax(scores, dim=-1) * mask
        pooled = (weights @ v).reshape(batch, -1)  # [B, A]
        return self.output(pooled)


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
