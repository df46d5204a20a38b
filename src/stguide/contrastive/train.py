"""Stage 2 as a function: (config, patches, gene latents, training spots) → checkpoint + image features."""
from __future__ import annotations

import contextlib
import logging
import warnings
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from stguide.contrastive.augment import Augment
from stguide.contrastive.config import ContrastiveConfig
from stguide.contrastive.data import EpochSampler, ImageDataset, PairDataset
from stguide.contrastive.encoders import build_image_encoder
from stguide.contrastive.losses import get_loss
from stguide.contrastive.module import ContrastiveModule
from stguide.data.patches import PatchStore
from stguide.progress import training_progress


@contextlib.contextmanager
def _quiet_lightning():
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.fabric.utilities.seed", "pytorch_lightning")
    loggers = [logging.getLogger(n) for n in names]
    old = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*GPU available but not used.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        warnings.filterwarnings("ignore", ".*TensorBoard.*")
        warnings.filterwarnings("ignore", ".*no `val_dataloader`.*")
        try:
            yield
        finally:
            for lg, lv in zip(loggers, old, strict=True):
                lg.setLevel(lv)


def _feature_dim(backbone: torch.nn.Module, transform, store: PatchStore) -> int:
    with torch.no_grad():
        was = backbone.training
        backbone.eval()
        d = backbone(transform.batch(store[0][None])).shape[-1]
        backbone.train(was)
    return int(d)


def _grad_checkpointing(backbone: torch.nn.Module, name: str) -> None:
    """timm's gradient checkpointing: the trunk's blocks keep only their inputs and recompute the rest in the
    backward pass (less memory, about one more forward pass of time)."""
    try:
        backbone.set_grad_checkpointing(True)  # type: ignore[operator]
    except (AttributeError, AssertionError, NotImplementedError) as e:
        from stguide.config import ConfigError

        raise ConfigError("grad_checkpointing", f"the backbone {name!r} does not support gradient checkpointing ({type(e).__name__})",
                          "set grad_checkpointing: false, or use a timm backbone that has set_grad_checkpointing") from None


def _compile(backbone: torch.nn.Module, backend: bool | str) -> None:
    """``torch.compile`` in place: the forward pass is compiled on first use; the state dict's keys are unchanged, so
    checkpoints load into an uncompiled module."""
    import torch._dynamo

    name = "inductor" if backend is True else str(backend)
    if name not in torch._dynamo.list_backends(exclude_tags=()):
        from stguide.config import ConfigError

        raise ConfigError("compile", f"{name!r} is not a torch.compile backend here",
                          f"use true (inductor) or one of {', '.join(torch._dynamo.list_backends())}")
    backbone.compile(backend=name)


def build_module(cfg: ContrastiveConfig, store: PatchStore, gene_dim: int, gene_encoder: torch.nn.Module | None = None
                 ) -> tuple[ContrastiveModule, Any]:
    """The untrained module and the image transform for ``cfg``; the trunk in channels-last memory (faster
    convolutions on CPU, and the layout the module's batch normalisation produces)."""
    backbone, transform = build_image_encoder(cfg.backbone, cfg.init, num_classes=0, img_size=int(store.meta["out_px"]))
    backbone = backbone.to(memory_format=torch.channels_last)
    if cfg.grad_checkpointing:
        _grad_checkpointing(backbone, cfg.backbone)
    if cfg.compile:
        _compile(backbone, cfg.compile)
    module = ContrastiveModule(backbone, _feature_dim(backbone, transform, store), gene_dim, get_loss(cfg.loss, **cfg.loss_kwargs),
                               gene_encoder=gene_encoder,
                               embed_dim=cfg.embed_dim, dropout=cfg.dropout, temperature=cfg.temperature,
                               learn_temperature=cfg.learn_temperature, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               freeze_backbone=cfg.freeze_backbone, max_epochs=cfg.epochs, seed=cfg.seed)
    module.normalise, module.micro_batch = transform, cfg.micro_batch
    return module, transform


