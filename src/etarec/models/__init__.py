"""Model registry: config name -> class. Every model is `Model(ModelConfig, Vocab)` with forward(Batch) -> logits [B]."""
from __future__ import annotations

import difflib

from torch import nn

from etarec.config import ModelConfig
from etarec.errors import EtarecError
from etarec.models.avg_pool import AvgPool
from etarec.models.din import DIN
from etarec.models.din_long import DINLong
from etarec.models.eta import ETA
from etarec.models.eta_inner_product import EtaInnerProduct
from etarec.models.full_attention import FullAttention
from etarec.models.sdim import SDIM
from etarec.models.sim_hard import SimHard
from etarec.models.twin import TWIN
from etarec.nn.embeddings import Vocab

MODELS: dict[str, type[nn.Module]] = {
    "eta": ETA, "din": DIN, "full_attention": FullAttention, "avg_pool": AvgPool, "din_long": DINLong,
    "sim_hard": SimHard, "eta_inner_product": EtaInnerProduct, "sdim": SDIM, "twin": TWIN,
}


def model_class(name: str) -> type[nn.Module]:
    if name not in MODELS:
        nearest = difflib.get_close_matches(name, MODELS, n=1)
        hint = f"did you mean '{nearest[0]}'? " if nearest else ""
        raise EtarecError(f"unknown model '{name}'; {hint}available: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def build_model(config: ModelConfig, vocab: Vocab) -> nn.Module:
    return model_class(config.name)(config, vocab)
