"""Leave-one-patient-out: for each fold, fit every component on the training patients only, then score frozen
image features of the held-out patient. Each fold writes ``leakage_audit.json`` and refuses to score a fold whose
audit shows the held-out patient in any fit."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import torch

from stguide.contrastive.encoders import build_image_encoder
from stguide.contrastive.api import OBSM_BACKBONE, OBSM_HEAD, fit_image_encoder
from stguide.contrastive.train import ContrastiveConfig, extract_features
from stguide.data.folds import Fold, assert_no_leak, lopo_folds
from stguide.data.model import labelled_mask
from stguide.data.patches import PatchStore
from stguide.errors import InputError
from stguide.evaluate.metrics import summarise
from stguide.evaluate.probes import ProbeConfig, score_probes
from stguide.genes.base import GeneConfig
from stguide.genes.registry import get_encoder
from stguide.io import atomic_path, write_json_atomic


@dataclass(frozen=True)
class Method:
    """One row of the comparison: ``gene_encoder`` and ``loss`` (both None: no contrastive stage, the backbone at
    its ``init`` is scored as is), and the image ``init`` (None: the contrastive config's)."""

    name: str
    gene_encoder: str | None = None
    loss: str | None = None
    init: str | None = None
    backbone: str | None = None
    loss_kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LopoConfig:
    """What a LOPO run fits and scores. ``features``: ``backbone`` (default) or ``head`` output is probed (the head
    always, when the contrastive config freezes the backbone).
    ``exclude_labels``: never scored nor used to train probes. ``folds``: held-out patients (default: every
    labelled patient)."""

    methods: tuple[Method, ...]
    genes: GeneConfig = GeneConfig()
    contrastive: ContrastiveConfig = ContrastiveConfig()
    probe: ProbeConfig = ProbeConfig()
    features: str = "backbone"
    exclude_labels: tuple[str, ...] = ("undetermined",)
    folds: tuple[str, ...] | None = None


def _audit(adata: ad.AnnData, fold: Fold, masks: dict[str, np.ndarray]) -> dict[str, Any]:
    """Record, and check, which patients every fitted component saw."""
    return {what: assert_no_leak(adata, fold, m, what) for what, m in masks.items()}


def run_fold(cfg: LopoConfig, adata: ad.AnnData, store: PatchStore, fold: Fold, out: Path, progress: bool = True) -> dict[str, dict]:
    """Fit and score every method on one fold; returns {method: metrics}."""
    has_patch = np.isin(np.asarray(adata.obs_names), store.obs_names)
    lab = labelled_mask(adata, cfg.exclude_labels)
    labels = adata.obs["label"].astype(str).to_numpy()
    patients = adata.obs["patient"].astype(str).to_numpy()
    probe_train = fold.train & lab & has_patch
    test = fold.test & lab & has_patch
    if not test.any():
        raise InputError("config:folds", f"held-out patient {fold.held_out!r} has no labelled spot with an image patch",
                         "give the patient's labelled sections an image, or hold out another patient")
    names = np.asarray(adata.obs_names)
    encoders: dict[str, Any] = {}
    results = {}
    for m in cfg.methods:
        mdir = out / m.name
        masks: dict[str, np.ndarray] = {}
        ccfg = cfg.contrastive
        overrides = {k: v for k, v in (("init", m.init), ("backbone", m.backbone)) if v is not None}
        if m.loss:
            overrides.update(loss=m.loss, loss_kwargs={**ccfg.loss_kwargs, **m.loss_kwargs})
        ccfg = ContrastiveConfig(**{**asdict(ccfg), **overrides})
        scored = probe_train | test
        if m.gene_encoder is None:
            torch.manual_seed(ccfg.seed)  # a random init must not depend on what ran before
            backbone, transform = build_image_encoder(ccfg.backbone, ccfg.init, img_size=int(store.meta["out_px"]))
            feats = extract_features(backbone, transform, store, list(names[scored]))
        else:
            if m.gene_encoder not in encoders:
                enc = get_encoder(m.gene_encoder, cfg.genes)
                enc.fit(adata[fold.train], batch_key="patient", labels_key="label", progress=progress)
                enc.save(out / "genes" / m.gene_encoder)
                encoders[m.gene_encoder] = enc
            masks["gene_selection"] = masks["gene_encoder"] = fold.train
            masks["contrastive"] = fold.train & has_patch
            _, _, emb = fit_image_encoder(ccfg, adata, store, encoders[m.gene_encoder], mdir, train_mask=fold.train,
                                          exclude_labels=cfg.exclude_labels, progress=progress)
            use_head = cfg.features == "head" or ccfg.freeze_backbone  # a frozen backbone learnt nothing: probe the head
            feats = emb.obsm[OBSM_HEAD if use_head else OBSM_BACKBONE][scored]
        masks["probe"] = probe_train
        audit = _audit(adata, fold, masks)
        audit["held_out"] = {"patient": fold.held_out, "n_scored_spots": int(test.sum())}
        write_json_atomic(mdir / "leakage_audit.json", audit)
        idx = {n: i for i, n in enumerate(names[scored])}
        xtr = feats[[idx[n] for n in names[probe_train]]]
        xte = feats[[idx[n] for n in names[test]]]
        ytr, yte = labels[probe_train], labels[test]
        metrics, pred = score_probes(xtr, ytr, patients[probe_train], xte, yte, cfg.probe)
        write_json_atomic(mdir / "metrics.json", metrics)
        with atomic_path(mdir / "predictions.npz", suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, obs_names=names[test], y_true=yte, y_pred=pred)
        results[m.name] = metrics
    return results


def run_lopo(cfg: LopoConfig, adata: ad.AnnData, store: PatchStore, out_dir: str | PathLike, progress: bool = True,
             extra: dict | None = None) -> dict:
    """Run every method on every fold; write ``results.json`` and return it."""
    out = Path(out_dir)
    folds = lopo_folds(adata, cfg.folds, cfg.exclude_labels)
    per: dict[str, dict[str, dict]] = {m.name: {} for m in cfg.methods}
    for i, fold in enumerate(folds):
        if progress:
            from rich.console import Console

            Console(stderr=True).print(f"[bold]fold {i + 1}/{len(folds)}[/]: holding out patient {fold.held_out}")
        res = run_fold(cfg, adata, store, fold, out / "folds" / fold.held_out, progress)
        for name, metr in res.items():
            per[name][fold.held_out] = metr
    results = {"methods": {}, "config": _jsonable(asdict(cfg)), "dataset": dataset_summary(adata)}
    for name, folds_m in per.items():
        mean, sd = summarise(folds_m)
        results["methods"][name] = {"folds": folds_m, "mean": mean, "sd": sd}
    if extra:
        results.update(extra)
    write_json_atomic(out / "results.json", results)
    return results


def _jsonable(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_jsonable(v) for v in d]
    return d


def dataset_summary(adata: ad.AnnData) -> dict:
    """What was read: patients, sections, spots, labelled spots per patient and label source, genes kept/dropped."""
    obs = adata.obs
    return {
        "n_spots": int(adata.n_obs), "n_genes": int(adata.n_vars),
        "patients": sorted(map(str, obs["patient"].unique())),
        "sections": {s: {"patient": str(v["patient"]), "has_image": bool(v["has_image"]), "um_per_px": float(v["um_per_px"])}
                     for s, v in adata.uns["sections"].items()},
        "labelled_per_patient": {str(p): int(n) for p, n in obs.groupby("patient", observed=True)["label"].count().items()},
        "label_sources": {str(k): int(v) for k, v in obs["label_source"].value_counts().items()},
        "classes": [str(c) for c in obs["label"].cat.categories],
        "genes": dict(adata.uns.get("genes", {})),
        "source": dict(adata.uns.get("source", {})),
    }
