"""Batch and biology audit of representations with scib-metrics: patient as the batch, label as the biology.

Metrics are pure functions of arrays. Batch metrics (iLISI, kBET, graph connectivity, BRAS, PCR comparison) use
every spot; biology metrics (silhouette label, cLISI, NMI/ARI, isolated labels) use the labelled spots. All are
on a 0–1 scale where higher is better. Used for gene representations (``stguide genes audit``) and for image
features (``evaluate/image_audit.py``); the figures and tables are drawn by ``stguide.report``.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from stguide.io import user_cache_dir

BATCH_METRICS = ("ilisi", "kbet", "graph_connectivity", "bras", "pcr_comparison")
BIO_METRICS = ("silhouette_label", "clisi", "nmi", "ari", "isolated_labels")


@dataclass(frozen=True)
class AuditConfig:
    """``n_neighbors``: exact kNN graph size for the LISI/kBET/connectivity metrics. ``max_spots``: spots
    subsampled (seeded) when a representation is larger, to bound time. ``seed``: the subsample."""

    n_neighbors: int = 50
    max_spots: int = 20000
    seed: int = 0


def use_compilation_cache() -> None:
    """Keep scib-metrics' JAX compilations on disk (``user_cache_dir("jax")``) so that a later process reuses them
    instead of compiling again. A ``JAX_COMPILATION_CACHE_DIR`` the user set is left alone."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    import jax

    if getattr(jax.config, "jax_compilation_cache_dir", None):
        return
    try:
        path = user_cache_dir("jax")
        path.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: compile every time, as before
        return
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def seeded_sample(n: int, k: int, seed: int) -> np.ndarray:
    """Sorted row indices: all ``n`` rows when ``n ≤ k``, else ``k`` of them drawn at random with ``seed``."""
    return np.arange(n) if n <= k else np.sort(np.random.default_rng(seed).choice(n, k, replace=False))


def knn(x: np.ndarray, k: int):
    """Exact (deterministic) kNN as scib-metrics' NeighborsResults."""
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(x) - 1)
    d, i = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return NeighborsResults(indices=i, distances=d)


def _quiet(f, *a, **kw) -> Any:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return f(*a, **kw)


def batch_metrics(x: np.ndarray, batch: np.ndarray, labels: np.ndarray | None = None, x_pre: np.ndarray | None = None,
                  cfg: AuditConfig = AuditConfig(), nn: Any = None, nn_labelled: Any = None) -> dict[str, float]:
    """iLISI, kBET, BRAS, PCR comparison (vs ``x_pre``) and graph connectivity (needs ``labels``). ``nn``,
    ``nn_labelled``: the kNN graphs of every spot and of the labelled spots, when already built."""
    import scib_metrics as sm

    nn = knn(x, cfg.n_neighbors) if nn is None else nn
    kbet = _quiet(sm.kbet, nn, batch)  # (acceptance rate, mean statistic, mean p-value)
    out = {"ilisi": float(_quiet(sm.ilisi_knn, nn, batch)), "kbet": float(kbet[0] if isinstance(kbet, tuple) else kbet)}
    if labels is not None:
        ok = pd.notna(labels)
        if nn_labelled is None:
            nn_labelled = nn if ok.all() else knn(x[ok], cfg.n_neighbors)
        out["graph_connectivity"] = float(_quiet(sm.graph_connectivity, nn_labelled, labels[ok]))
        out["bras"] = float(_quiet(sm.bras, x[ok], labels[ok], batch[ok]))
    if x_pre is not None:
        codes = pd.Categorical(batch).codes.astype(np.int32)  # the patient as a categorical covariate
        out["pcr_comparison"] = float(_quiet(sm.pcr_comparison, x_pre, x, codes, scale=True, categorical=True))
    return out


def bio_metrics(x: np.ndarray, labels: np.ndarray, batch: np.ndarray, cfg: AuditConfig = AuditConfig(),
                nn: Any = None) -> dict[str, float]:
    """Silhouette label, cLISI, NMI/ARI of k-means clusters, isolated labels, on labelled spots (``nn``: their kNN
    graph, when already built). The silhouettes and k-means are ``fast_metrics``' equivalents of scib-metrics'."""
    import scib_metrics as sm

    from stguide.evaluate import fast_metrics as fm

    sil = fm.silhouette_samples(x, labels)
    out = {"silhouette_label": fm.silhouette_label(sil),
           "clisi": float(_quiet(sm.clisi_knn, knn(x, cfg.n_neighbors) if nn is None else nn, labels))}
    out.update(fm.nmi_ari_kmeans(x, labels))
    out["isolated_labels"] = fm.isolated_labels(sil, labels, batch)
    return out


def audit(reps: Mapping[str, np.ndarray], batch: np.ndarray, labels: np.ndarray, x_pre: np.ndarray | None = None,
          cfg: AuditConfig = AuditConfig()) -> pd.DataFrame:
    """One row per representation, one column per metric (``labels`` NaN where unlabelled)."""
    use_compilation_cache()
    batch = np.asarray(batch).astype(str)
    labels = np.asarray(labels, dtype=object)
    idx = seeded_sample(len(batch), cfg.max_spots, cfg.seed)
    lab = labels[idx]
    ok = pd.notna(lab)
    rows = {}
    for name, x in reps.items():
        x = np.asarray(x, dtype=np.float32)[idx]
        nn = knn(x, cfg.n_neighbors)
        nn_labelled = nn if ok.all() else knn(x[ok], cfg.n_neighbors)  # serves graph connectivity and cLISI
        row = batch_metrics(x, batch[idx], lab, None if x_pre is None else np.asarray(x_pre, np.float32)[idx], cfg,
                            nn, nn_labelled)
        if ok.sum() > cfg.n_neighbors and len(set(lab[ok])) > 1:
            row.update(bio_metrics(x[ok], lab[ok].astype(str), batch[idx][ok], cfg, nn_labelled))
        rows[name] = row
    cols = [c for c in (*BATCH_METRICS, *BIO_METRICS) if any(c in r for r in rows.values())]
    return pd.DataFrame.from_dict(rows, orient="index")[cols]


def umap_coords(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """2-D UMAP coordinates of a representation (seeded, single-threaded so they are reproducible)."""
    import umap

    return umap.UMAP(random_state=seed, n_jobs=1).fit_transform(np.asarray(x, np.float32)).astype(np.float32)


@threadpool_limits.wrap(limits=1, user_api="blas")  # small logistic regressions: see stguide.evaluate.probes
def patient_auc(x: np.ndarray, patients: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """How well the features tell patients apart: a standardised logistic regression predicting the patient,
    cross-validated (stratified ``folds``-fold), scored by the macro one-vs-rest ROC AUC (two patients: the plain
    AUC). 0.5 means the features carry no patient, 1.0 that they identify it perfectly."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(patients).astype(str)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        return float("nan")
    k = int(min(folds, counts.min()))
    if k < 2:
        return float("nan")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    proba = cross_val_predict(model, np.asarray(x, np.float32), y, cv=StratifiedKFold(k, shuffle=True, random_state=seed),
                              method="predict_proba")
    return float(roc_auc_score(y, proba[:, 1]) if len(classes) == 2 else roc_auc_score(y, proba, multi_class="ovr", average="macro"))
