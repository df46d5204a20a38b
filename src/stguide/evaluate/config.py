"""The experiment's configuration: one YAML, one frozen :class:`ExperimentConfig` holding every stage's config,
checked whole when it is loaded (names, options, capabilities), before any data is read.

A YAML has these sections, all optional (docs/configuration.md documents every field)::

    data: {format: synthetic | her2st | hest | visium | anndata | h5ad, path: ..., options: {...}}
    patches: {size_um: 200, out_px: 224, outside: pad, stain_norm: null}       # PatchConfig
    genes: {n_top_genes: 2000, seed: 0, pca: {...}, harmony: {...}, scvi: {...}, scanvi: {...}}  # GeneConfig
    contrastive: {...}     # ContrastiveConfig: the backbone and init shared by every contrastive method
    probe: {features: backbone, Cs: [...], k: 15}                               # ProbeConfig
    lopo: {folds: null, fold_by: patient}                                       # LopoConfig
    exclude_labels: [undetermined]   # labels that do not count: not scored, not a probe's nor scANVI's label
    methods: [...]         # default: DEFAULT_METHODS; each {name, gene_encoder, loss, init, backbone, loss_kwargs, contrastive}
    ablation: true         # add the loss ablation on the scANVI gene side
    report: {image_audit: true, umap: true, umap_fold: null, umap_max_spots: 5000, spot_map_method: null, thumbnail_px: 900}
    executor: {kind: serial, workers: null, partition: null, time_min: null, gpus: null, ...}  # ExecutorConfig: where
                           # the jobs run (not what they compute: no cache key and no result reads it)

The demo is a preset of this file (``stguide/presets/demo.yaml``), run by the same driver.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from os import PathLike
from typing import Any, ClassVar, Literal

from stguide.config import ConfigError, FromDict, build_dataclass, check_name, load_yaml
from stguide.contrastive.config import ContrastiveConfig
from stguide.contrastive.losses import LOSSES
from stguide.data.model import EXCLUDED_LABELS
from stguide.data.patches import PatchConfig
from stguide.data.readers import check_read
from stguide.errors import InputError
from stguide.evaluate.probes import ProbeConfig
from stguide.executors import ExecutorConfig
from stguide.genes import GeneConfig, encoder_class

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+/-]*")
_SEED_DIR = re.compile(r"seed\d+")


@dataclass(frozen=True)
class Method:
    """One row of the comparison: ``gene_encoder`` and ``loss`` (both None: no gene target; the backbone at its
    ``init`` is scored as is, or, with ``contrastive: {objective: supervised}``, a head trained on the training
    labels), the image ``init`` and ``backbone`` (None: the contrastive config's), extra ``loss_kwargs``,
    ``contrastive`` (any other :class:`ContrastiveConfig` field for this method only, e.g. ``{supcon_labels: scanvi}``
    or ``{trunk: partial}``), ``probe`` (any :class:`ProbeConfig` field for this method only, e.g.
    ``{features: both}``) and ``seeds`` (this method's number of seeds, when it should differ from ``lopo.seeds``,
    e.g. for a costly arm)."""

    name: str
    gene_encoder: str | None = None
    loss: str | None = None
    init: str | None = None
    backbone: str | None = None
    loss_kwargs: dict = field(default_factory=dict)
    contrastive: dict = field(default_factory=dict)
    probe: dict = field(default_factory=dict)
    seeds: int | None = None

    def __post_init__(self) -> None:
        parts = self.name.split("/")
        if not _NAME.fullmatch(self.name) or any(not p or p == ".." or _SEED_DIR.fullmatch(p) for p in parts):
            raise ConfigError("name", f"method name {self.name!r} cannot name its cells' folder",
                              "use letters, digits and _ . + - (a / nests an arm under its method, e.g. ours-scvi/partial; "
                              "no part may be 'seed<k>')")
        if self.seeds is not None and self.seeds < 1:
            raise ConfigError("seeds", f"must be at least 1, got {self.seeds}", "remove it (the experiment's lopo.seeds) or set a count")
        if (self.gene_encoder is None) != (self.loss is None):
            missing = "loss" if self.loss is None else "gene_encoder"
            raise ConfigError(missing, f"method {self.name!r} has a {'gene_encoder' if missing == 'loss' else 'loss'} but no {missing}",
                              "give both (a contrastive method) or neither (the backbone is scored as is)")
        if self.gene_encoder is not None:
            encoder_class(self.gene_encoder)
        if self.loss is not None:
            check_name("loss", self.loss, LOSSES, "loss")

    @property
    def contrastive_stage(self) -> bool:
        """Whether this method trains an image encoder against a gene encoder."""
        return self.gene_encoder is not None

    def probe_config(self, base: ProbeConfig) -> ProbeConfig:
        """The probe settings of this method (the experiment's, with this method's ``probe`` on top)."""
        return ProbeConfig.from_dict({**asdict(base), **self.probe}, f"config:methods.{self.name}.probe") if self.probe else base

    def config(self, base: ContrastiveConfig) -> ContrastiveConfig:
        """The contrastive settings this method trains (and, without a gene encoder, builds its backbone) with."""
        over: dict[str, Any] = {k: v for k, v in (("init", self.init), ("backbone", self.backbone)) if v is not None}
        if self.loss:
            over.update(loss=self.loss, loss_kwargs={**base.loss_kwargs, **self.loss_kwargs})
        return ContrastiveConfig.from_dict({**asdict(base), **self.contrastive, **over}, f"config:methods.{self.name}")


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
    """``format``: which reader (``stguide.data.readers.READERS``); ``path``: its input (relative paths are
    relative to the working directory); ``options``: keyword arguments of that reader, e.g. ``{labels_dir: ...}``
    for ``hest`` or ``{n_patients: 3}`` for ``synthetic``. Checked when loaded, before anything is read."""

    format: str = "synthetic"
    path: str | None = None
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_read(self.format, self.path, self.options)


@dataclass(frozen=True)
class LopoConfig(FromDict):
    """Who is held out, and how often. ``folds``: the held-out patients (default: every labelled patient; unlabelled
    patients train every fold). ``fold_by``: ``patient``; ``section`` exists to show that the leakage audit refuses
    section-level folds. ``seeds``: how many seeds each cell runs (the contrastive seed, +1, +2, …; each changes the
    head initialisation, the views drawn and the batch order; a method that neither trains nor draws a random
    initialisation runs once). ``baseline``: the method every other is compared with, per fold and seed, with a
    bootstrap 95 % CI (``results.json: comparisons``; null: none). ``contrasts``: further pairs ``[a, b]`` compared
    the same way (a − b), e.g. ``[ours-scvi, clip]`` (``results.json: contrasts``)."""

    section: ClassVar[str] = "lopo"

    folds: tuple[str, ...] | None = None
    fold_by: Literal["patient", "section"] = "patient"
    seeds: int = 1
    baseline: str | None = "imagenet"
    contrasts: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.seeds < 1:
            raise ConfigError("seeds", f"must be at least 1, got {self.seeds}", "set seeds, e.g. 5 for real data")


@dataclass(frozen=True)
class ReportConfig:
    """What is described and drawn. ``image_audit``: the scib-metrics batch/biology audit and the patient-prediction
    AUC of each cell's image features (the first seed's, when there are several); ``target_audit``: the same audit of each fold's gene targets on its training
    patients (was the target batch-agnostic at all?); ``umap``: UMAPs of the image features of ``umap_fold`` (default: the first fold),
    of at most ``umap_max_spots`` spots drawn at random (seeded; UMAP's cost grows faster than the spots, and a figure
    shows no more);
    ``spot_map_method``: the method whose predictions are drawn over the H&E thumbnails (default: the best by
    mean balanced accuracy); ``thumbnail_px``: the longer side of those thumbnails."""

    image_audit: bool = True
    target_audit: bool = True
    umap: bool = True
    umap_fold: str | None = None
    umap_max_spots: int = 5000
    spot_map_method: str | None = None
    thumbnail_px: int = 900


@dataclass(frozen=True)
class ExperimentConfig:
    """The whole experiment (see the module docstring and docs/configuration.md)."""

    data: DataConfig = DataConfig()
    patches: PatchConfig = PatchConfig()
    genes: GeneConfig = GeneConfig()
    contrastive: ContrastiveConfig = ContrastiveConfig()
    probe: ProbeConfig = ProbeConfig()
    lopo: LopoConfig = LopoConfig()
    exclude_labels: tuple[str, ...] = EXCLUDED_LABELS
    methods: tuple[Method, ...] = DEFAULT_METHODS
    ablation: bool = True
    report: ReportConfig = ReportConfig()
    executor: ExecutorConfig = ExecutorConfig()

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for m in self.all_methods():
            if m.name in seen:
                raise ConfigError(f"methods.{m.name}", "two methods share this name", "give every method its own name")
            seen.add(m.name)
            ccfg = m.config(self.contrastive)  # every method's own settings, checked whole
            m.probe_config(self.probe)
            if m.gene_encoder is None and ccfg.objective == "contrastive" and ccfg.shuffle_targets:
                raise ConfigError(f"methods.{m.name}", "this method sets stage-2 options but has no gene target to train against",
                                  "give it a gene_encoder and a loss, or objective: supervised")
            if m.gene_encoder is not None:
                for capability in ccfg.gene_capabilities():
                    try:
                        encoder_class(m.gene_encoder).require(capability)
                    except ConfigError as e:
                        raise InputError(f"config:methods.{m.name}.{e.key}", e.problem, e.fix) from None

        for i, (a, b) in enumerate(self.lopo.contrasts):
            for name in (a, b):
                if name not in seen:
                    raise ConfigError(f"lopo.contrasts[{i}]", f"{name!r} is not a method of this experiment", f"use names among {sorted(seen)}")

    def all_methods(self) -> tuple[Method, ...]:
        """The configured methods plus, with ``ablation``, the scANVI loss ablation."""
        return self.methods + (tuple(m for m in ABLATION if m.name not in {x.name for x in self.methods}) if self.ablation else ())

    def ablation_rows(self) -> list[str]:
        """The methods of the loss ablation table that this experiment runs."""
        names = {m.name for m in self.all_methods()}
        return [r for r in ABLATION_ROWS if r in names] if self.ablation else []


def load_config(path: str | PathLike, changes: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read and validate an experiment YAML (with ``changes``, a mapping of the same shape, on top); unknown keys,
    wrong types and unknown names are errors naming the file and the key."""
    doc = merge(load_yaml(path), changes or {})
    try:
        return build_dataclass(ExperimentConfig, doc, "config:")
    except InputError as e:
        raise InputError(f"{path} ({e.file})", e.problem, e.fix) from None


PRESETS = ("demo", "demo-quick")


def preset_path(name: str) -> Any:
    """The packaged YAML of a preset (``demo``, ``demo-quick``)."""
    if name not in PRESETS:
        raise InputError(f"preset:{name}", "unknown preset", f"use one of {list(PRESETS)}")
    return resources.files("stguide") / "presets" / f"{name}.yaml"


def with_seed(seed: int) -> dict[str, Any]:
    """Changes that set every seed of an experiment on the synthetic data: the data's, stage 1's and stage 2's."""
    return {"data": {"options": {"seed": seed}}, "genes": {"seed": seed}, "contrastive": {"seed": seed}}


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied, nested sections merged key by key (a new dict; neither input changes)."""
    out = dict(base)
    for k, v in changes.items():
        out[k] = merge(out.get(k) or {}, v) if isinstance(v, dict) and isinstance(out.get(k, {}), dict) else v
    return out
