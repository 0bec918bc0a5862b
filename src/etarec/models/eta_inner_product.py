"""ETA with exact inner-product retrieval (the ETA paper's ablation v3): the k behaviours whose
current item embeddings have the largest inner product with the target's, instead of SimHash's
Hamming top-k. O(L·d) multiply-adds per candidate where SimHash needs O(L) word operations."""
from __future__ import annotations

import torch

from etarec.data.batch import Batch
from etarec.nn.interest import RetrievalInterestModel
from etarec.retrieval.selectors import inner_product_top_k


class EtaInnerProduct(RetrievalInterestModel):
    @torch.no_grad()  # as in ETA, retrieval only chooses; gradients reach the chosen through attention
    def retrieve(self, batch: Batch, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys = self.embeddings.items(batch.history_items, batch.history_categories)  # [B, L, 2d]
        return inner_product_top_k(target, keys, batch.history_mask, self.top_k)
