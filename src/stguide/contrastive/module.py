"""The LightningModule: a trainable image tower and gene head against a frozen gene latent."""
from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from stguide.contrastive.heads import ProjectionHead
from stguide.contrastive.losses import ContrastiveLoss


class ContrastiveModule(L.LightningModule):
    """Image backbone + head (trained) and gene head (trained) on the precomputed frozen gene latent.

    ``gene_encoder``: a trainable copy of the stage-1 encoder (fine-tuning, off by default); batches then carry
    counts as the gene input. ``temperature`` is the initial τ (``logit_scale = 1/τ``), learnable when ``learn_temperature``; the scale is
    clamped at 100 as in CLIP. ``freeze_backbone`` trains the heads only.
    """

    def __init__(self, backbone: nn.Module, feature_dim: int, gene_dim: int, loss: ContrastiveLoss, *,
                 gene_encoder: nn.Module | None = None, embed_dim: int = 128,
                 dropout: float = 0.1, temperature: float = 0.07, learn_temperature: bool = True, lr: float = 1e-3,
                 weight_decay: float = 1e-3, freeze_backbone: bool = False, max_epochs: int = 10, seed: int = 0) -> None:
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

    def logit_scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=100.0)

    def embed_images(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(backbone features, normalised head embedding)."""
        if self.freeze_backbone:
            self.backbone.eval()
        f = self.backbone(x)
        return f, F.normalize(self.image_head(f), dim=1)

    def embed_genes(self, g: torch.Tensor) -> torch.Tensor:
        """Normalised gene embedding from the frozen latent, or from counts when the gene encoder is fine-tuned."""
        if self.gene_encoder is not None:
            g = self.gene_encoder(g)
        return F.normalize(self.gene_head(g), dim=1)

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x, g, z, y, _ = batch
        _, u = self.embed_images(x)
        v = self.embed_genes(g)
        losses = self.loss(u, v, self.logit_scale(), {"gene_latent": z, "labels": y})
        total = sum(losses.values())
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

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(self.max_epochs, 1))
        return {"optimizer": opt, "lr_scheduler": sched}
