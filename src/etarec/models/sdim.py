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
from etarec.retrieval.selectors import BucketHash, bucket_lookup, bucket_mean, bucket_table


# a shared history gets every bucket's interest once (2^tau rows per group) up to this many buckets
TABLE_BUCKETS = 4096


@dataclass
class _Buckets:
    behaviours: torch.Tensor  # [N, L, Db]
    buckets: torch.Tensor  # [N, L, G] each behaviour's bucket per signature
    table: torch.Tensor | None = None  # [N, G, 2^tau, Db] every bucket's interest (shared histories)


class BucketSums(LongInterest):
    def __init__(self, item_dim: int, config: ModelConfig):
        super().__init__()
        self.item_dim = item_dim
        self.hash = BucketHash(item_dim, config.sdim_hashes, config.sdim_tau, seed=config.hash_seed)

    def user_side(self, embeddings, history, shared, cache) -> _Buckets:
        behaviours = embeddings.behaviours(*history.behaviour_columns())  # [N, L, Db]
        # a behaviour's first item_dim columns are its item embedding [item, category]: hash those
        side = _Buckets(behaviours, self.hash(behaviours[..., : self.item_dim]))
        if shared and 2**self.hash.tau <= TABLE_BUCKETS:  # many candidates: each reads its buckets' rows
            side.table = bucket_table(side.buckets, behaviours, history.mask, self.hash.tau)
        return side

    def forward(self, embeddings, history, side: _Buckets, candidates: Candidates) -> torch.Tensor:
        query_buckets = self.hash(candidates.vectors)  # [N, C, G]
        if side.table is not None:
            return bucket_lookup(query_buckets, side.table)  # [N, C, Db]
        return bucket_mean(query_buckets, side.buckets, side.behaviours, history.mask)  # [N, C, Db]


class SDIM(InterestModel):
    def __init__(self, config: ModelConfig, vocab: Vocab):
        super().__init__(config, vocab, long_width=behaviour_dim(config))
        self.long_interest = BucketSums(self.embeddings.item_dim, config)
