"""``stguide experiment CONFIG.yaml --out DIR``: the method matrix × leave-one-patient-out folds, then the report.

A config is YAML with the sections below (all optional; docs/configuration.md documents every field)::

    data: {format: synthetic | her2st | hest | visium | anndata | h5ad, path: ..., options: {...}}
    patches: {size_um: 100, out_px: 64, outside: pad, stain_norm: null}
    genes: {...}          # GeneConfig
    contrastive: {...}    # ContrastiveConfig: the backbone and init shared by every contrastive method
    probe: {...}          # ProbeConfig
    methods: [...]        # default: DEFAULT_METHODS; each {name, gene_encoder, loss, init, backbone, loss_kwargs, contrastive}
    ablation: true        # add the loss ablation on the scANVI gene side
    features: backbone, exclude_labels: [undetermined], folds: null, fold_by: patient, image_audit: true
    report: {umap: true, umap_fold: null, spot_map_method: null, thumbnail_px: 900}
"""
from __future__ import annotations

import inspect
import time
from dataclasses import asdict, dataclass, field
from os import PathLike
from pathlib import Path
from typing import Literal

import anndata as ad

from stguide.config import build_dataclass
from stguide.contrastive.train import ContrastiveConfig
from stguide.errors import InputError
from stguide.evaluate.lopo import LopoConfig, Method, _jsonable, run_lopo
from stguide.evaluate.probes import ProbeConfig
from stguide.genes.base import GeneConfig

DEFAULT_METHODS = (
    Method("random"),
    Method("imagenet", init="effnet-lite0", backbone="tf_efficientnet_lite0"),
    Method("clip", gene_encoder="logexpr", loss="clip"),
    Method("bleep", gene_encoder="harmony", loss="bleep"),
    Method("ours-scvi", gene_encoder="scvi", loss="inter-soft"),
    Method("ours-scanvi", gene_encoder="scanvi", loss="inter-soft"),
)
# The loss ablation on the scANVI gene side; its inter-soft arm is ``ours-scanvi`` itself.
ABLATION = (
    Method("scanvi+clip", gene_encoder="scanvi", loss="clip"),
    Method("scanvi+gene-soft", gene_encoder="scanvi", loss="gene-soft"),
    Method("scanvi+supcon", gene_encoder="scanvi", loss="supcon", contrastive={"supcon_labels": "scanvi"}),
)
ABLATION_ROWS = ("scanvi+clip", "scanvi+gene-soft", "ours-scanvi", "scanvi+supcon")


@dataclass(frozen=True)
class DataConfig:
    """``format``: which reader; ``path``: its input (relative paths are relative to the working directory);
    ``options``: keyword arguments of that reader (``stguide.data.read_*`` / ``make_synthetic``), e.g.
    ``{labels_dir: ...}`` for ``hest`` or ``{n_patients: 3}`` for ``synthetic``."""

    format: Literal["synthetic", "her2st", "hest", "visium", "anndata", "h5ad"] = "synthetic"
    path: str | None = None
    options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class PatchSettings:
    """Patches cut around each spot: ``size_um`` of tissue (physical size, never pixels) resized to ``out_px``;
    ``outside``: ``pad`` (and flag) or ``raise`` at image borders; ``stain_norm``: null or ``macenko``."""

    size_um: float = 100.0
    out_px: int = 64
    outside: Literal["pad", "raise"] = "pad"
    stain_norm: str | None = None


@dataclass(frozen=True)
class ReportConfig:
    """``umap``: draw UMAPs of the image features of ``umap_fold`` (default: the first fold); ``spot_map_method``:
    the method whose predictions are drawn over the H&E thumbnails (default: the best by mean balanced accuracy);
    ``thumbnail_px``: the longer side of those thumbnails."""

    umap: bool = True
    umap_fold: str | None = None
    spot_map_method: str | None = None
    thumbnail_px: int = 900


@dataclass(frozen=True)
class ExperimentConfig:
    """The whole experiment (see the module docstring and docs/configuration.md)."""

    data: DataConfig = DataConfig()
    patches: PatchSettings = PatchSettings()
    genes: GeneConfig = GeneConfig()
    contrastive: ContrastiveConfig = ContrastiveConfig()
    probe: ProbeConfig = ProbeConfig()
    methods: tuple[Method, ...] = DEFAULT_METHODS
    ablation: bool = True
    features: Literal["backbone", "head"] = "backbone"
    exclude_labels: tuple[str, ...] = ("undetermined",)
    folds: tuple[str, ...] | None = None
    fold_by: Literal["patient", "section"] = "patient"
    image_audit: bool = True
    report: ReportConfig = ReportConfig()

    def all_methods(self) -> tuple[Method, ...]:
        """The configured methods plus, with ``ablation``, the scANVI loss ablation (names must be unique)."""
        methods = self.methods + (tuple(m for m in ABLATION if m.name not in {x.name for x in self.methods}) if self.ablation else ())
        seen: set[str] = set()
        for m in methods:
            if m.name in seen:
                raise InputError(f"config:methods.{m.name}", "two methods share this name", "give every method its own name")
            seen.add(m.name)
        return methods

    def lopo(self) -> LopoConfig:
        return LopoConfig(methods=self.all_methods(), genes=self.genes, contrastive=self.contrastive, probe=self.probe,
                          features=self.features, exclude_labels=self.exclude_labels, folds=self.folds,
                          fold_by=self.fold_by, image_audit=self.image_audit, umap=self.report.umap,
                          umap_fold=self.report.umap_fold)


