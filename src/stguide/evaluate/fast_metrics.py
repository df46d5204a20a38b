"""Faster equivalents of three scib-metrics computations the audit spends most of its time in (scib-metrics 0.5.10).

Each gives the library's value (the tests compare them on several datasets) at a fraction of its cost:

* ``silhouette_samples``: the per-spot silhouette with Euclidean distances and the nearest other label, as
  ``scib_metrics.utils.silhouette_samples``. The library forms every distance as ``sqrt(sum((x - y)²))`` through
  nested ``vmap``s (no BLAS); here each chunk of rows takes one float32 matrix product
  (``|x|² + |y|² − 2 x·y``, on centred data; the library works in float32 too). ``silhouette_label`` and ``isolated_labels`` both start from these
  per-spot values, so the audit computes them once for both (the library computes them twice).
* ``kmeans_labels``: the clusters of ``scib_metrics.utils.KMeans(n_clusters)`` (k-means++ from the same JAX key,
  one init, Lloyd steps). The library's loop runs while the inertia changes *or* fewer than ``max_iter`` (300) steps
  were taken, so it always takes at least 300 steps, each building an (n × k × d) array to sum the centroids.
  Here the centroids are a one-hot matrix product, and the loop stops once the labels repeat: from then on every
  step gives the same centroids, so the library's 300th step has the same labels (a label can differ only where
  two centroids are equally near to float rounding).
"""
from __future__ import annotations

import numpy as np
import pandas as pd


def silhouette_samples(x: np.ndarray, labels: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Per-spot silhouette (Euclidean, nearest other label); 0 for a spot alone in its label, as scib-metrics."""
    codes = pd.Categorical(labels).codes
    k = int(codes.max()) + 1
    freq = np.bincount(codes, minlength=k).astype(np.float64)
    x = np.asarray(x, np.float32)
    x = x - x.mean(axis=0)
    sq = np.einsum("ij,ij->i", x, x)
    onehot = np.zeros((len(x), k), np.float32)
    onehot[np.arange(len(x)), codes] = 1.0
    out = np.empty(len(x))
    for s in range(0, len(x), chunk):
        e = min(s + chunk, len(x))
        rows = np.arange(e - s)
        d = sq[s:e, None] + sq[None, :] - 2.0 * (x[s:e] @ x.T)
        np.maximum(d, 0.0, out=d)
        np.sqrt(d, out=d)
        d[rows, rows + s] = 0.0  # a spot's distance to itself, exactly
        per_label = d @ onehot  # (chunk, k): summed distance to each label's spots
        own = codes[s:e]
        per_label = per_label.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            intra = per_label[rows, own] / (freq[own] - 1)
            per_label[rows, own] = np.inf
            inter = (per_label / freq).min(axis=1)
            out[s:e] = (inter - intra) / np.maximum(intra, inter)
    return np.nan_to_num(out)


def silhouette_label(sil: np.ndarray) -> float:
    """scib-metrics' ``silhouette_label`` (rescaled to 0–1) from per-spot silhouettes."""
    return float((np.mean(sil) + 1) / 2)


def isolated_labels(sil: np.ndarray, labels: np.ndarray, batch: np.ndarray) -> float:
    """scib-metrics' ``isolated_labels`` (silhouette flavour, rescaled) from per-spot silhouettes: the mean, over the
    labels present in the fewest batches, of their spots' silhouettes."""
    from scib_metrics.metrics._isolated_labels import _get_isolated_labels

    iso = _get_isolated_labels(labels, batch, None)
    scaled = (sil + 1) / 2
    return float(pd.Series({lab: np.mean(scaled[labels == lab]) for lab in iso}, dtype=float).mean())


def _sq_dists(x: np.ndarray, x_sq: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distances of the rows of ``x`` (their squared norms ``x_sq``) to the rows of ``c``."""
    d = x_sq[:, None] + np.einsum("ij,ij->i", c, c)[None, :] - 2.0 * (x @ c.T)
    return np.maximum(d, 0.0)


def kmeans_labels(x: np.ndarray, n_clusters: int, seed: int = 0, max_iter: int = 300, tol: float = 1e-4) -> np.ndarray:
    """The cluster labels ``scib_metrics.utils.KMeans(n_clusters, seed=seed).fit(x).labels_`` gives."""
    import jax
    import scipy.sparse as sp
    from scib_metrics.utils._kmeans import _initialize_plus_plus

    X = np.array(x, dtype=np.float32, order="C")
    tol = float(np.mean(np.var(X, axis=0)) * tol)
    X -= X.mean(axis=0)
    key = jax.random.split(jax.random.PRNGKey(seed), 1)[0]  # the library maps its fit over split(seed, n_init)
    centroids = np.asarray(_initialize_plus_plus(X, n_clusters, key), dtype=np.float64)
    X64 = X.astype(np.float64)
    x_sq, rows, ones = np.einsum("ij,ij->i", X64, X64), np.arange(len(X64)), np.ones(len(X64))
    old_inertia, n_iter, last = np.inf, 0, None
    while True:
        d = _sq_dists(X64, x_sq, centroids)
        labels = d.argmin(axis=1)
        inertia = float(d[rows, labels].sum())
        if last is not None and np.array_equal(labels, last):
            return labels  # a fixed point: every further step repeats it
        members = sp.csr_matrix((ones, (labels, rows)), shape=(n_clusters, len(X64)))
        counts = np.maximum(np.bincount(labels, minlength=n_clusters), 1)
        centroids = (members @ X64) / counts[:, None]  # an empty cluster's centroid is 0, as the library's
        n_iter += 1
        changed = abs(old_inertia - inertia) > tol if np.isfinite(old_inertia) else False
        if not (changed or n_iter < max_iter):
            return _sq_dists(X64, x_sq, centroids).argmin(axis=1)
        old_inertia, last = inertia, labels


def nmi_ari_kmeans(x: np.ndarray, labels: np.ndarray, seed: int = 0) -> dict[str, float]:
    """scib-metrics' ``nmi_ari_cluster_labels_kmeans``: k-means with k = the number of labels, then NMI
    (arithmetic) and ARI against the labels."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    pred = kmeans_labels(x, len(np.unique(labels)), seed=seed)
    return {"nmi": float(normalized_mutual_info_score(labels, pred, average_method="arithmetic")),
            "ari": float(adjusted_rand_score(labels, pred))}
