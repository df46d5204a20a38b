"""Baselines without a generative model: log-normalised expression and its PCA."""
from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np

from stguide.genes.base import GeneEncoder

TARGET_SUM = 1e4


def log_normalise(counts) -> np.ndarray:
    """Library-size normalisation to 10,000 counts per spot, then log1p (dense float32)."""
    x = np.asarray(counts.toarray() if hasattr(counts, "toarray") else counts, dtype=np.float64)
    lib = x.sum(1, keepdims=True)
    return np.log1p(x / np.maximum(lib, 1.0) * TARGET_SUM).astype(np.float32)


class LogExprEncoder(GeneEncoder):
    """``logexpr``: log-normalised expression of the selected genes (the raw-expression input of CLIP)."""

    name = "logexpr"

    def _fit(self, adata: ad.AnnData, batch_key: str, labels_key: str | None) -> None:
        pass

    def transform(self, adata: ad.AnnData) -> np.ndarray:
        return log_normalise(self.counts(adata))

    def _save(self, path: Path) -> None:
        pass

    def _load(self, path: Path) -> None:
        pass


class PCAEncoder(GeneEncoder):
    """``pca``: PCA (centred, not scaled) of ``logexpr``, fitted on the training spots."""

    name = "pca"

    def _fit(self, adata: ad.AnnData, batch_key: str, labels_key: str | None) -> None:
        x = log_normalise(adata.X)
        k = min(self.config.n_pcs, x.shape[0] - 1, x.shape[1])
        self.mean_ = x.mean(0)
        _, _, vt = np.linalg.svd(x - self.mean_, full_matrices=False)
        self.components_ = vt[:k].astype(np.float32)

    def transform(self, adata: ad.AnnData) -> np.ndarray:
        return ((log_normalise(self.counts(adata)) - self.mean_) @ self.components_.T).astype(np.float32)

    def _save(self, path: Path) -> None:
        np.savez(path / "pca.npz", mean=self.mean_, components=self.components_)

    def _load(self, path: Path) -> None:
        z = np.load(path / "pca.npz")
        self.mean_, self.components_ = z["mean"], z["components"]


class HarmonyEncoder(PCAEncoder):
    """``harmony``: Harmony (harmonypy) on the training PCA, patient as the batch — BLEEP's input.

    Harmony corrects the points it is fitted on; it learns no correction for a patient it has not seen. So
    ``transform`` returns the Harmony-corrected coordinates of spots that were in the fit, and the (uncorrected)
    training-PCA projection of any other spot, e.g. a held-out patient's.
    """

    name = "harmony"

    def _fit(self, adata: ad.AnnData, batch_key: str, labels_key: str | None) -> None:
        import harmonypy

        super()._fit(adata, batch_key, labels_key)
        z = (log_normalise(adata.X) - self.mean_) @ self.components_.T
        meta = adata.obs[[batch_key]].astype(str).reset_index(drop=True)
        ho = harmonypy.run_harmony(z, meta, [batch_key], random_state=self.config.seed, verbose=False)
        corr = np.asarray(ho.Z_corr)
        corr = corr.T if corr.shape[0] != z.shape[0] else corr
        self.fitted_names_ = np.asarray(adata.obs_names).astype(str)
        self.corrected_ = corr.astype(np.float32)

    def transform(self, adata: ad.AnnData) -> np.ndarray:
        z = super().transform(adata)
        pos = {n: i for i, n in enumerate(self.fitted_names_)}
        for j, n in enumerate(np.asarray(adata.obs_names).astype(str)):
            i = pos.get(n)
            if i is not None:
                z[j] = self.corrected_[i]
        return z

    def _save(self, path: Path) -> None:
        super()._save(path)
        np.savez(path / "harmony.npz", names=self.fitted_names_, corrected=self.corrected_)

    def _load(self, path: Path) -> None:
        super()._load(path)
        z = np.load(path / "harmony.npz")
        self.fitted_names_, self.corrected_ = z["names"].astype(str), z["corrected"]
