"""Stage 2 on cached trunk features (``trunk: frozen`` or ``partial``): an epoch is a gather from RAM.

The same :class:`ContrastiveModule` as end-to-end training (heads, losses, the optional patient adversary and the
supervised control), with the cached prefix's output as its input and, for ``partial``, the trunk's last blocks as
its backbone. A plain loop instead of a Lightning trainer: a cell takes seconds, so there is nothing to resume.
Randomness (head initialisation, the view drawn for each spot, the batch order, dropout) is keyed on the seed and
the epoch. Writes ``logs/metrics.csv`` (epoch, train_loss) and ``model.safetensors`` into ``out_dir``.
"""
from __future__ import annotations

import csv
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from torch import nn

from stguide.contrastive.config import ContrastiveConfig
from stguide.contrastive.encoders import build_image_encoder
from stguide.contrastive.features import FeatureCache
from stguide.contrastive.losses import get_loss
from stguide.contrastive.module import ContrastiveModule, total_loss
from stguide.contrastive.trunk import split_trunk
from stguide.io import atomic_path
from stguide.progress import track


def batches(n: int, batch_size: int, rng: np.random.Generator, groups: np.ndarray | None = None) -> list[np.ndarray]:
    """Minibatches of ``range(n)`` in a random order; with ``groups``, every minibatch holds one group only
    (``batching: per-patient``). Batches of one spot are dropped (a contrastive loss needs two)."""
    if groups is None:
        order = rng.permutation(n)
        out = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    else:
        out = []
        for g in np.unique(groups):
            members = rng.permutation(np.flatnonzero(groups == g))
            out += [members[i:i + batch_size] for i in range(0, len(members), batch_size)]
        out = [out[i] for i in rng.permutation(len(out))]
    return [b for b in out if len(b) > 1]


def build_cached_module(cfg: ContrastiveConfig, cache: FeatureCache, gene_dim: int, n_patients: int,
                        class_weights: torch.Tensor | None) -> ContrastiveModule:
    """The untrained module on cached features: the trunk's tail (``partial``) or nothing (``frozen``) as its backbone."""
    torch.manual_seed(cfg.seed)
    tail: nn.Module | None = None
    if cfg.trunk == "partial":
        model, _ = build_image_encoder(cfg.backbone, cfg.init, img_size=None)
        _, tail = split_trunk(model, cfg.trunk_blocks, cfg.backbone)
    backbone = tail if tail is not None else nn.Identity()
    with torch.no_grad():
        backbone.eval()
        feature_dim = int(backbone(torch.from_numpy(np.asarray(cache.features[0, :1], dtype=np.float32))).shape[-1])
    torch.manual_seed(cfg.seed)  # the heads' initialisation depends on the seed only
    return ContrastiveModule(backbone, feature_dim, gene_dim, get_loss(cfg.loss, **cfg.loss_kwargs), embed_dim=cfg.embed_dim,
                             dropout=cfg.dropout, temperature=cfg.temperature, learn_temperature=cfg.learn_temperature, lr=cfg.lr,
                             weight_decay=cfg.weight_decay, freeze_backbone=tail is None, max_epochs=cfg.epochs, seed=cfg.seed,
                             objective=cfg.objective, class_weights=class_weights, adversary_weight=cfg.adversary_weight,
                             n_patients=n_patients)


def train_on_features(cfg: ContrastiveConfig, cache: FeatureCache, obs_names: list[str], latents: np.ndarray, labels: np.ndarray,
                      patients: np.ndarray, out_dir: str | PathLike, progress: bool = True) -> ContrastiveModule:
    """Train on the cached features of the training spots ``obs_names``; ``labels`` are class ids (−1: none) and
    ``patients`` patient ids, both aligned with ``obs_names``. Returns the trained module (in eval mode)."""
    out = Path(out_dir)
    rows = cache.rows(obs_names)
    x_all = torch.from_numpy(np.ascontiguousarray(cache.features[:, rows]))  # V × n × …, float16, in RAM
    z = torch.as_tensor(latents, dtype=torch.float32)
    y = torch.as_tensor(labels, dtype=torch.long)
    p = torch.as_tensor(patients, dtype=torch.long)
    weights = None
    if cfg.objective == "supervised":
        counts = np.bincount(labels[labels >= 0], minlength=int(labels.max()) + 1).astype(float)
        weights = torch.as_tensor(counts.sum() / np.maximum(counts, 1) / len(counts), dtype=torch.float32)  # class-balanced
    module = build_cached_module(cfg, cache, z.shape[1], int(p.max()) + 1 if len(p) else 1, weights)
    module.foreach = True  # many small tensors: the multi-tensor AdamW is several times faster here
    opt_cfg = module.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]
    groups = patients if cfg.batching == "per-patient" else None
    history = []
    for epoch in track(range(cfg.epochs), f"training on cached features ({cfg.objective}, {len(rows)} spots)", enabled=progress):
        rng = np.random.default_rng([cfg.seed, epoch])
        view = torch.as_tensor(rng.integers(0, cache.views, len(rows)))
        module.train()
        total, seen = 0.0, 0
        for i, b in enumerate(batches(len(rows), cfg.batch_size, rng, groups)):
            idx = torch.as_tensor(b)
            torch.default_generator.manual_seed(hash((cfg.seed, epoch, i)) % 2**62)  # dropout, keyed (the CPU generator only: cheap)
            loss = total_loss(module.compute_losses((x_all[view[idx], idx].float(), z[idx], z[idx], y[idx], p[idx])))
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, seen = total + float(loss.detach()) * len(b), seen + len(b)
        sched.step()
        history.append((epoch, total / max(seen, 1)))
    module.eval()
    _save(module, history, out)
    return module


def _save(module: ContrastiveModule, history: list[tuple[int, float]], out: Path) -> None:
    from safetensors.torch import save_model

    (out / "logs").mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "logs" / "metrics.csv", suffix=".csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["epoch", "train_loss"])
            w.writerows(history)
    with atomic_path(out / "model.safetensors", suffix=".safetensors") as tmp:
        save_model(module, str(tmp))


@torch.no_grad()
def embed_cached(module: ContrastiveModule, cache: FeatureCache, obs_names: list[str], batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """(backbone features, normalised head embedding) of ``obs_names`` from view 0 (the plain patch)."""
    rows = cache.rows(obs_names)
    module.eval()
    fs, us = [], []
    for s in range(0, len(rows), batch_size):
        x = torch.from_numpy(np.asarray(cache.features[0, rows[s:s + batch_size]], dtype=np.float32))
        f, u = module.embed_images(x)
        fs.append(f.numpy())
        us.append(u.numpy())
    return np.concatenate(fs), np.concatenate(us)
