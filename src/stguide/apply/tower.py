"""The image tower a trained stguide model applies: the trunk's frozen prefix, the part stage 2 trained and the
image head, as one module, and the batched forward pass over uint8 patches that the bundle, ``predict`` and the
image → expression evaluation share."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ImageTower(nn.Module):
    """A patch tensor → the features the probe reads: ``backbone`` (the trunk's output after the trained part),
    ``head`` (the normalised head embedding) or ``both`` (backbone ‖ head)."""

    def __init__(self, prefix: nn.Module, backbone: nn.Module, head: nn.Module | None, features: str,
                 prefix_float16: bool = False) -> None:
        super().__init__()
        self.prefix, self.backbone, self.head, self.features = prefix, backbone, head, features
        self.prefix_float16 = prefix_float16  # the run trained on the prefix's output cached in float16: round it alike

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        # channels-last, as the feature cache computes the trunk (faster on CPU: benchmarks/trunk_layout.py)
        h = self.prefix.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        f = self.backbone(h.half().float() if self.prefix_float16 else h)
        return f, (F.normalize(self.head(f), dim=1) if self.head is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.probed(*self.embed(x))

    def probed(self, f: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
        """The features the probe reads, from :meth:`embed`'s output."""
        if self.features == "backbone" or u is None:
            return f
        return u if self.features == "head" else torch.cat([f, u], dim=1)


def tensors_sha256(module: nn.Module) -> str:
    """sha256 of a module's tensors (names, dtypes, shapes and values, in name order): the identity of a set of weights,
    whichever file or hub they came from."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


@torch.no_grad()
def embed_patches(tower: ImageTower, transform, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(the probed features, the normalised head embedding or None) of uint8 patches, one forward pass."""
    f, u = tower.embed(transform.batch(patches))
    return tower.probed(f, u).numpy().astype(np.float32), (None if u is None else u.numpy().astype(np.float32))


def build_tower(man: dict[str, Any], model: nn.Module | None = None) -> ImageTower:
    """The architecture a manifest describes: untrained (weights are loaded separately), or around ``model``, the
    trunk with its own (external, pretrained) weights, whose frozen prefix the bundle references instead of copying."""
    import timm

    from stguide.contrastive.heads import ProjectionHead
    from stguide.contrastive.trunk import split_trunk

    if model is None:
        model = timm.create_model(man["backbone"], pretrained=False, num_classes=0)
    prefix: nn.Module
    backbone: nn.Module
    if man["trunk"] == "frozen":
        prefix, backbone = model, nn.Identity()
    elif man["trunk"] == "partial":
        prefix, tail = split_trunk(model, man["trunk_blocks"], man["backbone"])
        backbone = tail if tail is not None else nn.Identity()
    else:
        prefix, backbone = nn.Identity(), model
    head = ProjectionHead(man["feature_dim"], man["embed_dim"], man["dropout"]) if man["embed_dim"] else None
    return ImageTower(prefix, backbone, head, man["features"], man["prefix_float16"]).eval()
