"""The frame the long-sequence models share: embeddings, short-window target attention and the MLP
head over [user features, candidate, long interest, short interest]. A model says only how its
long interest is formed (DIN has none), so models differ in exactly one method.

Two variations of the frame are class-level switches rather than copies of it: a model without
short-window attention (avg_pool, the paper's plain DNN) and a long interest that is not
attention_dim wide (pooled behaviours are behaviour_dim wide). RetrievalInterestModel is the
frame of the retrieve-then-attend models (SIM, inner-product ETA): they differ only in retrieve().
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
    short_window_attention = True  # False: no short-interest path at all (its width is 0)

    def __init__(self, config: ModelConfig, vocab: Vocab):
        super().__init__()
        self.embeddings = FeatureEmbeddings(config, vocab)
        f = self.embeddings
        # created in this order so that a seed gives every model its weights drawn in the same sequence
        self.short_attention = (target_attention(config, f.item_dim, f.behaviour_dim)
                                if self.short_window_attention else None)
        short_dim = config.attention_dim if self.short_window_attention else 0
        self.head = MLP(f.user_dim + f.item_dim + self.long_interest_dim(config) + short_dim, config.mlp, 1,
                        config.activation, config.dropout)

    def long_interest_dim(self, config: ModelConfig) -> int:
        """Width of long_interest(); called once the embeddings exist, before the model's own layers."""
        return self.long_interest_dim_factor * config.attention_dim

    def long_interest(self, batch: Batch, target: torch.Tensor) -> torch.Tensor:
        """[B, long_dim] interest from the long window for candidate `target` [B, 2d]"""
        raise NotImplementedError

    def short_interest(self, batch: Batch, target: torch.Tensor) -> torch.Tensor:
        """[B, A] target attention over the short window ([B, 0] for a model without it)"""
        if self.short_attention is None:
            return target.new_zeros((len(target), 0))
        short, short_mask = self.embeddings.short_history(batch)  # [B, S, Db], [B, S]
        return self.short_attention(target, short, short_mask)  # [B, A]

    def forward(self, batch: Batch) -> torch.Tensor:
        target = self.embeddings.target(batch)  # [B, 2d]
        long_interest = self.long_interest(batch, target)  # [B, A] (or [B, 0], [B, Db])
        short_interest = self.short_interest(batch, target)  # [B, A] (or [B, 0])
        user = self.embeddings.user_features(batch)  # [B, Du]
        return self.head(torch.cat([user, target, long_interest, short_interest], dim=-1)).squeeze(-1)  # [B] logits


class RetrievalInterestModel(LongShortInterestModel):
    """Long interest = target attention over the k behaviours that retrieve() selects from the long
    window. Only the selected behaviours are embedded with gradient, so only they learn from it."""

    def __init__(self, config: ModelConfig, vocab: Vocab):
        super().__init__(config, vocab)
        self.top_k = config.top_k
        self.long_attention = self.retrieved_attention(config)

    def retrieved_attention(self, config: ModelConfig) -> nn.Module:
        """The attention over the retrieved behaviours: query [B, item_dim], keys [B, K, behaviour_dim]"""
        return target_attention(config, self.embeddings.item_dim, self.embeddings.behaviour_dim)

    def retrieve(self, batch: Batch, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(index [B, K], found [B, K]): positions in the long window, best first; found=False for padding"""
        raise NotImplementedError

    def long_interest(self, batch: Batch, target: torch.Tensor) -> torch.Tensor:
        index, found = self.retrieve(batch, target)  # [B, K]
        retrieved, _ = self.embeddings.history(batch, index)  # [B, K, Db]
        return self.long_attention(target, retrieved, found)  # [B, A]
