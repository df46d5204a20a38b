"""A pretrained trunk split where stage 2 stops training it: a frozen prefix (run once per patch and view, its output
cached) and a trainable tail (the last ``k`` blocks and the model's own pooling).

``trunk: frozen`` caches the whole trunk's pooled features (the tail is empty); ``trunk: partial`` caches the
activations before the last ``trunk_blocks`` blocks and trains those blocks; ``trunk: full`` is end-to-end training
on images (nothing is cached). The split follows timm's layouts: EfficientNet / MobileNet (``conv_stem``, ``bn1``,
``blocks`` (stages), ``conv_head``, ``bn2``, ``global_pool``) and ResNet (``conv1`` … ``maxpool``, ``layer1`` …
``layer4``, ``global_pool``); ``frozen`` works with any timm model.
"""
from __future__ import annotations

from torch import Tensor, nn

from stguide.config import ConfigError


class Tail(nn.Module):
    """The trainable end of a trunk: ``blocks`` → ``after`` → the model's pooling (BatchNorm statistics stay as
    pretrained: the layers train, their running means do not move, as Loki and HESCAPE keep them)."""

    def __init__(self, blocks: list[nn.Module], after: list[nn.Module], pool: nn.Module) -> None:
        super().__init__()
        self.blocks, self.after, self.pool = nn.Sequential(*blocks), nn.Sequential(*after), pool

    def train(self, mode: bool = True) -> Tail:
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def forward(self, h: Tensor) -> Tensor:
        return self.pool(self.after(self.blocks(h)))


def _stages(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module], list[nn.Module]] | None:
    """(stem, stages, after) of a known family, or None."""
    names = dict(model.named_children())
    if {"conv_stem", "bn1", "blocks", "conv_head", "bn2"} <= set(names):  # EfficientNet, MobileNet (timm)
        return [names["conv_stem"], names["bn1"]], list(names["blocks"].children()), [names["conv_head"], names["bn2"]]
    if {"conv1", "bn1", "maxpool", "layer1", "layer4"} <= set(names):  # ResNet family (timm)
        stem = [names[n] for n in ("conv1", "bn1", "act1", "maxpool") if n in names]
        return stem, [names[f"layer{i}"] for i in range(1, 5)], []
    return None


def n_blocks(model: nn.Module) -> int | None:
    """How many blocks ``partial`` can train (the trunk's stages), or None for a family it cannot split."""
    parts = _stages(model)
    return None if parts is None else len(parts[1])


def split_trunk(model: nn.Module, k: int, name: str = "") -> tuple[nn.Module, Tail | None]:
    """(frozen prefix, trainable tail) with the last ``k`` blocks in the tail; ``k = 0``: the whole trunk is the
    prefix (pooled features) and there is no tail. The prefix followed by the tail computes ``model(x)``."""
    if k == 0:
        return model, None
    parts = _stages(model)
    if parts is None:
        raise ConfigError("contrastive.trunk", f"trunk: partial cannot split the backbone {name or type(model).__name__!r}",
                          "use an EfficientNet/MobileNet or ResNet backbone, or trunk: frozen / full")
    stem, stages, after = parts
    if not 1 <= k <= len(stages):
        raise ConfigError("contrastive.trunk_blocks", f"{name or 'the backbone'} has {len(stages)} blocks, so trunk_blocks "
                          f"must lie in 1..{len(stages)}, got {k}", f"set trunk_blocks to at most {len(stages)}")
    pool = model.get_submodule("global_pool")
    return nn.Sequential(*stem, *stages[:-k]), Tail(stages[-k:], after, pool)
