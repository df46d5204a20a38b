"""Contrastive losses: sibling modules with one signature, one gather helper, one soft cross-entropy.

``loss(image_emb, gene_emb, logit_scale, batch_info) -> {"contrastive_loss": tensor}``

Embeddings are L2-normalised by the caller. Logits are ``logit_scale * U Vᵀ`` (image rows, gene columns), with
``logit_scale = 1/τ``. Every loss is the symmetric soft cross-entropy between those logits and a target matrix
``T`` (rows sum to 1): ``½ [CE(logits, T) + CE(logitsᵀ, Tᵀ)]``. The losses differ only in ``targets``:

* ``clip``: ``T = I``.
* ``bleep``: ``T = softmax(((U Uᵀ + V Vᵀ)/2) / τ)`` — τ used the same way as in the logits.
* ``gene-soft``: ``T = softmax(cos(z, z) / τ_t)`` from the frozen batch-agnostic gene latent ``z``.
* ``inter-soft``: ``T = (1-α) I + α softmax(sg(½(U Vᵀ + V Uᵀ)) / τ)``; α = 0 is ``clip``.
* ``supcon``: ``T_ij ∝ 1[y_i = y_j]`` (an unlabelled spot's only positive is itself).
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stguide.config import ConfigError, check_name


def gather(t: Tensor, with_grad: bool = True) -> Tensor:
    """Concatenate ``t`` across distributed ranks (keeping gradients, as open_clip does); identity otherwise."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_world_size() == 1:
        return t
    if with_grad:
        from torch.distributed.nn.functional import all_gather  # differentiable; imported only when distributed

        return torch.cat(all_gather(t), dim=0)
    out = [torch.zeros_like(t) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(out, t.contiguous())
    return torch.cat(out, dim=0)


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean over rows of −Σ_j T_ij log softmax(logits)_ij."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class ContrastiveLoss(nn.Module):
    """Base: gathers the global batch, builds the logits, and applies the symmetric soft cross-entropy."""

    name = "base"

    def targets(self, u: Tensor, v: Tensor, logit_scale: Tensor, info: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def forward(self, image_emb: Tensor, gene_emb: Tensor, logit_scale: Tensor, batch_info: dict[str, Any] | None = None) -> dict[str, Tensor]:
        u, v = gather(image_emb), gather(gene_emb)
        info = {k: gather(t.detach(), with_grad=False) for k, t in (batch_info or {}).items() if isinstance(t, Tensor)}
        logits = logit_scale * u @ v.T
        t = self.targets(u, v, logit_scale, info)
        loss = 0.5 * (soft_cross_entropy(logits, t) + soft_cross_entropy(logits.T, t.T))
        return {"contrastive_loss": loss}


def _eye(u: Tensor) -> Tensor:
    return torch.eye(u.shape[0], device=u.device, dtype=u.dtype)


class ClipLoss(ContrastiveLoss):
    """Symmetric InfoNCE with hard diagonal targets (CLIP)."""

    name = "clip"

    def targets(self, u, v, logit_scale, info):
        return _eye(u)


class BleepLoss(ContrastiveLoss):
    """BLEEP: soft targets from the mean of image-image and gene-gene similarity; ``detach`` stops their gradient."""

    name = "bleep"

    def __init__(self, detach: bool = False) -> None:
        super().__init__()
        self.detach = detach

    def targets(self, u, v, logit_scale, info):
        t = F.softmax(((u @ u.T + v @ v.T) / 2) * logit_scale, dim=1)
        return t.detach() if self.detach else t


class GeneSoftLoss(ContrastiveLoss):
    """Soft targets from the frozen gene latent (``batch_info["gene_latent"]``) at temperature ``target_temperature``."""

    name = "gene-soft"

    def __init__(self, target_temperature: float = 0.1) -> None:
        super().__init__()
        self.target_temperature = target_temperature

    def targets(self, u, v, logit_scale, info):
        if "gene_latent" not in info:
            raise KeyError("gene-soft needs batch_info['gene_latent']")
        z = F.normalize(info["gene_latent"].to(u.dtype), dim=1)
        return F.softmax(z @ z.T / self.target_temperature, dim=1)


class InterSoftLoss(ContrastiveLoss):
    """Identity mixed (weight ``alpha``) with the stop-gradient symmetrised cross-modal similarity."""

    name = "inter-soft"

    def __init__(self, alpha: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError("alpha must lie in [0, 1]")
        self.alpha = alpha

    def targets(self, u, v, logit_scale, info):
        with torch.no_grad():
            s = 0.5 * (u @ v.T + v @ u.T)
            soft = F.softmax(s * logit_scale, dim=1)
        return (1 - self.alpha) * _eye(u) + self.alpha * soft


class SupConLoss(ContrastiveLoss):
    """Positives share a label (``batch_info["labels"]``, integer; −1 = unlabelled: only itself is positive)."""

    name = "supcon"

    def targets(self, u, v, logit_scale, info):
        if "labels" not in info:
            raise KeyError("supcon needs batch_info['labels']")
        y = info["labels"]
        same = (y[:, None] == y[None, :]) & (y[:, None] >= 0)
        pos = (same | torch.eye(len(y), dtype=torch.bool, device=y.device)).to(u.dtype)
        return pos / pos.sum(dim=1, keepdim=True)


LOSSES: dict[str, type[ContrastiveLoss]] = {c.name: c for c in (ClipLoss, BleepLoss, GeneSoftLoss, InterSoftLoss, SupConLoss)}


def get_loss(name: str, **kwargs: Any) -> ContrastiveLoss:
    """A loss by name (``LOSSES``), with its keyword options; :class:`~stguide.config.ConfigError` (an
    ``InputError``) at ``loss`` or ``loss_kwargs`` when the name is unknown or an option is unknown or out of range."""
    check_name("loss", name, LOSSES, "loss")
    try:
        return LOSSES[name](**kwargs)
    except (TypeError, ValueError) as e:
        params = [p.name for p in inspect.signature(LOSSES[name]).parameters.values() if p.kind == p.POSITIONAL_OR_KEYWORD]
        raise ConfigError("loss_kwargs", f"bad options for loss {name!r}: {e}",
                          f"{name} takes {params or 'no options'} (docs/configuration.md)") from None


def check_loss(name: str, kwargs: dict[str, Any]) -> None:
    """Validate a loss name and its options (by building it once)."""
    get_loss(name, **kwargs)
