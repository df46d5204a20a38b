"""The stage-2 Python API on a dataset: train against a fitted gene encoder (end to end, or on cached trunk
features), write image embeddings into ``obsm``."""
from __future__ import annotations

from os import PathLike
from pathlib import Path

import anndata as ad
import numpy as np

from stguide import distributed
from stguide.contrastive.cached import embed_cached, train_on_features
from stguide.contrastive.config import ContrastiveConfig
from stguide.contrastive.features import trunk_cache
from stguide.contrastive.train import extract_features, train_contrastive
from stguide.data.folds import refuse_leak
from stguide.data.model import EXCLUDED_LABELS, labelled_mask
from stguide.data.patches import PatchStore
from stguide.errors import InputError
from stguide.genes.base import GeneEncoder

OBSM_BACKBONE = "X_image_backbone"
OBSM_HEAD = "X_image_head"


def _to_obsm(adata: ad.AnnData, has: np.ndarray, key: str, f: np.ndarray) -> None:
    full = np.full((adata.n_obs, f.shape[1]), np.nan, dtype=np.float32)
    full[has] = f
    adata.obsm[key] = full


def embed_images(module, transform, store: PatchStore, adata: ad.AnnData) -> ad.AnnData:
    """Write backbone features and head embeddings of every spot with a patch into ``obsm`` (NaN rows elsewhere).

    With a frozen backbone, the head output is the representation that was trained; both are exported anyway.
    """
    names = np.asarray(adata.obs_names)
    has = store.has(names)
    for key, head in ((OBSM_BACKBONE, False), (OBSM_HEAD, True)):
        _to_obsm(adata, has, key, extract_features(module, transform, store, list(names[has]), head=head))
    return adata


def fit_image_encoder(
    cfg: ContrastiveConfig,
    adata: ad.AnnData,
    store: PatchStore,
    gene_encoder: GeneEncoder | None,
    out_dir: str | PathLike,
    *,
    train_mask: np.ndarray | None = None,
    exclude_labels: tuple[str, ...] = EXCLUDED_LABELS,
    resume: bool = False,
    progress: bool = True,
    features_dir: str | PathLike | None = None,
):
    """Train the image encoder on the spots of ``train_mask`` (default: all) that have a patch, against the frozen
    latent of ``gene_encoder`` (None only with ``objective: supervised``); return (module, transform or None,
    adata with ``obsm`` embeddings for every spot with a patch).

    ``cfg.trunk`` picks how: ``full`` trains end to end on images; ``frozen`` / ``partial`` train on the trunk
    features cached under ``features_dir`` (default ``out_dir/features``; share it between runs on one patch cache).

    The patients with no spot in ``train_mask`` are the ones the image encoder will be judged on: a gene encoder
    fitted on any of them is refused (:class:`~stguide.errors.LeakageError`), as is a setting the gene encoder
    cannot serve (``supcon_labels: scanvi`` without ``predict``, ``finetune_gene_encoder`` without ``finetune``).
    """
    names = np.asarray(adata.obs_names)
    mask = np.ones(adata.n_obs, bool) if train_mask is None else np.asarray(train_mask, bool).copy()
    patients = adata.obs["patient"].astype(str).to_numpy()
    held_out = sorted(set(patients) - set(patients[mask]))
    if gene_encoder is None:
        if cfg.objective != "supervised":
            raise InputError("config:gene_encoder", "a contrastive objective needs a gene encoder", "give a gene encoder, or objective: supervised")
    else:
        refuse_leak(gene_encoder.fitted_on.get("patients", []), held_out, f"the {gene_encoder.name} gene encoder", "this training run",
                    fix="Fit the gene encoder without the patients that are held out (stguide genes fit --exclude-patients).")
        for capability in cfg.gene_capabilities():
            gene_encoder.require(capability)
    has_patch = store.has(names)  # the feature cache below holds the store's spots (its key is the store's)
    mask &= has_patch
    if not mask.any():
        raise InputError(store.path, "no training spot has a patch", "extract patches for the dataset's sections with images")
    sub = adata[mask]
    z = gene_encoder.transform(sub) if gene_encoder is not None else np.zeros((sub.n_obs, 1), np.float32)
    labels = sub.obs["label"].astype(str).to_numpy()
    ok = labelled_mask(sub, exclude_labels)
    if cfg.loss == "supcon" and cfg.supcon_labels == "scanvi" and gene_encoder is not None and cfg.objective == "contrastive":
        labels, ok = np.asarray(gene_encoder.predict(sub)).astype(str), np.ones(len(labels), bool)
    classes = sorted(set(labels[ok]))
    y = np.array([classes.index(c) if good else -1 for c, good in zip(labels, ok, strict=True)])
    gin = gnet = None
    if cfg.finetune_gene_encoder and gene_encoder is not None:
        gin, gnet = gene_encoder.counts(sub).toarray().astype(np.float32), gene_encoder.torch_encoder()
    if cfg.shuffle_targets:  # the `shuffled` control: the same targets, no longer paired with their spots
        perm = np.random.default_rng([cfg.seed, 7]).permutation(len(z))
        z = z[perm]
        gin = None if gin is None else gin[perm]
    out = Path(out_dir)
    if cfg.trunk == "full":
        module, transform = train_contrastive(cfg, store, list(names[mask]), z, y, out, gene_inputs=gin,
                                              gene_encoder=gnet, resume=resume, progress=progress)
        if not distributed.is_main():  # under torchrun the others only trained with it (stguide.distributed)
            return module, transform, None
        return module, transform, embed_images(module, transform, store, adata.copy())
    cache = trunk_cache(cfg, store, features_dir or out / "features", progress=progress)
    pid = np.unique(patients[mask], return_inverse=True)[1]
    module = train_on_features(cfg, cache, list(names[mask]), z, y, pid, out, progress=progress)
    emb = adata.copy()
    f, u = embed_cached(module, cache, list(names[has_patch]))
    _to_obsm(emb, has_patch, OBSM_BACKBONE, f)
    _to_obsm(emb, has_patch, OBSM_HEAD, u)
    return module, None, emb
