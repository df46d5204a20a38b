"""Stage-2 settings, checked when they are built: the backbone and its weight source, the loss and its options."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from stguide.config import ConfigError, FromDict
from stguide.contrastive.encoders import check_image_encoder
from stguide.contrastive.losses import check_loss
from stguide.contrastive.trunk import n_blocks
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
    predictions), ``trainer_kwargs`` (passed to ``lightning.Trainer``), ``grad_checkpointing`` (``trunk: full``
    only: timm's gradient checkpointing, the trunk's activations recomputed in the backward pass instead of kept —
    about half the training memory for about a third more time; off by default), ``micro_batch`` (``trunk: full``
    only; 0 = off: the trunk runs each batch in equal micro-batches of at most this many patches, each checkpointed, so its
    activations are kept for one micro-batch at a time; the loss still sees the whole batch, every other spot a
    negative, and the gradients are the whole batch's except that BatchNorm normalises each micro-batch by its own
    statistics, as across DDP processes without SyncBN), ``compile`` (``trunk: full`` only: ``torch.compile`` of the
    trunk, in place; ``true`` = the default backend (inductor), or a backend's name; off by default).

    Where training stops in the trunk: ``trunk`` is ``full`` (end-to-end on images, Lightning; today's default),
    ``frozen`` (the whole pretrained trunk is run once per patch and view and its pooled features cached; only the
    heads train) or ``partial`` (the activations before the trunk's last ``trunk_blocks`` blocks are cached; those
    blocks and the heads train). ``views`` (the plain patch plus ``views − 1`` augmented ones: flips, 90°
    rotations, HED jitter) and ``view_seed`` make the cache; each epoch draws one view per spot.

    Aimed at the patient effect and at attributing a gain (cached modes; ``shuffle_targets`` works in every mode):
    ``objective: supervised`` trains the image head with class-balanced cross-entropy on the training patients'
    labels instead of a gene target (the ceiling control); ``shuffle_targets`` permutes the gene targets across
    spots (the control for what head training alone does); ``batching: per-patient`` draws every minibatch from one
    patient, so the loss cannot fall by telling patients apart; ``adversary_weight`` > 0 adds a patient classifier
    on the image embedding behind a gradient reversal (beyond the paper).
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
    trunk: Literal["full", "frozen", "partial"] = "full"
    trunk_blocks: int = 1
    grad_checkpointing: bool = False
    micro_batch: int = 0
    compile: bool | str = False
    views: int = 8
    view_seed: int = 0
    objective: Literal["contrastive", "supervised"] = "contrastive"
    shuffle_targets: bool = False
    batching: Literal["mixed", "per-patient"] = "mixed"
    adversary_weight: float = 0.0

    @property
    def trains_backbone(self) -> bool:
        """Whether training changes the backbone's output: not with ``trunk: frozen`` (the trunk's cached features
        are the backbone output) nor with ``freeze_backbone`` (end-to-end training of the heads only)."""
        return self.trunk != "frozen" and not self.freeze_backbone

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
        if self.views < 1:
            raise ConfigError("views", f"must be at least 1 (the plain patch), got {self.views}", "set views, e.g. 8")
        if self.adversary_weight < 0:
            raise ConfigError("adversary_weight", f"must be ≥ 0, got {self.adversary_weight}", "use 0 (off) or e.g. 0.1")
        if self.trunk == "full" and (self.batching != "mixed" or self.adversary_weight or self.objective != "contrastive"):
            key = "batching" if self.batching != "mixed" else "adversary_weight" if self.adversary_weight else "objective"
            raise ConfigError(key, f"{key} is implemented for cached trunk features only", "set trunk: frozen or partial")
        if self.trunk != "full" and self.grad_checkpointing:
            raise ConfigError("grad_checkpointing", "gradient checkpointing saves memory in end-to-end training only "
                              f"(trunk: {self.trunk} trains no trunk activations it could recompute)",
                              "set grad_checkpointing: false, or trunk: full")
        if self.trunk == "partial" and self.freeze_backbone:
            raise ConfigError("freeze_backbone", "freezes the backbone of end-to-end training only (trunk: partial trains the "
                              "trunk's last blocks, which a frozen backbone would contradict)",
                              "set freeze_backbone: false, or trunk: frozen (the heads only, on cached features)")
        if self.trunk != "full" and self.compile:
            raise ConfigError("compile", f"compiling speeds up the trunk in end-to-end training only (trunk: {self.trunk} "
                              "trains a head on cached features)", "set compile: false, or trunk: full")
        if self.micro_batch < 0:
            raise ConfigError("micro_batch", f"must be ≥ 0, got {self.micro_batch}", "use 0 (off) or e.g. 16")
        if self.trunk != "full" and self.micro_batch:
            raise ConfigError("micro_batch", f"micro-batches bound the trunk's activations in end-to-end training only "
                              f"(trunk: {self.trunk} trains no trunk)", "set micro_batch: 0, or trunk: full")
        if self.trunk != "full" and self.finetune_gene_encoder:
            raise ConfigError("finetune_gene_encoder", "fine-tuning the gene encoder is implemented for trunk: full only",
                              "set finetune_gene_encoder: false, or trunk: full")
        if self.trunk == "partial":
            import timm

            n = n_blocks(timm.create_model(self.backbone, pretrained=False, num_classes=0)) if not self.backbone.startswith("hf-hub:") else None
            if n is None:
                raise ConfigError("trunk", f"trunk: partial cannot split the backbone {self.backbone!r}",
                                  "use an EfficientNet/MobileNet or ResNet backbone, or trunk: frozen / full")
            if not 1 <= self.trunk_blocks <= n:
                raise ConfigError("trunk_blocks", f"{self.backbone} has {n} blocks, so trunk_blocks must lie in 1..{n}, got {self.trunk_blocks}",
                                  f"set trunk_blocks to at most {n}")
