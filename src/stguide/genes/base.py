"""The gene-encoder interface and the gene selection every encoder shares."""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar, Literal

import anndata as ad
import numpy as np
import scipy.sparse as sp

from stguide.config import FromDict
from stguide.errors import InputError
from stguide.io import atomic_path, write_json_atomic


@dataclass(frozen=True)
class GeneConfig(FromDict):
    """Settings shared by the gene encoders (each documented in docs/configuration.md).

    ``n_top_genes``: highly variable genes (``seurat_v3`` on raw counts, batch-aware, fitted on the training
    patients only); all genes are used when there are fewer. ``n_latent``, ``n_hidden``, ``n_layers``,
    ``dropout_rate``, ``gene_likelihood``: the scVI network (scvi-tools defaults except ``n_latent``).
    ``max_epochs``: scVI epochs (fixed, so runs are comparable; scvi-tools' heuristic would give 400 under 20k
    spots). ``early_stopping``: on a 10 % validation split of the training spots. ``batch_size``: scVI
    minibatch (nudged up so that no minibatch holds a single spot, which BatchNorm cannot train on).
    ``scanvi_epochs``: scANVI fine-tuning epochs. ``unlabelled_classes``: labels treated as unlabelled by
    scANVI. ``n_pcs``: components of ``pca``.
    ``harmony_query``: how ``harmony`` embeds spots of a patient outside its fit, ``"symphony"`` (reference
    mapping) or ``"pca"`` (uncorrected); ``harmony_sigma`` / ``harmony_lambda``: Harmony's soft-clustering width
    and ridge penalty (harmonypy defaults). ``seed``: every random choice. ``trainer_kwargs``: passed to the
    Lightning trainer of scvi-tools unchanged.
    """

    section: ClassVar[str] = "genes"

    n_top_genes: int = 2000
    n_latent: int = 16
    n_hidden: int = 128
    n_layers: int = 1
    dropout_rate: float = 0.1
    gene_likelihood: str = "zinb"
    max_epochs: int = 200
    early_stopping: bool = False
    batch_size: int = 128
    scanvi_epochs: int = 20
    unlabelled_classes: tuple[str, ...] = ("undetermined",)
    n_pcs: int = 50
    harmony_query: Literal["symphony", "pca"] = "symphony"
    harmony_sigma: float = 0.1
    harmony_lambda: float = 1.0
    seed: int = 0
    trainer_kwargs: dict = field(default_factory=dict)



def select_genes(adata: ad.AnnData, n_top: int, batch_key: str = "patient") -> list[str]:
    """Highly variable genes by ``seurat_v3`` on raw counts with ``batch_key``; all genes when fewer than ``n_top``."""
    if adata.n_vars <= n_top:
        return list(map(str, adata.var_names))
    import scanpy as sc

    tmp = ad.AnnData(X=sp.csr_matrix(adata.X, dtype=np.float32), obs=adata.obs[[batch_key]].copy(), var=adata.var[[]].copy())
    expressed = np.asarray((tmp.X > 0).sum(0)).ravel() > 0
    tmp = tmp[:, expressed].copy()
    sc.pp.highly_variable_genes(tmp, n_top_genes=min(n_top, tmp.n_vars), flavor="seurat_v3", batch_key=batch_key, subset=False)
    return list(map(str, tmp.var_names[tmp.var["highly_variable"].to_numpy()]))


def check_fit_input(adata: ad.AnnData, batch_key: str, file: str = "<training set>") -> None:
    if batch_key not in adata.obs:
        raise InputError(file, f"obs has no batch column {batch_key!r}", "set batch_key to the patient column")
    sizes = adata.obs[batch_key].astype(str).value_counts()
    small = sizes[sizes < 2]
    if len(small):
        raise InputError(file, f"batch(es) {small.index.tolist()} have fewer than 2 spots", "drop those patients or merge them")


class GeneEncoder(ABC):
    """fit(adata_train, batch_key, labels_key) → transform(adata) → latent (n_spots × dim); save(dir) / load(dir)."""

    name: ClassVar[str]

    def __init__(self, config: GeneConfig | None = None, **overrides: Any) -> None:
        base = config or GeneConfig()
        self.config = GeneConfig.from_dict({**asdict(base), **overrides}) if overrides else base
        self.genes: list[str] = []
        self.fitted_on: dict[str, Any] = {}

    def fit(self, adata: ad.AnnData, batch_key: str = "patient", labels_key: str | None = None,
            progress: bool = True) -> "GeneEncoder":
        """Select genes and fit on ``adata`` (training patients only). Returns self."""
        check_fit_input(adata, batch_key)
        self.progress = progress
        self.genes = select_genes(adata, self.config.n_top_genes, batch_key)
        self.fitted_on = {"patients": sorted(set(adata.obs[batch_key].astype(str))), "n_spots": int(adata.n_obs),
                          "batch_key": batch_key, "labels_key": labels_key}
        self._fit(adata[:, self.genes], batch_key, labels_key)
        return self

    def counts(self, adata: ad.AnnData) -> sp.csr_matrix:
        """The selected genes' raw counts of ``adata``; raises when a gene is missing."""
        if not self.genes:
            raise RuntimeError(f"{self.name}: call fit() first")
        missing = [g for g in self.genes if g not in adata.var_names]
        if missing:
            raise InputError("<dataset>", f"{len(missing)} gene(s) the encoder was fitted on are missing (e.g. {missing[:5]})",
                             "transform data with the same gene set (same reader, same gene_rule), or refit")
        return sp.csr_matrix(adata[:, self.genes].X)

    @abstractmethod
    def _fit(self, adata: ad.AnnData, batch_key: str, labels_key: str | None) -> None: ...

    @abstractmethod
    def transform(self, adata: ad.AnnData) -> np.ndarray:
        """The latent of every spot of ``adata`` (float32, n_spots × dim); no batch input is needed."""

    def save(self, path: str | PathLike) -> Path:
        """Write the encoder to a folder atomically: ``stguide.json`` plus the family's own files."""
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.mkdir()
            self._save(tmp)
            write_json_atomic(tmp / "stguide.json", {"encoder": self.name, "config": asdict(self.config), "genes": self.genes, "fitted_on": self.fitted_on})
        return path

    @abstractmethod
    def _save(self, path: Path) -> None: ...

    @abstractmethod
    def _load(self, path: Path) -> None: ...

    @classmethod
    def load(cls, path: str | PathLike) -> "GeneEncoder":
        """Open an encoder folder written by :meth:`save` (any family)."""
        from stguide.genes.registry import ENCODERS

        path = Path(path)
        meta_file = path / "stguide.json"
        if not meta_file.is_file():
            raise InputError(path, "not a stguide gene-encoder folder (stguide.json is missing)", "fit one with `stguide genes fit`")
        meta = json.loads(meta_file.read_text())
        cfg = meta["config"]
        cfg["unlabelled_classes"] = tuple(cfg.get("unlabelled_classes", ()))
        enc = ENCODERS[meta["encoder"]](GeneConfig(**{k: v for k, v in cfg.items() if k in {f.name for f in fields(GeneConfig)}}))
        enc.genes, enc.fitted_on = list(meta["genes"]), dict(meta["fitted_on"])
        enc._load(path)
        return enc