def load_config(path: str | PathLike) -> ExperimentConfig:
    """Read and validate an experiment YAML; unknown keys and wrong types are errors naming the key."""
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise InputError(path, f"cannot be read as YAML ({e})", "fix the file") from None
    if not isinstance(doc, dict):
        raise InputError(path, "the top level is not a mapping", "write sections such as 'data:', 'methods:'")
    try:
        return build_dataclass(ExperimentConfig, doc, "config")
    except InputError as e:
        raise InputError(f"{path} ({e.file})", e.problem, e.fix) from None


def load_data(cfg: DataConfig, out: Path) -> ad.AnnData:
    """Read the configured dataset (the synthetic one is generated, with its images, under ``out/data``)."""
    from stguide import data

    readers = {"her2st": data.read_her2st, "hest": data.read_hest, "visium": data.read_visium, "anndata": data.read_anndata,
               "h5ad": data.read_dataset, "synthetic": data.make_synthetic}
    fn = readers[cfg.format]
    params = inspect.signature(fn).parameters
    opts = dict(cfg.options)
    if cfg.format == "synthetic":
        opts.setdefault("image_dir", str(out / "data" / "images"))
    elif not cfg.path:
        raise InputError("config:data.path", f"format {cfg.format!r} needs a path", "set data.path to the dataset")
    unknown = [k for k in opts if k not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values())]
    if unknown:
        raise InputError(f"config:data.options.{unknown[0]}", f"{cfg.format} reader has no option {unknown[0]!r}",
                         f"known: {[p for p in params if p not in ('root', 'path', 'h5ad', 'outs_dir')]}")
    return fn(**opts) if cfg.format == "synthetic" else fn(cfg.path, **opts)


def methods_paragraph(cfg: ExperimentConfig, results: dict) -> str:
    """A plain-language account of what was fitted on what, generated from the config and the data summary."""
    d = results.get("dataset", {})
    c, g = cfg.contrastive, cfg.genes
    proxy = d.get("label_sources", {}).get("proxy", 0)
    folds = sorted({f for m in results.get("methods", {}).values() for f in m["folds"]})
    return (
        f"Data: {d.get('n_spots', '?')} spots from {len(d.get('sections', {}))} sections of patients "
        f"{', '.join(d.get('patients', []))} ({cfg.data.format}"
        + (f", {proxy} labels are proxy labels transferred from a serial section" if proxy else "") + "). "
        f"Patches of {cfg.patches.size_um:g} µm of tissue around each spot, resized to {cfg.patches.out_px} px. "
        f"Leave-one-{cfg.fold_by} out over {len(folds)} folds ({', '.join(folds)}): in every fold, gene selection "
        f"({g.n_top_genes} highly variable genes, seurat_v3 with patient as the batch), each gene encoder, each contrastive "
        "model and each probe were fitted on the other patients' spots only; every fit's patients are recorded in the "
        "fold's leakage_audit.json, and a fold whose audit shows the held-out patient is refused. "
        f"scVI/scANVI: latent {g.n_latent}, {g.n_layers} layer(s) of {g.n_hidden}, {g.gene_likelihood} likelihood, "
        f"{g.max_epochs} epochs (scANVI +{g.scanvi_epochs}), patient as the batch; scANVI saw the training patients' labels only. "
        f"Contrastive stage: backbone {c.backbone} with init '{c.init}' shared by every contrastive method, projection heads "
        f"to {c.embed_dim} dimensions, symmetric InfoNCE family (loss per method), τ initialised at {c.temperature} "
        f"({'learned' if c.learn_temperature else 'fixed'}), {c.epochs} epochs, batch {c.batch_size}, AdamW lr {c.lr:g}, "
        f"{'with' if c.augment else 'without'} augmentation, seed {c.seed}. "
        f"Scoring: frozen {cfg.features} features of the held-out patient's labelled spots "
        f"(excluding {', '.join(cfg.exclude_labels) or 'nothing'}); class-balanced logistic regression with C in "
        f"{list(cfg.probe.Cs)} chosen by inner cross-validation over training patients, and a cosine {cfg.probe.k}-NN."
    )


def run_experiment(cfg: ExperimentConfig, out_dir: str | PathLike, progress: bool = True, command: str = "") -> dict:
    """Load the data, cut patches, run every (method, fold) cell (cached), write ``results.json`` and the report."""
    from stguide.data.patches import extract_patches
    from stguide.io import write_json_atomic
    from stguide.report import write_report

    out = Path(out_dir)
    t0 = time.time()
    lopo = cfg.lopo()
    for m in lopo.methods:
        m.config(cfg.contrastive)  # validates every method's settings before any work
    adata = load_data(cfg.data, out)
    p = cfg.patches
    store = extract_patches(adata, size_um=p.size_um, out_px=p.out_px, cache_dir=out / "patches", outside=p.outside,
                            stain_norm=p.stain_norm, progress=progress)
    from stguide.report.figures import save_spot_map_data

    save_spot_map_data(adata, out, cfg.report.thumbnail_px)
    results = run_lopo(lopo, adata, store, out, progress,
                       extra={"command": command, "experiment": _jsonable(asdict(cfg))})
    results["methods_paragraph"] = methods_paragraph(cfg, results)
    results["runtime_s"] = round(time.time() - t0, 1)
    write_json_atomic(out / "results.json", results)
    write_report(out)
    return results