def train_contrastive(
    cfg: ContrastiveConfig,
    store: PatchStore,
    obs_names: list[str],
    latents: np.ndarray,
    labels: np.ndarray | None,
    out_dir: str | PathLike,
    *,
    gene_inputs: np.ndarray | None = None,
    gene_encoder: torch.nn.Module | None = None,
    resume: bool = False,
    progress: bool = True,
) -> tuple[ContrastiveModule, Any]:
    """Train the image tower against frozen gene latents of the training spots ``obs_names``.

    ``labels`` are integer class ids (−1 unlabelled), used by ``supcon``. With ``cfg.finetune_gene_encoder``,
    ``gene_encoder`` (a trainable copy of the stage-1 encoder) and its ``gene_inputs`` (counts) are required. Writes ``out_dir/checkpoints/last.ckpt``
    (every epoch), CSV and TensorBoard logs. ``resume`` continues from ``last.ckpt``. Returns (module, transform).
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    out_dir = Path(out_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if cfg.finetune_gene_encoder and (gene_encoder is None or gene_inputs is None):
        from stguide.errors import InputError

        raise InputError("config:contrastive.finetune_gene_encoder", "fine-tuning needs a gene encoder network and counts",
                         "use the scvi or scanvi gene encoder, or set finetune_gene_encoder: false")
    module, transform = build_module(cfg, store, latents.shape[1], gene_encoder if cfg.finetune_gene_encoder else None)
    rows = store.indices(obs_names)
    y = np.full(len(rows), -1) if labels is None else np.asarray(labels)
    rng = np.random.default_rng(cfg.seed)
    n_val = int(round(cfg.val_fraction * len(rows)))
    perm = rng.permutation(len(rows))
    tr, va = np.sort(perm[n_val:]), np.sort(perm[:n_val])
    aug = Augment() if cfg.augment else None
    gpu = torch.cuda.is_available()
    loading: dict[str, Any] = dict(num_workers=cfg.num_workers, pin_memory=gpu, persistent_workers=cfg.num_workers > 0)
    gin = gene_inputs if cfg.finetune_gene_encoder else None
    ds_tr = PairDataset(store, rows[tr], latents[tr], y[tr], aug, cfg.seed, None if gin is None else gin[tr])
    drop_last = len(tr) > cfg.batch_size and len(tr) % cfg.batch_size < 2  # BatchNorm cannot train on one sample
    dl_tr = DataLoader(ds_tr, batch_size=cfg.batch_size, sampler=EpochSampler(len(tr), cfg.seed, ds_tr), drop_last=drop_last,
                       generator=torch.Generator().manual_seed(cfg.seed), **loading)
    dl_va = None
    # every epoch: the newest epoch's checkpoint replaces the previous one, and last.ckpt is refreshed
    # (save_top_k=0 would write last.ckpt only when training ends)
    callbacks: list = [ModelCheckpoint(dirpath=out_dir / "checkpoints", filename="epoch{epoch:03d}", auto_insert_metric_name=False,
                                       save_last=True, save_top_k=1, every_n_epochs=1)]
    if n_val:
        dl_va = DataLoader(PairDataset(store, rows[va], latents[va], y[va], None, cfg.seed, None if gin is None else gin[va]),
                           batch_size=cfg.batch_size, **loading)
        callbacks.append(EarlyStopping("val_loss", patience=cfg.patience))
    precision = ("bf16-mixed" if gpu else "32-true") if cfg.precision == "auto" else cfg.precision
    shown = training_progress(progress, f"contrastive {cfg.loss} ({len(tr)} spots)", cfg.epochs)
    callbacks += shown.pop("callbacks", [])
    kw = dict(max_epochs=cfg.epochs, accelerator="gpu" if gpu else "cpu", devices=1, precision=precision,
              deterministic=not gpu, callbacks=callbacks, enable_model_summary=False, **shown,
              logger=[CSVLogger(out_dir, name="logs", version=""), TensorBoardLogger(out_dir, name="tb", version="")],
              log_every_n_steps=1, num_sanity_val_steps=0)
    kw.update(cfg.trainer_kwargs)
    ckpt = out_dir / "checkpoints" / "last.ckpt"
    with _quiet_lightning():
        trainer = L.Trainer(**kw)
        trainer.fit(module, dl_tr, dl_va, ckpt_path=str(ckpt) if resume and ckpt.is_file() else None, weights_only=True)
    module.eval()
    return module, transform


@torch.no_grad()
def extract_features(module: ContrastiveModule | torch.nn.Module, transform, store: PatchStore, obs_names: list[str],
                     batch_size: int | None = None, head: bool = False) -> np.ndarray:
    """Frozen image features of ``obs_names``: backbone output (default) or the normalised head embedding.

    Runs on the GPU when there is one (Lightning hands a trained module back on the CPU; it is returned there).
    ``batch_size`` (default 32 on CPU, where a larger batch is no faster and a 224 px EfficientNet batch of 128
    holds ~1.8 GiB of activations; 256 on GPU).
    """
    gpu = torch.cuda.is_available()
    device = torch.device("cuda" if gpu else "cpu")
    rows = store.indices(obs_names)
    dl = DataLoader(ImageDataset(store, rows), batch_size=batch_size or (256 if gpu else 32), pin_memory=gpu)
    out = []
    net = module
    was = next(net.parameters()).device
    net.eval().to(device)
    for x in dl:
        x = x.to(device, non_blocking=True)
        if isinstance(net, ContrastiveModule):
            f, e = net.embed_images(x)
            out.append((e if head else f).float().cpu().numpy())
        else:
            out.append(net(transform.batch(x)).float().cpu().numpy())
    net.to(was)
    return np.concatenate(out, 0)
