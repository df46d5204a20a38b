"""``stguide experiment CONFIG.yaml --out DIR`` (and ``stguide demo``, a preset of it): read the data, cut the
patches, run the method matrix × leave-one-patient-out folds, write ``results.json`` and the report."""
from __future__ import annotations

import time
from dataclasses import asdict
from os import PathLike
from pathlib import Path

import anndata as ad

from stguide import distributed, timing
from stguide.contrastive.config import ContrastiveConfig
from stguide.data.model import write_dataset
from stguide.data.patches import PatchStore, extract_patches
from stguide.data.readers import read
from stguide.evaluate.config import DataConfig, ExperimentConfig
from stguide.evaluate.lopo import run_lopo
from stguide.io import write_json_atomic
from stguide.report import write_report
from stguide.report.figures import save_spot_map_data


def load_data(cfg: DataConfig, out: Path) -> ad.AnnData:
    """Read the configured dataset (the synthetic one is generated, with its images, under ``out/data/images``)."""
    options = dict(cfg.options)
    if cfg.format == "synthetic":
        options.setdefault("image_dir", str(out / "data" / "images"))
    return read(cfg.format, cfg.path, **options)


def methods_paragraph(cfg: ExperimentConfig, results: dict) -> str:
    """A plain-language account of what was fitted on what, generated from the config and the data summary."""
    d = results.get("dataset", {})
    c, g, s = cfg.contrastive, cfg.genes, cfg.genes.scvi
    proxy = d.get("label_sources", {}).get("proxy", 0)
    folds = sorted({f for m in results.get("methods", {}).values() for f in m["folds"]})
    return (
        f"Data: {d.get('n_spots', '?')} spots from {len(d.get('sections', {}))} sections of patients "
        f"{', '.join(d.get('patients', []))} ({cfg.data.format}"
        + (f", {proxy} labels are proxy labels transferred from a serial section" if proxy else "") + "). "
        f"Patches of {cfg.patches.size_um:g} µm of tissue around each spot, resized to {cfg.patches.out_px} px. "
        f"Leave-one-{cfg.lopo.fold_by} out over {len(folds)} folds ({', '.join(folds)}): in every fold, gene selection "
        f"({g.n_top_genes} highly variable genes, seurat_v3 with patient as the batch), each gene encoder, each contrastive "
        "model and each probe were fitted on the other patients' spots only; every fit's patients are recorded in the "
        "fold's leakage_audit.json, and a fold whose audit shows the held-out patient is refused. "
        f"scVI/scANVI: latent {s.n_latent}, {s.n_layers} layer(s) of {s.n_hidden}, {s.gene_likelihood} likelihood, "
        + _epochs_text(s.max_epochs, g.scanvi.max_epochs) + ", patient as the batch"
        + (", the encoder seeing the patient too" if s.encode_covariates else " (the encoder never sees it)")
        + "; scANVI saw the training patients' labels only. "
        + _targets_sentence(results) +
        f"Contrastive stage: backbone {c.backbone} with init '{c.init}' shared by every contrastive method, "
        + _trunk_sentence(c) + "projection heads "
        f"to {c.embed_dim} dimensions, symmetric InfoNCE family (loss per method), τ initialised at {c.temperature} "
        f"({'learned' if c.learn_temperature else 'fixed'}), {c.epochs} epochs, batch {c.batch_size}, AdamW lr {c.lr:g}, "
        f"{'with' if c.augment else 'without'} augmentation, seed {c.seed}. "
        f"Scoring: frozen {cfg.probe.features} features of the held-out patient's labelled spots "
        f"(excluding {', '.join(cfg.exclude_labels) or 'nothing'}); class-balanced logistic regression with C in "
        f"{list(cfg.probe.Cs)} chosen by inner cross-validation over training patients, and a cosine {cfg.probe.k}-NN"
        + (" (methods may override the probed features; see the config)" if any(m.probe for m in cfg.all_methods()) else "") + ". "
        + ("Features were centred per patient before the probes: label-free but transductive, the held-out patient's mean "
           "comes from its own unlabelled spots (recorded in leakage_audit.json). " if cfg.probe.centre == "patient" else "")
        + (f"Every cell that depends on the seed ran {cfg.lopo.seeds} seeds; " if cfg.lopo.seeds > 1 else "One seed per cell; ")
        + (f"differences from `{cfg.lopo.baseline}` are paired by fold and seed, with a bootstrap 95 % CI."
           if cfg.lopo.baseline and "methods" in results.get("comparisons", {}) else "no baseline comparison.")
    )


