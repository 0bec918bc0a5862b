"""DIN (long) (the ETA paper's Table 4): DIN's target attention over the short window, plus the
avg-pooled long window as in the Avg-Pooling DNN."""
from __future__ import annotations

from etarec.config import ModelConfig
from etarec.models.avg_pool import BehaviourMean
from etarec.models.base import InterestModel
from etarec.nn.embeddings import Vocab, behaviour_dim


class DINLong(InterestModel):
    def __init__(self, config: ModelConfig, vocab: Vocab):
        super().__init__(config, vocab, long_width=behaviour_dim(config))
        self.long_interest = BehaviourMean()
