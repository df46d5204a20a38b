"""Baselines without a generative model: log-normalised expression and its PCA."""
from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import anndata as ad
import numpy as np

from stguide.genes.base import GeneEncoder
from stguide.genes.registry import register

TARGET_SUM = 1e4


def log_normalise(counts) -> np.ndarray:
    """Library-size normalisation to 10,000 counts per spot, then log1p (dense float32)."""
    x = np.asarray(counts.toarray() if hasattr(counts, "toarray") else counts, dtype=np.float64)
    lib = x.sum(1, keepdims=True)
    return np.log1p(x / np.maximum(lib, 1.0) * TARGET_SUM).astype(np.float32)


@register
class LogExprEncoder(GeneEncoder):
    """``logexpr``: log-normalised expression of the selected genes (the raw-expression input of CLIP)."""

    name = "logexpr"

    def _fit(self, adata: ad.AnnData, batch_key: str, labels: np.ndarray | None) -> None:
        pass

    def transform(self, adata: ad.AnnData) -> np.ndarray:
        return log_normalise(self.counts(adata))

    def _save(self, path: Path) -> None:
        pass

    def _load(self, path: Path) -> None:
        pass


@register
class PCAEncoder(GeneEncoder):
    """``pca``: PCA (centred, not scaled) of ``logexpr``, fitted on the training spots."""

    name = "pca"
    reads: ClassVar[tuple[str, ...]] = ("pca",)

    def _fit(self, adata: ad.AnnData, batch_key: str, labels: np.ndarray | None) -> None:
        x = log_normalise(adata.X)
        k = min(self.config.pca.n_pcs, x.shape[0] - 1, x.shape[1])
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


@register
class HarmonyEncoder(PCAEncoder):
    """``harmony``: Harmony (harmonypy) on the training PCA, patient as the batch — BLEEP's input.

    Spots that were in the fit get their Harmony-corrected coordinates. Harmony itself learns no correction for a
    patient it has not seen; ``genes.harmony.query`` chooses what such spots get:

    - ``"symphony"`` (default): the reference-mapping step of Symphony (Kang et al. 2021). The reference (the
      training fit: cluster centroids, soft assignments, per-cluster sums) is frozen; each new batch's own offset
      per cluster is estimated from that batch's unlabelled expression by the same mixture-of-experts ridge
      regression Harmony uses, and removed. Batches are read from ``obs[batch_key]`` when present, else all new
      spots form one batch. No label of the new spots is used.
    - ``"pca"``: the uncorrected training-PCA projection (no correction; leaves a train/test shift).
    """

    name = "harmony"
    reads = ("pca", "harmony")

    def _fit(self, adata: ad.AnnData, batch_key: str, labels: np.ndarray | None) -> None:
        import harmonypy

        super()._fit(adata, batch_key, labels)
        z = (log_normalise(adata.X) - self.mean_) @ self.components_.T
        meta = adata.obs[[batch_key]].astype(str).reset_index(drop=True)
        h = self.config.harmony
        ho = harmonypy.run_harmony(z, meta, [batch_key], sigma=h.sigma, lamb=h.lamb,
                                   random_state=self.config.seed, verbose=False)
        corr = np.asarray(ho.Z_corr)
        corr = corr.T if corr.shape[0] != z.shape[0] else corr
        r = np.asarray(ho.R)
        r = r if r.shape[0] == z.shape[0] else r.T  # spots × clusters
        self.fitted_names_ = np.asarray(adata.obs_names).astype(str)
        self.corrected_ = corr.astype(np.float32)
        self.centroids_ = np.asarray(ho.Y, dtype=np.float64)  # dims × clusters, unit columns (cosine space)
        self.ref_n_ = r.sum(0)  # clusters
        self.ref_sum_ = r.T @ corr  # clusters × dims, corrected reference coordinates weighted by assignment

    def map_query(self, z: np.ndarray, batches: np.ndarray) -> np.ndarray:
        """Symphony's query mapping of uncorrected PCA coordinates ``z`` (spots × dims), one offset per batch and cluster."""
        zc = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        logits = -2.0 * (1.0 - zc @ self.centroids_) / self.config.harmony.sigma
        r = np.exp(logits - logits.max(1, keepdims=True))
        r /= r.sum(1, keepdims=True)
        out = z.astype(np.float64).copy()
        lam = self.config.harmony.lamb
        for b in np.unique(batches):
            m = batches == b
            rb, zb = r[m], z[m]
            nq, sq = rb.sum(0), rb.T @ zb  # clusters; clusters × dims
            for k in range(r.shape[1]):
                # design [intercept, batch]; the intercept is anchored by the frozen reference (Nr, C)
                e = np.array([[nq[k] + self.ref_n_[k], nq[k]], [nq[k], nq[k] + lam]])
                f = np.stack([sq[k] + self.ref_sum_[k], sq[k]])
                beta = np.linalg.solve(e, f)[1]
                out[m] -= rb[:, [k]] * beta[None, :]
        return out.astype(np.float32)

    def query_mapping(self) -> dict[str, Any] | None:
        if self.config.harmony.query != "symphony":
            return None
        return {"labels_used": False, "method": "symphony",
                "note": "Symphony mapping estimates the held-out patient's own offset from its unlabelled expression; "
                        "the reference stays frozen"}

    def transform(self, adata: ad.AnnData) -> np.ndarray:
        z = super().transform(adata)
        pos = {n: i for i, n in enumerate(self.fitted_names_)}
        idx = np.array([pos.get(n, -1) for n in np.asarray(adata.obs_names).astype(str)])
        seen = idx >= 0
        if self.config.harmony.query == "symphony" and (~seen).any():
            key = self.fitted_on.get("batch_key")
            batches = adata.obs[key].astype(str).to_numpy() if key in adata.obs else np.zeros(adata.n_obs, dtype=str)
            z[~seen] = self.map_query(z[~seen], batches[~seen])
        z[seen] = self.corrected_[idx[seen]]
        return z

    def _save(self, path: Path) -> None:
        super()._save(path)
        np.savez(path / "harmony.npz", names=self.fitted_names_, corrected=self.corrected_, centroids=self.centroids_,
                 ref_n=self.ref_n_, ref_sum=self.ref_sum_)

    def _load(self, path: Path) -> None:
        super()._load(path)
        z = np.load(path / "harmony.npz")
        self.fitted_names_, self.corrected_ = z["names"].astype(str), z["corrected"]
        self.centroids_, self.ref_n_, self.ref_sum_ = z["centroids"], z["ref_n"], z["ref_sum"]
