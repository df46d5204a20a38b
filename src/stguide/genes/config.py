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


AUTO: Literal["auto"] = "auto"
EPOCHS_CAP, DECAY_AT_N = 400, 20_000  # scvi-tools' get_max_epochs_heuristic constants


def auto_epochs(n_spots: int, cap: int = EPOCHS_CAP, decay_at: int = DECAY_AT_N) -> int:
    """scvi-tools' default number of epochs for ``n_spots`` training spots: ``cap`` up to ``decay_at`` spots, then
    ``cap · decay_at / n_spots`` (at least 1), so that a fit takes about the same number of optimisation steps
    whatever the data's size (scvi-tools' ``get_max_epochs_heuristic``; tested against it)."""
    return max(min(round(decay_at / max(n_spots, 1) * cap), cap), 1)


def auto_scanvi_epochs(n_spots: int) -> int:
    """scvi-tools' default scANVI epochs after ``from_scvi_model``: a third of :func:`auto_epochs`, within 2–10."""
    return int(min(10, max(2, round(auto_epochs(n_spots) / 3.0))))


def _check_epochs(value: int | str, key: str = "max_epochs") -> None:
    if value != AUTO and (not isinstance(value, int) or value < 1):
        raise ConfigError(key, f"must be 'auto' or a positive integer, got {value!r}",
                          "write auto (scvi-tools' rule, steps held about constant) or a number of epochs")


@dataclass(frozen=True)
class ScviOptions:
    """``scvi:`` (read by ``scvi``, ``scanvi`` and ``sysvi``: the scvi-tools family).

    ``n_latent``, ``n_hidden``, ``n_layers``, ``dropout_rate``, ``gene_likelihood``, ``dispersion``: the network
    (scvi-tools' defaults except ``n_latent``; SysVI uses at least 2 layers and models log-expression, so it ignores
    the likelihood and the dispersion). ``max_epochs``: ``auto`` (default) trains as scvi-tools does by default, about
    a constant number of optimisation steps whatever the data's size — 400 epochs up to 20,000 training spots, then
    400 × 20,000 / n (:func:`auto_epochs`); or a fixed number. The epochs and steps a fit took are recorded in the
    encoder's ``stguide.json`` (``fitted_on.training``). ``early_stopping``: on a 10 % validation split of the
    training spots (the validation ELBO). ``batch_size``: the minibatch (nudged up so that no minibatch holds a single
    spot, which BatchNorm cannot train on). ``encode_covariates``: the encoder also sees the patient (scvi-tools'
    setting for scArches); the latent of a training spot then uses its own patient, and a spot of an unseen patient
    needs ``query``. ``query``: how an unseen patient's spots are embedded — ``encode`` (the encoder's pass; with
    ``encode_covariates`` the posterior means under every training patient, averaged) or ``scarches`` (scvi-tools'
    ``load_query_data``: the reference weights frozen, the new patient's own covariate weights trained on its
    *unlabelled* spots for ``query_epochs``; needs ``encode_covariates: true``, since with a batch-free encoder
    scArches leaves the latent unchanged). ``trainer_kwargs``: passed to scvi-tools' Lightning trainer unchanged.
    """

    n_latent: int = 16
    n_hidden: int = 128
    n_layers: int = 1
    dropout_rate: float = 0.1
    gene_likelihood: Literal["zinb", "nb", "poisson"] = "zinb"
    dispersion: Literal["gene", "gene-batch"] = "gene"
    max_epochs: int | Literal["auto"] = AUTO
    early_stopping: bool = False
    batch_size: int = 128
    encode_covariates: bool = False
    query: Literal["encode", "scarches"] = "encode"
    query_epochs: int | Literal["auto"] = AUTO
    trainer_kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_epochs(self.max_epochs)
        _check_epochs(self.query_epochs, "query_epochs")
        if self.query == "scarches" and not self.encode_covariates:
            raise ConfigError("query", "scarches maps a new patient through the encoder's covariate weights, and this "
                              "encoder has none (encode_covariates: false), so the latent would not change",
                              "set encode_covariates: true, or query: encode")
        if self.batch_size < 2:
            raise ConfigError("batch_size", f"must be at least 2, got {self.batch_size}", "set batch_size, e.g. 128")


@dataclass(frozen=True)
class ScanviOptions:
    """``scanvi:``. ``max_epochs``: scANVI epochs after ``SCANVI.from_scvi_model`` (the scVI stage reads
    ``scvi:``); ``auto`` (default) is scvi-tools' rule, a third of scVI's ``auto`` epochs within 2–10
    (:func:`auto_scanvi_epochs`). The labels it learns from are the training patients' labels minus the
    experiment's ``exclude_labels``; every other spot is ``Unknown``."""

    max_epochs: int | Literal["auto"] = AUTO

    def __post_init__(self) -> None:
        _check_epochs(self.max_epochs)


@dataclass(frozen=True)
class SysviOptions:
    """``sysvi:`` (read by ``sysvi``). ``cycle_weight``: the latent cycle-consistency loss weight (scvi-tools'
    ``z_distance_cycle_weight``, default 2); ``kl_weight``: the KL weight (default 1); ``n_prior_components``: the
    VampPrior's pseudo-inputs (default 5); ``prior``: ``vamp`` or ``standard_normal``."""

    cycle_weight: float = 2.0
    kl_weight: float = 1.0
    n_prior_components: int = 5
    prior: Literal["vamp", "standard_normal"] = "vamp"

    def __post_init__(self) -> None:
        if self.cycle_weight < 0 or self.kl_weight < 0:
            raise ConfigError("cycle_weight" if self.cycle_weight < 0 else "kl_weight", "must not be negative", "use a weight ≥ 0")
        if self.n_prior_components < 1:
            raise ConfigError("n_prior_components", f"must be at least 1, got {self.n_prior_components}", "e.g. 5")


@dataclass(frozen=True)
class GeneConfig(FromDict):
    """Settings of the gene encoders (YAML section ``genes:``; each field in docs/configuration.md).

    ``n_top_genes``: highly variable genes (``seurat_v3`` on raw counts, batch-aware, fitted on the training
    patients only; all genes when there are fewer). ``seed``: every random choice. The family sections hold the
    rest: ``pca``, ``harmony``, ``scvi``, ``scanvi``, ``sysvi``.
    """

    section: ClassVar[str] = "genes"

    n_top_genes: int = 2000
    seed: int = 0
    pca: PcaOptions = PcaOptions()
    harmony: HarmonyOptions = HarmonyOptions()
    scvi: ScviOptions = ScviOptions()
    scanvi: ScanviOptions = ScanviOptions()
    sysvi: SysviOptions = SysviOptions()

    def __post_init__(self) -> None:
        if self.n_top_genes < 1:
            raise ConfigError("n_top_genes", f"must be at least 1, got {self.n_top_genes}", "set n_top_genes, e.g. 2000")
