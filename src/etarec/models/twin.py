"""TWIN (Chang et al., arXiv 2302.02352): retrieval by the attention's own logits.

SIM and ETA choose the k behaviours with one relevance measure (category match, SimHash distance)
and attend over them with another. TWIN's retrieval stage scores every behaviour of the long window
with the very logits its attention stage uses, made cheap by the split in TwinAttention: item keys
are projected once per distinct item and the user-item features add one logit per head. The k
best (logits averaged over heads) are attended over with gradient, as in ETA.

The long path is always TWIN's multi-head attention; model.attention sets the short window's.
"""
from __future__ import annotations

import torch
from torch import nn

from etarec.config import ModelConfig
from etarec.data.batch import Batch
from etarec.nn.attention import TwinAttention
from etarec.nn.interest import RetrievalInterestModel
from etarec.retrieval.selectors import score_top_k


class TWIN(RetrievalInterestModel):
    def retrieved_attention(self, config: ModelConfig) -> nn.Module:
        f = self.embeddings
        return TwinAttention(f.item_dim, f.item_dim, f.behaviour_dim, config.attention_dim, config.heads)

    @torch.no_grad()
    def history_keys(self, batch: Batch) -> torch.Tensor:
        """[B, L, A] key(item features) of the long window; each distinct item is projected once
        instead of once per behaviour"""
        history = batch.history_items  # [B, L]
        items, categories = self.embeddings.distinct_items(history.flatten(), batch.history_categories.flatten())  # [U]
        projected = self.long_attention.key(self.embeddings.items(items, categories))  # [U, A]
        projected = torch.cat([projected.new_zeros((1, projected.shape[1])), projected])  # row 0: padding
        row_of = history.new_zeros(self.embeddings.item.num_embeddings)  # [V] item id -> row of projected
        row_of[items] = torch.arange(1, len(items) + 1, device=history.device)
        return projected[row_of[history]]  # [B, L, A]

    @torch.no_grad()  # as in ETA, retrieval only chooses; gradients reach the chosen through attention
    def retrieve(self, batch: Batch, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys = self.history_keys(batch)  # [B, L, A]
        cross = self.embeddings.cross(batch.history_actions, batch.history_time_gaps, batch.history_mask)  # [B, L, Dc]
        scores = self.long_attention.logits(target, keys, cross).mean(1).squeeze(1)  # [B, H, 1, L] -> [B, L]
        return score_top_k(scores, batch.history_mask, self.top_k)
