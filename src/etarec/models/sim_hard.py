"""SIM(hard) (Pi et al., CIKM 2020): retrieve the behaviours of the target's category, most recent
k first, then target attention over them. With model.use_time: the paper's "SIM(hard) + time"."""
from __future__ import annotations

import torch

from etarec.data.batch import Batch
from etarec.nn.interest import RetrievalInterestModel
from etarec.retrieval.selectors import category_top_k


class SimHard(RetrievalInterestModel):
    def retrieve(self, batch: Batch, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return category_top_k(batch.history_categories, batch.history_mask, batch.target_category, self.top_k)
