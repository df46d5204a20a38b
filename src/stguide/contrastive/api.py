"""The stage-2 Python API on a dataset: train against a fitted gene encoder, write image embeddings into ``obsm``."""
from __future__ import annotations

from os import PathLike
from pathlib import Path

import anndata as ad
import numpy as np

from stguide.contrastive.config import ContrastiveConfig
from stguide.contrastive.train import extract_features, train_contrastive
from stguide.data.folds import refuse_leak
from stguide.data.model import EXCLUDED_LABELS, labelled_mask
from stguide.data.patches import PatchStore
from stguide.errors import InputError
from stguide.genes.base import GeneEncoder

OBSM_BACKBONE = "X_image_backbone"
OBSM_HEAD = "X_image_head"


def embed_images(module, transform, store: PatchStore, adata: ad.AnnData) -> ad.AnnData:
    """Write backbone features and head embeddings of every spot with a patch into ``obsm`` (NaN rows elsewhere).

    With a frozen backbone, the head output is the representation that was trained; both are exported anyway.
    """
    names = np.asarray(adata.obs_names)
    has = np.isin(names, store.obs_names)
    for key, head in ((OBSM_BACKBONE, False), (OBSM_HEAD, True)):
        f = extract_features(module, transform, store, list(names[has]), head=head)
        full = np.full((adata.n_obs, f.shape[1]), np.nan, dtype=np.float32)
        full[has] = f
        adata.obsm[key] = full
    return adata


def fit_image_encoder(
    cfg: ContrastiveConfig,
    adata: ad.AnnData,
    store: PatchStore,
    gene_encoder: GeneEncoder,
    out_dir: str | PathLike,
    *,
    train_mask: np.ndarray | None = None,
    exclude_labels: tuple[str, ...] = EXCLUDED_LABELS,
    resume: bool = False,
    progress: bool = True,
):
    """Train the image encoder on the spots of ``train_mask`` (default: all) that have a patch, against the frozen
    latent of ``gene_encoder``; return (module, transform, adata with ``obsm`` embeddings for every spot).

    The patients with no spot in ``train_mask`` are the ones the image encoder will be judged on: a gene encoder
    fitted on any of them is refused (:class:`~stguide.errors.LeakageError`), as is a setting the gene encoder
    cannot serve (``supcon_labels: scanvi`` without ``predict``, ``finetune_gene_encoder`` without ``finetune``).
    """
    names = np.asarray(adata.obs_names)
    mask = np.ones(adata.n_obs, bool) if train_mask is None else np.asarray(train_mask, bool).copy()
    patients = adata.obs["patient"].astype(str).to_numpy()
    held_out = sorted(set(patients) - set(patients[mask]))
    refuse_leak(gene_encoder.fitted_on.get("patients", []), held_out, f"the {gene_encoder.name} gene encoder", "this training run",
                fix="Fit the gene encoder without the patients that are held out (stguide genes fit --exclude-patients).")
    for capability in cfg.gene_capabilities():
        gene_encoder.require(capability)
    mask &= np.isin(names, store.obs_names)
    if not mask.any():
        raise InputError(store.path, "no training spot has a patch", "extract patches for the dataset's sections with images")
    sub = adata[mask]
    z = gene_encoder.transform(sub)
    labels = sub.obs["label"].astype(str).to_numpy()
    ok = labelled_mask(sub, exclude_labels)
    if cfg.loss == "supcon" and cfg.supcon_labels == "scanvi":
        labels, ok = np.asarray(gene_encoder.predict(sub)).astype(str), np.ones(len(labels), bool)
    classes = sorted(set(labels[ok]))
    y = np.array([classes.index(c) if good else -1 for c, good in zip(labels, ok, strict=True)])
    gin = gnet = None
    if cfg.finetune_gene_encoder:
        gin, gnet = gene_encoder.counts(sub).toarray().astype(np.float32), gene_encoder.torch_encoder()
    module, transform = train_contrastive(cfg, store, list(names[mask]), z, y, Path(out_dir), gene_inputs=gin,
                                          gene_encoder=gnet, resume=resume, progress=progress)
    return module, transform, embed_images(module, transform, store, adata.copy())
