"""Projection heads: residual MLPs (BLEEP's design), one for each tower; and the gradient reversal of the
patient-adversarial head."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class ProjectionHead(nn.Module):
    """Linear(in→d) → GELU → Linear(d→d) → Dropout → residual add → LayerNorm."""

    def __init__(self, in_dim: int, embed_dim: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        self.in_dim, self.embed_dim = in_dim, embed_dim
        self.proj = nn.Linear(in_dim, embed_dim)
        self.fc = nn.Sequential(nn.GELU(), nn.Linear(embed_dim, embed_dim), nn.Dropout(dropout))
        self.norm = nn.LayerNorm(embed_dim)

    def forward(self, x):
        if x.shape[-1] != self.in_dim:
            from stguide.errors import InputError

            raise InputError("config:embedding", f"the head expects inputs of size {self.in_dim}, got {x.shape[-1]}",
                             "use the gene encoder / backbone the model was built for")
        h = self.proj(x)
        return self.norm(h + self.fc(h))


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return -grad


class GradientReversal(nn.Module):
    """Identity forward, negated gradient backward (Ganin & Lempitsky 2015): what follows it learns to predict, what
    precedes it learns to make that prediction fail."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Reverse.apply(x)
