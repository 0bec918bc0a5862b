"""Full target attention over the whole long window (the ETA paper's ablation v4): the quality upper
bound of retrieval, at O(L) attention cost per candidate."""
from __future__ import annotations

import torch

from etarec.config import ModelConfig
from etarec.data.batch import Batch
from etarec.nn.attention import target_attention
from etarec.nn.embeddings import Vocab
from etarec.nn.interest import LongShortInterestModel


class FullAttention(LongShortInterestModel):
    def __init__(self, config: ModelConfig, vocab: Vocab):
        super().__init__(config, vocab)
        self.long_attention = target_attention(config, self.embeddings.item_dim, self.embeddings.behaviour_dim)

    def long_interest(self, batch: Batch, target: torch.Tensor) -> torch.Tensor:
        history, mask = self.embeddings.history(batch)  # [B, L, Db], [B, L]
        return self.long_attention(target, history, mask)  # [B, A]
