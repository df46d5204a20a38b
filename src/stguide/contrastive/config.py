"""Stage-2 settings, checked when they are built: the backbone and its weight source, the loss and its options."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from stguide.config import ConfigError, FromDict
from stguide.contrastive.encoders import check_image_encoder
from stguide.contrastive.losses import check_loss
from stguide.genes.base import FINETUNE, PREDICT


@dataclass(frozen=True)
class ContrastiveConfig(FromDict):
    """Stage-2 settings (documented in docs/configuration.md).

    ``backbone`` (timm name), ``init`` (none / imagenet / effnet-lite0 / file:PATH), ``embed_dim`` and
    ``dropout`` of both projection heads, ``loss`` and ``loss_kwargs`` (e.g. ``{alpha: 0.5}`` for inter-soft),
    ``temperature`` (initial τ) and ``learn_temperature``, ``epochs``, ``batch_size``, ``lr``, ``weight_decay``
    (AdamW, cosine schedule), ``augment`` (flips, 90° rotations, HED jitter, resized crop), ``freeze_backbone``
    (train the heads only), ``val_fraction`` (training spots held back for early stopping; 0 = none),
    ``patience`` (early-stopping epochs), ``num_workers``, ``precision`` (``auto``: bf16-mixed on GPU, 32 on
    CPU), ``seed``, ``finetune_gene_encoder`` (train a copy of the scVI/scANVI encoder on counts instead of
    freezing it; off by default), ``supcon_labels`` (``label``: the training labels; ``scanvi``: scANVI's
    predictions), ``trainer_kwargs`` (passed to ``lightning.Trainer``).
    """

    section: ClassVar[str] = "contrastive"

    backbone: str = "resnet18"
    init: str = "none"
    embed_dim: int = 128
    dropout: float = 0.1
    loss: str = "clip"
    loss_kwargs: dict = field(default_factory=dict)
    temperature: float = 0.07
    learn_temperature: bool = True
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-3
    augment: bool = True
    freeze_backbone: bool = False
    val_fraction: float = 0.0
    patience: int = 3
    num_workers: int = 0
    precision: str = "auto"
    seed: int = 0
    finetune_gene_encoder: bool = False
    supcon_labels: Literal["label", "scanvi"] = "label"
    trainer_kwargs: dict = field(default_factory=dict)

    def gene_capabilities(self) -> tuple[str, ...]:
        """What the gene encoder must be able to do for these settings (``stguide.genes`` capabilities)."""
        return ((PREDICT,) if self.loss == "supcon" and self.supcon_labels == "scanvi" else ()) + \
            ((FINETUNE,) if self.finetune_gene_encoder else ())

    def __post_init__(self) -> None:
        check_image_encoder(self.backbone, self.init)
        check_loss(self.loss, self.loss_kwargs)
        for key, value, low in (("epochs", self.epochs, 1), ("batch_size", self.batch_size, 2), ("embed_dim", self.embed_dim, 1)):
            if value < low:
                raise ConfigError(key, f"must be at least {low}, got {value}", f"set {key} to {low} or more")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("val_fraction", f"must lie in [0, 1), got {self.val_fraction}", "use 0 (no early stopping) or e.g. 0.1")
