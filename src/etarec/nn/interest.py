"""The frame the long-sequence models share: embeddings, short-window target attention and the MLP
head over [user features, candidate, long interest, short interest]. A model says only how its
long interest is formed (DIN has none), so models differ in exactly one method.
"""
from __future__ import annotations

import torch
from torch import nn

from etarec.config import ModelConfig
from etarec.data.batch import Batch
from etarec.nn.attention import target_attention
from etarec.nn.embeddings import FeatureEmbeddings, Vocab
from etarec.nn.mlp import MLP


class LongShortInterestModel(nn.Module):
    long_interest_dim_factor = 1  # long interest width = factor x attention_dim (0: no long interest)

    def __init__(self, config: ModelConfig, vocab: Vocab):
        super().__init__()
        self.features = FeatureEmbeddings(config, vocab)
        f = self.features
        self.short_attention = target_attention(config, f.item_dim, f.behaviour_dim)
        long_dim = self.long_interest_dim_factor * config.attention_dim
        self.head = MLP(f.user_dim + f.item_dim + long_dim + config.attention_dim, config.mlp, 1,
                        config.activation, config.dropout)

    def long_interest(self, batch: Batch, target: torch.Tensor) -> torch.Tensor:
        """[B, long_dim] interest from the long window for candidate `target` [B, 2d]"""
        raise NotImplementedError

    def forward(self, batch: Batch) -> torch.Tensor:
        target = self.features.target(batch)  # [B, 2d]
        long_interest = self.long_interest(batch, target)  # [B, A] (or [B, 0])
        short, short_mask = self.features.short_history(batch)  # [B, S, Db], [B, S]
        short_interest = self.short_attention(target, short, short_mask)  # [B, A]
        user = self.features.user_features(batch)  # [B, Du]
        return self.head(torch.cat([user, target, long_interest, short_interest], dim=-1)).squeeze(-1)  # [B] logits
