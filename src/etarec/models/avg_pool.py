"""Avg-Pooling DNN (the ETA paper's first baseline): the mean of the long window's behaviours next
to the candidate, straight into the MLP; no attention anywhere. Also the long half of DIN(long)."""
from __future__ import annotations

import torch

from etarec.config import ModelConfig
from etarec.models.base import Candidates, InterestModel, LongInterest
from etarec.nn.embeddings import Vocab, behaviour_dim


class BehaviourMean(LongInterest):
    """The same vector for every candidate: the mean of the window's real behaviours [N, Db]."""

    def user_side(self, embeddings, history, shared, cache) -> torch.Tensor:
        return embeddings.behaviour_mean(*history.behaviour_columns())  # [N, Db]

    def forward(self, embeddings, history, side: torch.Tensor, candidates: Candidates) -> torch.Tensor:
        n, c = candidates.items.shape
        return side[:, None, :].expand(n, c, -1)  # [N, C, Db]


class AvgPool(InterestModel):
    def __init__(self, config: ModelConfig, vocab: Vocab):
        super().__init__(config, vocab, long_width=behaviour_dim(config), short_attention=False)
        self.long_interest = BehaviourMean()
