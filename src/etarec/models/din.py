"""DIN (Zhou et al., KDD 2018): target attention over the short window of recent behaviours only."""
from __future__ import annotations

from etarec.config import ModelConfig
from etarec.models.base import InterestModel
from etarec.nn.embeddings import Vocab


class DIN(InterestModel):
    def __init__(self, config: ModelConfig, vocab: Vocab):
        super().__init__(config, vocab, long_width=0)  # no long interest
