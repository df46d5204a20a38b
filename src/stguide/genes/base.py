"""The gene-encoder interface and the gene selection every encoder shares."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np
import scipy.sparse as sp

from stguide.config import ConfigError
from stguide.data.model import EXCLUDED_LABELS, labelled_mask
from stguide.errors import InputError
from stguide.genes.config import GeneConfig
from stguide.io import atomic_path, write_json_atomic

LABELS = "labels"  # capability: learns from the training spots' labels
PREDICT = "predict"  # capability: predicts a class for any spot (supcon_labels: scanvi)
FINETUNE = "finetune"  # capability: a batch-free network that stage 2 may fine-tune (finetune_gene_encoder)
_NEEDED_BY = {  # capability: (the stage-2 setting that needs it, what the encoder lacks, the fix)
    PREDICT: ("contrastive.supcon_labels", "predicts no labels", "use the scanvi gene encoder, or set supcon_labels: label"),
    FINETUNE: ("contrastive.finetune_gene_encoder", "has no batch-free network to fine-tune",
               "use the scvi or scanvi gene encoder, or set finetune_gene_encoder: false"),
}


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
    """fit(adata_train, batch_key, labels_key) → transform(adata) → latent (n_spots × dim); save(dir).

    Families declare what they read and can do: ``reads`` (the :class:`GeneConfig` sections), ``capabilities``
    (``labels``, ``predict``, ``finetune``). Register a family with ``stguide.genes.registry.register``; open a
    saved one with ``stguide.genes.load_encoder``.
    """

    name: ClassVar[str]
    reads: ClassVar[tuple[str, ...]] = ()
    capabilities: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: GeneConfig | None = None) -> None:
        self.config = config or GeneConfig()
        self.genes: list[str] = []
        self.fitted_on: dict[str, Any] = {}
        self.progress = True

    def settings(self) -> dict[str, Any]:
        """The settings this encoder reads: the shared ones and its families' sections (its cache key)."""
        c = self.config
        return {"encoder": self.name, "n_top_genes": c.n_top_genes, "seed": c.seed, **{f: asdict(getattr(c, f)) for f in self.reads}}

    def fit(self, adata: ad.AnnData, batch_key: str = "patient", labels_key: str | None = "label",
            exclude_labels: Sequence[str] = EXCLUDED_LABELS, progress: bool = True) -> GeneEncoder:
        """Select genes and fit on ``adata`` (training patients only). Labels in ``exclude_labels`` do not count
        (a label-reading encoder sees them as unlabelled). Returns self."""
        check_fit_input(adata, batch_key)
        self.progress = progress
        self.genes = select_genes(adata, self.config.n_top_genes, batch_key)
        patients = adata.obs["patient"] if "patient" in adata.obs else adata.obs[batch_key]
        uses_labels = LABELS in self.capabilities and labels_key is not None
        self.fitted_on = {"patients": sorted(set(patients.astype(str))), "batches": sorted(set(adata.obs[batch_key].astype(str))),
                          "n_spots": int(adata.n_obs), "batch_key": batch_key, "labels_key": labels_key if uses_labels else None,
                          "exclude_labels": list(exclude_labels) if uses_labels else []}
        labels = None
        if uses_labels:
            if labels_key not in adata.obs:
                raise InputError("<training set>", f"obs has no label column {labels_key!r}", "give labels_key")
            labels = adata.obs[labels_key].astype(object).where(labelled_mask(adata, exclude_labels), None).to_numpy()
        self._fit(adata[:, self.genes], batch_key, labels)
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
    def _fit(self, adata: ad.AnnData, batch_key: str, labels: np.ndarray | None) -> None:
        """Fit on the selected genes; ``labels``: one per spot, ``None`` where a spot's label does not count."""

    @abstractmethod
    def transform(self, adata: ad.AnnData) -> np.ndarray:
        """The latent of every spot of ``adata`` (float32, n_spots × dim); no batch input is needed."""

    @classmethod
    def require(cls, capability: str) -> None:
        """Raise :class:`ConfigError` (at the stage-2 setting that needs it) when the family lacks ``capability``."""
        if capability not in cls.capabilities:
            key, lacks, fix = _NEEDED_BY[capability]
            raise ConfigError(key, f"the {cls.name!r} gene encoder {lacks}", fix)

    def query_mapping(self) -> dict[str, Any] | None:
        """What the encoder fits on an unseen patient's spots when it embeds them (``None``: nothing, a plain pass).
        The gene-side LOPO writes it into the fold's leakage audit."""
        return None

    def predict(self, adata: ad.AnnData) -> np.ndarray:
        """A predicted class per spot (capability ``predict``)."""
        self.require(PREDICT)
        raise NotImplementedError

    def torch_encoder(self) -> Any:
        """A trainable copy of the batch-free encoder network (capability ``finetune``)."""
        self.require(FINETUNE)
        raise NotImplementedError

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
