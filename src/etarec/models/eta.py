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
from etarec.nn.embeddings import Vocab
from etarec.nn.interest import RetrievalInterestModel
from etarec.retrieval.simhash import SimHash, table_hamming_top_k


class ETA(RetrievalInterestModel):
    def __init__(self, config: ModelConfig, vocab: Vocab):
        super().__init__(config, vocab)
        # the projection draws from its own seeded generator, so it leaves the weights' draws alone
        self.simhash = SimHash(self.embeddings.item_dim, config.hash_bits, seed=config.hash_seed)
        self._code_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    def train(self, mode: bool = True) -> "ETA":
        self._code_cache = None  # embeddings move while training; cached signatures would go stale
        return super().train(mode)

    def _load_from_state_dict(self, *args, **kwargs):
        self._code_cache = None
        super()._load_from_state_dict(*args, **kwargs)

    @torch.no_grad()
    def code_table(self, batch: Batch) -> torch.Tensor:
        """[V, W] packed signatures, current for every item in the batch's long window; each
        distinct item is hashed once.

        In eval mode the table is kept and grows batch by batch, so evaluation hashes each item once
        per checkpoint.
        """
        items = batch.history_items.flatten()  # [B*L]
        categories = batch.history_categories.flatten()  # [B*L]
        num_items = self.embeddings.item.num_embeddings
        cache = self._code_cache
        if self.training or cache is None:
            cache = (items.new_zeros((num_items, self.simhash.words)), torch.zeros(num_items, dtype=torch.bool))
            if not self.training:
                self._code_cache = cache
        table, hashed = cache  # [V, W] codes, [V] which rows hold current codes
        if not self.training:
            missing = ~hashed[items]
            items, categories = items[missing], categories[missing]
        if len(items):
            new, new_categories = self.embeddings.distinct_items(items, categories)  # [U]
            table[new] = self.simhash(self.embeddings.items(new, new_categories))
            hashed[new] = True
        return table

    def history_codes(self, batch: Batch) -> torch.Tensor:
        """[B, L, W] packed signatures of the long window"""
        return self.code_table(batch)[batch.history_items]

    def retrieve(self, batch: Batch, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(index [B, K], found [B, K]) of the k behaviours nearest to the target."""
        return table_hamming_top_k(self.simhash(target), self.code_table(batch), batch.history_items,
                                   batch.history_mask, self.top_k)
