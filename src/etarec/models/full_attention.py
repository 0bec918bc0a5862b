"""Full target attention over the whole long window (the ETA paper's ablation v4): the quality upper
bound of retrieval, at O(L) attention cost per candidate."""
from __future__ import annotations

import torch

from etarec.config import ModelConfig
from etarec.models.base import Candidates, InterestModel, LongInterest
from etarec.nn.attention import TargetAttention, target_attention
from etarec.nn.embeddings import Vocab


class WindowAttention(LongInterest):
    """Target attention over all L behaviours. The window is projected once per history row and
    every candidate attends over it: no selection, no gather."""

    def __init__(self, attention: TargetAttention):
        super().__init__()
        self.attention = attention

    def user_side(self, embeddings, history, shared, cache) -> torch.Tensor:
        return self.attention.project(embeddings.behaviours(*history.behaviour_columns()))  # [N, L, P]

    def forward(self, embeddings, history, side: torch.Tensor, candidates: Candidates) -> torch.Tensor:
        return self.attention.attend(candidates.vectors, side, history.mask)  # [N, C, A]


class FullAttention(InterestModel):
    def __init__(self, config: ModelConfig, vocab: Vocab):
        super().__init__(config, vocab, long_width=config.attention_dim)
        e = self.embeddings
        self.long_interest = WindowAttention(target_attention(config, e.item_dim, e.behaviour_dim))
