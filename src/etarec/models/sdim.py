"""SDIM (Cao et al., arXiv 2205.10249): hash buckets instead of top-k.

The target and every long-window behaviour get m / tau SimHash signatures of tau bits (a fixed
random projection of their current item embeddings); per signature, the behaviours that share the
target's bucket are summed and l2-normalised, and the signatures' results are averaged. No
attention and no top-k: the long interest costs O(L·m) bit work plus one sum per bucket.
"""
from __future__ import annotations

import torch

from etarec.config import ModelConfig
from etarec.data.batch import Batch
from etarec.nn.embeddings import Vocab
from etarec.nn.interest import LongShortInterestModel
from etarec.retrieval.selectors import BucketHash, bucket_mean


class SDIM(LongShortInterestModel):
    def __init__(self, config: ModelConfig, vocab: Vocab):
        super().__init__(config, vocab)
        self.hash = BucketHash(self.embeddings.item_dim, config.sdim_hashes, config.sdim_tau, seed=config.hash_seed)

    def long_interest_dim(self, config: ModelConfig) -> int:
        return self.embeddings.behaviour_dim

    def long_interest(self, batch: Batch, target: torch.Tensor) -> torch.Tensor:
        history, mask = self.embeddings.history(batch)  # [B, L, Db], [B, L]
        # a behaviour's first item_dim columns are its item embedding [item, category]: hash those
        history_buckets = self.hash(history[..., : self.embeddings.item_dim])  # [B, L, G]
        return bucket_mean(self.hash(target), history_buckets, history, mask)  # [B, Db]