def _epochs_text(scvi_epochs: int | str, scanvi_epochs: int | str) -> str:
    first = "epochs by scvi-tools' rule (400 up to 20,000 training spots, fewer beyond)" if scvi_epochs == "auto" \
        else f"{scvi_epochs} epochs"
    return first + (" (scANVI +2–10 by the same rule)" if scanvi_epochs == "auto" else f" (scANVI +{scanvi_epochs})")


def _trunk_sentence(c: ContrastiveConfig) -> str:
    if c.trunk == "full":
        return "trained end to end on images; "
    what = "the whole trunk frozen (its pooled features cached)" if c.trunk == "frozen" else \
        f"the trunk frozen up to its last {c.trunk_blocks} block(s), which train on cached activations"
    return f"{what}, {c.views} cached views per patch (the plain patch and {c.views - 1} flipped/rotated/HED-jittered ones); "


def _targets_sentence(results: dict) -> str:
    t = results.get("targets", {})
    if not t:
        return ""
    return ("Gene targets on the training patients (mean over folds): " + "; ".join(
        f"{enc} iLISI {r.get('ilisi', float('nan')):.3f}, NMI {r.get('nmi', float('nan')):.3f}" for enc, r in t.items()) + ". ")


def open_run(cfg: ExperimentConfig, out: Path, progress: bool = True, adata: ad.AnnData | None = None) -> tuple[ad.AnnData, PatchStore]:
    """The run's dataset and patch store: the data read (and written as ``data/dataset.h5ad``) unless ``adata`` is
    given, the patches cut (or their cache found), and the spot maps' data saved. Under ``torchrun`` the main process
    does each step first and the others then read its caches."""
    main = distributed.is_main()
    with timing.part("read"), distributed.main_first():
        if adata is None:
            adata = load_data(cfg.data, out)
            if main:
                write_dataset(adata, out / "data" / "dataset.h5ad")
    with timing.part("patches"), distributed.main_first():
        store = extract_patches(adata, cfg.patches, out / "patches", progress=progress and main)
    if main:
        with timing.part("report"):
            save_spot_map_data(adata, out, cfg.report.thumbnail_px)
    return adata, store


def run_experiment(cfg: ExperimentConfig, out_dir: str | PathLike, progress: bool = True, command: str = "",
                   adata: ad.AnnData | None = None) -> dict:
    """Load the data, cut patches, run every (method, fold) cell (cached), write ``results.json`` and the report.

    Writes under ``out_dir``: ``data/dataset.h5ad`` (what was read, with scanpy's spatial layout), ``patches/``,
    ``folds/<fold>/<method>/`` (one cell each), ``results.json``, ``report.md``, ``report.html`` and ``figures/``.
    ``adata``: the dataset as already read (then nothing is read or written for it). Under ``torchrun``
    (:mod:`stguide.distributed`) the processes other than the main one return ``{}``.
    """
    out = Path(out_dir)
    t0 = time.perf_counter()
    with timing.recording() as seconds:
        adata, store = open_run(cfg, out, progress, adata)
        if not distributed.is_main():  # under torchrun, the other processes only join the end-to-end training
            run_lopo(cfg, adata, store, out, progress=False)
            return {}
        results = run_lopo(cfg, adata, store, out, progress)
        config = {k: v for k, v in asdict(cfg).items() if k != "executor"}  # where it ran does not change what it computed
        results.update(kind="experiment", command=command, config=config, ablation=cfg.ablation_rows(),
                       methods_paragraph=methods_paragraph(cfg, results))

        def save() -> None:
            elapsed = time.perf_counter() - t0
            results.update(runtime_s=round(elapsed, 1), timings=timing.rounded(seconds, elapsed))
            write_json_atomic(out / "results.json", results)

        save()  # the report shows the parts before it …
        with timing.part("report"):
            write_report(out)
        save()  # … and results.json then adds the report's seconds
    return results
