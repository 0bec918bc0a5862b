"""The MLP head and its activations (ReLU, PReLU, or DIN's data-adaptive Dice)."""
from __future__ import annotations

import torch
from torch import nn


class Dice(nn.Module):
    """Dice (DIN, Zhou et al. 2018): a PReLU whose switch point follows the batch statistics."""

    def __init__(self, dim: int, eps: float = 1e-8):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, eps=eps, affine=False)
        self.alpha = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., D]
        gate = torch.sigmoid(self.norm(x.reshape(-1, x.shape[-1])).view_as(x))
        return gate * x + (1 - gate) * self.alpha * x


class PReLU(nn.Module):
    """PReLU with one slope per feature of the LAST dimension (nn.PReLU uses dim 1)."""

    def __init__(self, dim: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.full((dim,), 0.25))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., D]
        return torch.where(x > 0, x, self.alpha * x)


def activation_layer(name: str, dim: int) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "prelu":
        return PReLU(dim)
    if name == "dice":
        return Dice(dim)
    raise ValueError(f"unknown activation {name!r}")


class MLP(nn.Module):
    """Linear -> activation -> dropout per hidden layer, then a linear output layer."""

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), activation_layer(activation, width)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            in_dim = width
        layers.append(nn.Linear(in_dim, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
