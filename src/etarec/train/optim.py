"""The optimizer of a model: one object with step / zero_grad / state_dict, whatever runs inside."""
from __future__ import annotations

import torch
from torch import nn

from etarec.config import TrainConfig


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
