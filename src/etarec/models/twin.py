"""TWIN (Chang et al., arXiv 2302.02352): retrieval by the attention's own logits.

SIM and ETA choose the k behaviours with one relevance measure (category match, SimHash distance)
and attend over them with another. TWIN's retrieval stage scores every behaviour of the long window
with the very logits its attention stage uses, made cheap by the split in TwinAttention: item keys
are projected once per distinct item and the user-item features add one logit per head. The k
best (logits averaged over heads) are attended over with gradient, as in ETA.

The long path is always TWIN's multi-head attention; model.attention sets the short window's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from etarec.config import ModelConfig
from etarec.data.batch import UserHistory
from etarec.models.base import Candidates, InterestModel, RetrievedAttention
from etarec.nn.attention import TwinAttention
from etarec.nn.embeddings import Vocab, distinct_items
from etarec.retrieval.selectors import score_top_k


@dataclass
class _Keys:
    keys: torch.Tensor  # [N, L, A] key(item features) of the window
    cross: torch.Tensor  # [N, L, H] the user-item logits of each behaviour


class TwinRetrieval(RetrievedAttention):
    def __init__(self, attention: TwinAttention, top_k: int):
        super().__init__(None, attention)
        self.top_k = top_k

    @torch.no_grad()
    def prepare_selection(self, embeddings, history: UserHistory, shared, cache, projected) -> _Keys:
        attention = self.attention
        if projected is not None:  # shared: the projected window already holds keys and user-item logits
            width = attention.key.out_features
            return _Keys(projected[..., :width], projected[..., 2 * width:])
        # each distinct item is projected once instead of once per behaviour
        items, categories = distinct_items(history.items.flatten(), history.categories.flatten(), embeddings.num_items)
        projected_items = attention.key(embeddings.items(items, categories))  # [U, A]
        projected_items = torch.cat([projected_items.new_zeros((1, projected_items.shape[1])), projected_items])
        # [V] item id -> row of projected_items (0: padding); int64 whatever the windows' id dtype
        row_of = torch.zeros(embeddings.num_items, dtype=torch.int64, device=items.device)
        row_of[items] = torch.arange(1, len(items) + 1, device=items.device)
        keys = projected_items[row_of[history.items]]  # [N, L, A]
        cross = attention.cross_logits(embeddings.cross(history.actions, history.time_gaps, history.mask))  # [N, L, H]
        return _Keys(keys, cross)

    @torch.no_grad()  # as in ETA, retrieval only chooses; gradients reach the chosen through attention
    def select(self, embeddings, history, selection: _Keys, candidates: Candidates) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.attention.logits(candidates.vectors, selection.keys, selection.cross)  # [N, H, C, L]
        return score_top_k(logits.mean(1), history.mask, self.top_k)  # [N, C, K]


class TWIN(InterestModel):
    def __init__(self, config: ModelConfig, vocab: Vocab):
        super().__init__(config, vocab, long_width=config.attention_dim)
        e = self.embeddings
        self.long_interest = TwinRetrieval(
            TwinAttention(e.item_dim, e.item_dim, e.behaviour_dim, config.attention_dim, config.heads), config.top_k)
