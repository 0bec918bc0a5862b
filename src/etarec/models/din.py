"""DIN (Zhou et al., KDD 2018): target attention over the short window of recent behaviours."""
from __future__ import annotations

import torch
from torch import nn

from etarec.config import ModelConfig
from etarec.data.batch import Batch
from etarec.nn.attention import target_attention
from etarec.nn.embeddings import FeatureEmbeddings, Vocab
from etarec.nn.mlp import MLP


class DIN(nn.Module):
    def __init__(self, config: ModelConfig, vocab: Vocab):
        super().__init__()
        self.features = FeatureEmbeddings(config, vocab)
        f = self.features
        self.short_attention = target_attention(config, f.item_dim, f.behaviour_dim)
        self.head = MLP(f.user_dim + f.item_dim + config.attention_dim, config.mlp, 1, config.activation, config.dropout)

    def forward(self, batch: Batch) -> torch.Tensor:
        target = self.features.target(batch)  # [B, 2d]
        short, short_mask = self.features.short_history(batch)  # [B, S, Db], [B, S]
        short_interest = self.short_attention(target, short, short_mask)  # [B, A]
        user = self.features.user_features(batch)  # [B, Du]
        return self.head(torch.cat([user, target, short_interest], dim=-1)).squeeze(-1)  # [B] logits
