"""ETA with exact inner-product retrieval (the ETA paper's ablation v3): the k behaviours whose
current item embeddings have the largest inner product with the candidate's, instead of SimHash's
Hamming top-k. O(L·d) multiply-adds per candidate where SimHash needs O(L) word operations."""
from __future__ import annotations

import torch

from etarec.config import ModelConfig
from etarec.models.base import Candidates, InterestModel, RetrievedAttention, Selector
from etarec.nn.embeddings import Vocab
from etarec.retrieval.selectors import inner_product_top_k


class LargestInnerProduct(Selector):
    @torch.no_grad()  # as in ETA, retrieval only chooses; gradients reach the chosen through attention
    def user_side(self, embeddings, history, shared, cache) -> torch.Tensor:
        return embeddings.items(history.items, history.categories)  # [N, L, Dq] the keys

    @torch.no_grad()
    def forward(self, embeddings, history, keys: torch.Tensor, candidates: Candidates) -> tuple[torch.Tensor, torch.Tensor]:
        return inner_product_top_k(candidates.vectors, keys, history.mask, self.top_k)  # [N, C, K]


class EtaInnerProduct(InterestModel):
    def __init__(self, config: ModelConfig, vocab: Vocab):
        super().__init__(config, vocab, long_width=config.attention_dim)
        self.long_interest = RetrievedAttention.configured(LargestInnerProduct(config.top_k), config, self.embeddings)
