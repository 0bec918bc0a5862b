"""SDIM (Cao et al., arXiv 2205.10249): hash buckets instead of top-k.

The candidate and every long-window behaviour get m / tau SimHash signatures of tau bits (a fixed
random projection of their current item embeddings); per signature, the behaviours that share the
candidate's bucket are summed and l2-normalised, and the signatures' results are averaged. No
attention and no top-k: the long interest costs O(L·m) bit work plus one sum per bucket.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from etarec.config import ModelConfig
from etarec.models.base import Candidates, InterestModel, LongInterest
from etarec.nn.embeddings import Vocab, behaviour_dim
from etarec.retrieval.selectors import BucketHash, bucket_mean


@dataclass
class _Buckets:
    behaviours: torch.Tensor  # [N, L, Db]
    buckets: torch.Tensor  # [N, L, G] each behaviour's bucket per signature


class BucketSums(LongInterest):
    def __init__(self, item_dim: int, config: ModelConfig):
        super().__init__()
        self.item_dim = item_dim
        self.hash = BucketHash(item_dim, config.sdim_hashes, config.sdim_tau, seed=config.hash_seed)

    def user_side(self, embeddings, history, shared, cache) -> _Buckets:
        behaviours = embeddings.behaviours(*history.behaviour_columns())  # [N, L, Db]
        # a behaviour's first item_dim columns are its item embedding [item, category]: hash those
        return _Buckets(behaviours, self.hash(behaviours[..., : self.item_dim]))

    def forward(self, embeddings, history, side: _Buckets, candidates: Candidates) -> torch.Tensor:
        return bucket_mean(self.hash(candidates.vectors), side.buckets, side.behaviours, history.mask)  # [N, C, Db]


class SDIM(InterestModel):
    def __init__(self, config: ModelConfig, vocab: Vocab):
        super().__init__(config, vocab, long_width=behaviour_dim(config))
        self.long_interest = BucketSums(self.embeddings.item_dim, config)
