"""DIN (Zhou et al., KDD 2018): target attention over the short window of recent behaviours only."""
from __future__ import annotations

import torch

from etarec.data.batch import Batch
from etarec.nn.interest import LongShortInterestModel


class DIN(LongShortInterestModel):
    long_interest_dim_factor = 0

    def long_interest(self, batch: Batch, target: torch.Tensor) -> torch.Tensor:
        return target.new_zeros((len(target), 0))
