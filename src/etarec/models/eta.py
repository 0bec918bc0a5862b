"""ETA (Chen et al., arXiv 2108.04468): SimHash top-k retrieval from the long window, end to end.

Per forward pass: hash the current embeddings of the target and of each distinct history item
with a fixed random projection, keep the k behaviours nearest in Hamming distance, and run target
attention over them and over the short window. Hashing runs without gradient; the retrieved
behaviours are embedded again with gradient, so only they (and the short window) learn from the
long-interest path.
"""
from __future__ import annotations

import torch

from etarec.config import ModelConfig
from etarec.data.batch import Batch
from etarec.nn.attention import target_attention
from etarec.nn.embeddings import Vocab
from etarec.nn.interest import LongShortInterestModel
from etarec.retrieval.simhash import SimHash, hamming_top_k


class ETA(LongShortInterestModel):
    def __init__(self, config: ModelConfig, vocab: Vocab):
        super().__init__(config, vocab)
        self.top_k = config.top_k
        self.simhash = SimHash(self.features.item_dim, config.hash_bits, seed=config.hash_seed)
        self.long_attention = target_attention(config, self.features.item_dim, self.features.behaviour_dim)

    @torch.no_grad()
    def history_codes(self, batch: Batch) -> torch.Tensor:
        """[B, L, W] packed signatures of the long window, hashing each distinct item once."""
        unique_items, inverse = torch.unique(batch.history_items, return_inverse=True)  # [U], [B, L]
        # an item has one category, so any position of the item gives it
        unique_categories = torch.zeros_like(unique_items).scatter_(0, inverse.flatten(), batch.history_categories.flatten())
        codes = self.simhash(self.features.items(unique_items, unique_categories))  # [U, W]
        return codes[inverse]

    def retrieve(self, batch: Batch, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(index [B, K], found [B, K]) of the k behaviours nearest to the target."""
        return hamming_top_k(self.simhash(target), self.history_codes(batch), batch.history_mask, self.top_k)

    def long_interest(self, batch: Batch, target: torch.Tensor) -> torch.Tensor:
        index, found = self.retrieve(batch, target)  # [B, K]
        retrieved, _ = self.features.history(batch, index)  # [B, K, Db]
        return self.long_attention(target, retrieved, found)  # [B, A]
