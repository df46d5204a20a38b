"""Projection heads: residual MLPs (BLEEP's design), one for each tower."""
from __future__ import annotations

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
