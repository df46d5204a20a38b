"""Stage-1 settings: what every gene encoder shares, and one section per encoder family.

A family's options are read only by the encoders of that family (``GeneEncoder.reads``), so the cache key of a
fitted encoder holds only what it reads: changing ``scvi.max_epochs`` never refits ``pca``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from stguide.config import ConfigError, FromDict


@dataclass(frozen=True)
class PcaOptions:
    """``pca:`` (read by ``pca`` and ``harmony``). ``n_pcs``: components, fitted on the training spots."""

    n_pcs: int = 50


@dataclass(frozen=True)
class HarmonyOptions:
    """``harmony:``. ``query``: how spots of a patient outside the fit are embedded: ``symphony`` (reference
    mapping, the held-out patient's unlabelled expression gives its own offset) or ``pca`` (uncorrected).
    ``sigma`` / ``lamb``: Harmony's soft-clustering width and ridge penalty (harmonypy's defaults and names)."""

    query: Literal["symphony", "pca"] = "symphony"
    sigma: float = 0.1
    lamb: float = 1.0


@dataclass(frozen=True)
class ScviOptions:
    """``scvi:`` (read by ``scvi``, ``scanvi`` and ``sysvi``: the scvi-tools family).

    ``n_latent``, ``n_hidden``, ``n_layers``, ``dropout_rate``, ``gene_likelihood``: the network (scvi-tools'
    defaults except ``n_latent``; SysVI uses at least 2 layers and models log-expression, so it ignores the
    likelihood). ``max_epochs``: epochs (fixed, so runs are comparable). ``early_stopping``: on a 10 % validation
    split of the training spots. ``batch_size``: the minibatch (nudged up so that no minibatch holds a single spot,
    which BatchNorm cannot train on). ``trainer_kwargs``: passed to scvi-tools' Lightning trainer unchanged.
    """

    n_latent: int = 16
    n_hidden: int = 128
    n_layers: int = 1
    dropout_rate: float = 0.1
    gene_likelihood: Literal["zinb", "nb", "poisson"] = "zinb"
    max_epochs: int = 200
    early_stopping: bool = False
    batch_size: int = 128
    trainer_kwargs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ScanviOptions:
    """``scanvi:``. ``max_epochs``: scANVI epochs after ``SCANVI.from_scvi_model`` (the scVI stage reads
    ``scvi:``). The labels it learns from are the training patients' labels minus the experiment's
    ``exclude_labels``; every other spot is ``Unknown``."""

    max_epochs: int = 20


@dataclass(frozen=True)
class GeneConfig(FromDict):
    """Settings of the gene encoders (YAML section ``genes:``; each field in docs/configuration.md).

    ``n_top_genes``: highly variable genes (``seurat_v3`` on raw counts, batch-aware, fitted on the training
    patients only; all genes when there are fewer). ``seed``: every random choice. The family sections hold the
    rest: ``pca``, ``harmony``, ``scvi``, ``scanvi``.
    """

    section: ClassVar[str] = "genes"

    n_top_genes: int = 2000
    seed: int = 0
    pca: PcaOptions = PcaOptions()
    harmony: HarmonyOptions = HarmonyOptions()
    scvi: ScviOptions = ScviOptions()
    scanvi: ScanviOptions = ScanviOptions()

    def __post_init__(self) -> None:
        if self.n_top_genes < 1:
            raise ConfigError("n_top_genes", f"must be at least 1, got {self.n_top_genes}", "set n_top_genes, e.g. 2000")
