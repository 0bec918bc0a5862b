"""SIM(hard) (Pi et al., CIKM 2020): retrieve the behaviours of the candidate's category, most
recent k first, then target attention over them. With model.use_time: the paper's "SIM(hard) + time"."""
from __future__ import annotations

import torch

from etarec.config import ModelConfig
from etarec.models.base import Candidates, InterestModel, RetrievedAttention, Selector
from etarec.nn.embeddings import Vocab
from etarec.retrieval.selectors import category_top_k


class SameCategory(Selector):
    def forward(self, embeddings, history, side, candidates: Candidates) -> tuple[torch.Tensor, torch.Tensor]:
        return category_top_k(history.categories, history.mask, candidates.categories, self.top_k)  # [N, C, K]


class SimHard(InterestModel):
    def __init__(self, config: ModelConfig, vocab: Vocab):
        super().__init__(config, vocab, long_width=config.attention_dim)
        self.long_interest = RetrievedAttention.configured(SameCategory(config.top_k), config, self.embeddings)
