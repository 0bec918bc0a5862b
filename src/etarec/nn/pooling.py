"""Mean pooling over a padded set of behaviours (the paper's Avg-Pooling baselines)."""
from __future__ import annotations

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """values [B, L, D], mask [B, L] (True = real) -> [B, D]; a row without real behaviours -> zeros."""
    weights = mask.to(values.dtype)[:, :, None]  # [B, L, 1]
    return (values * weights).sum(1) / weights.sum(1).clamp(min=1.0)
