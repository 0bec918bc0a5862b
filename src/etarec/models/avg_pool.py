"""Avg-Pooling DNN (the ETA paper's first baseline): the mean of the long window's behaviours next
to the candidate, straight into the MLP; no attention anywhere."""
from __future__ import annotations

import torch

from etarec.config import ModelConfig
from etarec.data.batch import Batch
from etarec.nn.interest import LongShortInterestModel


class AvgPool(LongShortInterestModel):
    short_window_attention = False

    def long_interest_dim(self, config: ModelConfig) -> int:
        return self.embeddings.behaviour_dim

    def long_interest(self, batch: Batch, target: torch.Tensor) -> torch.Tensor:
        return self.embeddings.history_mean(batch)  # [B, Db]
