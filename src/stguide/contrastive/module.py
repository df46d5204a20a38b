"""The LightningModule: a trainable image tower and gene head against a frozen gene latent."""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from stguide.contrastive.heads import GradientReversal, ProjectionHead
from stguide.contrastive.losses import ContrastiveLoss


def total_loss(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum of the loss terms (a single term is returned as is)."""
    values = list(losses.values())
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


class ContrastiveModule(L.LightningModule):
    """Image backbone + head (trained) and gene head (trained) on the precomputed frozen gene latent.

    ``gene_encoder``: a trainable copy of the stage-1 encoder (fine-tuning, off by default); batches then carry
    counts as the gene input. ``temperature`` is the initial τ (``logit_scale = 1/τ``), learnable when ``learn_temperature``; the scale is
    clamped at 100 as in CLIP. ``freeze_backbone`` trains the heads only.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, gene_dim: int, loss: ContrastiveLoss, *,
                 gene_encoder: nn.Module | None = None, embed_dim: int = 128,
                 dropout: float = 0.1, temperature: float = 0.07, learn_temperature: bool = True, lr: float = 1e-3,
                 weight_decay: float = 1e-3, freeze_backbone: bool = False, max_epochs: int = 10, seed: int = 0,
                 objective: str = "contrastive", class_weights: torch.Tensor | None = None,
                 adversary_weight: float = 0.0, n_patients: int = 0) -> None:
        super().__init__()
        self.seed = seed
        self.backbone = backbone
        self.gene_encoder = gene_encoder  # None: the gene latent is precomputed and frozen
        self.image_head = ProjectionHead(feature_dim, embed_dim, dropout)
        self.gene_head = ProjectionHead(gene_dim, embed_dim, dropout)
        self.loss = loss
        init = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_scale", init)
        self.lr, self.weight_decay, self.freeze_backbone, self.max_epochs = lr, weight_decay, freeze_backbone, max_epochs
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        # optional parts, built after the others so that a run without them draws the same initial weights
        self.objective = objective
        self.classifier: nn.Module | None = None
        if objective == "supervised":  # the `supervised` control: cross-entropy on the training labels
            if class_weights is None:
                raise ValueError("the supervised objective needs class_weights")
            self.classifier = nn.Linear(embed_dim, len(class_weights))
            self.register_buffer("class_weights", class_weights.float())
        self.adversary_weight = adversary_weight
        self.adversary: nn.Module | None = None
        if adversary_weight > 0:  # a patient classifier behind a gradient reversal: the head learns not to tell patients apart
            self.adversary = nn.Sequential(GradientReversal(), nn.Linear(embed_dim, max(n_patients, 2)))

    normalise: Any = None  # the trunk's input normalisation (encoders.Normalise), set by train.build_module
    micro_batch: int = 0  # > 0: the trunk trains in checkpointed micro-batches of at most this size (ContrastiveConfig.micro_batch)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's input: a uint8 N×H×W×3 batch is normalised here, a batch at a time on its device, into
        channels-last float; anything else (cached features, float images) passes unchanged."""
        if x.dtype == torch.uint8:
            if self.normalise is None:
                raise ValueError("uint8 images need the trunk's normalisation (ContrastiveModule.normalise)")
            return self.normalise.batch(x)
        return x

    def logit_scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100.0)

    def embed_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(backbone features, normalised head embedding)."""
        x = self.images(x)
        f = self._frozen(x) if self.freeze_backbone else self.backbone(x)
        return f, F.normalize(self.image_head(f), dim=1)

    def embed_genes(self, g: torch.Tensor) -> torch.Tensor:
        """Normalised gene embedding from the frozen latent, or from counts when the gene encoder is fine-tuned."""
        if self.gene_encoder is not None:
            g = self.gene_encoder(g)
        return F.normalize(self.gene_head(g), dim=1)

    def compute_losses(self, batch: Any) -> dict[str, torch.Tensor]:
        """The loss terms of a batch ``(images or cached features, gene input, gene latent, label id, patient id)``."""
        x, g, z, y, patient = batch
        x = self.images(x)
        f = self._trunk(x) if not self.freeze_backbone else self._frozen(x)
        h = self.image_head(f)
        u = F.normalize(h, dim=1)
        if self.classifier is not None:
            weight = self.get_buffer("class_weights")
            losses = {"supervised_loss": F.cross_entropy(self.classifier(h), y, weight=weight, ignore_index=-1)}
        else:
            losses = self.loss(u, self.embed_genes(g), self.logit_scale(), {"gene_latent": z, "labels": y})
        if self.adversary is not None:
            losses["adversary_loss"] = self.adversary_weight * F.cross_entropy(self.adversary(u), patient)
        return losses

    def _trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's features of a batch. With ``micro_batch``, while training, in micro-batches that each keep
        only their input: the forward pass runs without keeping activations and the backward pass recomputes one
        micro-batch at a time (with the same random draws), so the trunk's activation memory is one micro-batch's."""
        m = self.micro_batch
        if not m or len(x) <= m or not (self.training and torch.is_grad_enabled()):
            return self.backbone(x)
        from torch.utils.checkpoint import checkpoint

        parts = x.tensor_split(-(-len(x) // m))  # balanced: 16 patches at micro_batch 5 are 4 × 4, not 5 + 5 + 5 + 1
        return torch.cat([checkpoint(self.backbone, part, use_reentrant=False) for part in parts])

    def _frozen(self, x: torch.Tensor) -> torch.Tensor:
        self.backbone.eval()
        return self.backbone(x)

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x = batch[0]
        total = total_loss(self.compute_losses(batch))
        self.log(f"{stage}_loss", total, prog_bar=True, on_epoch=True, on_step=False, batch_size=len(x), sync_dist=stage == "val")
        if stage == "train":
            self.log("logit_scale", self.logit_scale(), on_epoch=True, on_step=False, batch_size=len(x))
        return total

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        return self._step(batch, "val")

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # dropout and any other torch randomness depend on (seed, epoch, batch) only, so a resumed run draws
        # exactly what an uninterrupted one would
        torch.manual_seed(hash((self.seed, self.current_epoch, batch_idx)) % 2**62)

    foreach: bool | None = None  # None: PyTorch's choice (end-to-end training); True: the multi-tensor AdamW (cached heads)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, foreach=self.foreach)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.max_epochs, 1))
        return {"optimizer": opt, "lr_scheduler": sched}
