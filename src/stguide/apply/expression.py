"""Image → expression, evaluated leave-one-patient-out on a finished run.

Two predictors of a held-out spot's log-normalised expression from its image, both fitted on the training patients
of each fold only:

- **retrieval** (BLEEP's): the spot's image embedding (the trained image head) against the gene embeddings of the
  training spots (the trained gene head on the fold's gene-encoder latent); the expression of the ``k`` most
  cosine-similar training spots, averaged;
- **ridge** (the HEST-Benchmark baseline): a ridge regression from the image features the probe reads (standardised,
  the penalty chosen by leave-one-out cross-validation over a grid) to the genes' expression.

Scored by Pearson's r per gene between predicted and measured expression, for the top ``n_hvg`` highly variable
genes of the training patients and for marker genes, both **pooled** over the held-out patient's spots and **per
slide** (the mean over its sections of the per-section r); peers report one or the other.
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stguide.apply.runcell import TrainedCell, cell_tower, open_cell, run_store
from stguide.apply.tower import embed_patches
from stguide.errors import InputError

MARKERS = ("ERBB2", "ESR1", "EPCAM", "PTPRC", "COL1A1", "PLIN1", "KRT5", "ACTA2")


def retrieve(query: np.ndarray, reference: np.ndarray, ref_expression: np.ndarray, k: int = 50) -> np.ndarray:
    """The mean expression of each query's ``k`` most cosine-similar reference spots (rows L2-normalised here)."""
    q = query / np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    r = reference / np.maximum(np.linalg.norm(reference, axis=1, keepdims=True), 1e-12)
    k = min(k, len(r))
    out = np.empty((len(q), ref_expression.shape[1]), np.float64)
    for s in range(0, len(q), 1024):
        sim = q[s:s + 1024] @ r.T
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        out[s:s + 1024] = ref_expression[top].mean(1)
    return out


def ridge(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, alphas: Sequence[float] = (1.0, 10.0, 100.0, 1000.0, 10000.0)) -> np.ndarray:
    """Ridge regression on standardised features, the penalty by efficient leave-one-out CV (scikit-learn's RidgeCV)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RidgeCV(alphas=list(alphas))).fit(xtr, ytr).predict(xte)


def pearson_per_gene(y: np.ndarray, yhat: np.ndarray) -> np.ndarray:
    """Pearson's r of each column (NaN where either side is constant)."""
    yc, pc = y - y.mean(0), yhat - yhat.mean(0)
    den = np.sqrt((yc ** 2).sum(0) * (pc ** 2).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (yc * pc).sum(0) / den, np.nan)


def _embed(tower, transform, store, names: list[str], batch_size: int = 64) -> tuple[np.ndarray | None, np.ndarray]:
    """(head embedding or None, the probed features) of the spots ``names``, one forward pass each."""
    parts = [embed_patches(tower, transform, store.take(names[s:s + batch_size])) for s in range(0, len(names), batch_size)]
    us = [u for _, u in parts if u is not None]
    return (np.concatenate(us) if us else None), np.concatenate([p for p, _ in parts])


def gene_embedding(c: TrainedCell, sd: dict[str, torch.Tensor], adata, enc=None) -> np.ndarray:
    """The trained gene head on the fold's gene-encoder latent of ``adata``'s spots (``enc``: the fold's encoder,
    loaded when not given)."""
    import torch.nn.functional as F

    from stguide.contrastive.heads import ProjectionHead
    from stguide.genes import load_encoder

    if c.ccfg.finetune_gene_encoder:
        raise InputError(c.path, "the gene encoder was fine-tuned in stage 2, so its fitted latent is not what the gene head saw",
                         "evaluate a method that froze the gene encoder")
    enc = enc or load_encoder(c.run / "folds" / c.fold / "genes" / c.method.gene_encoder)
    z = torch.as_tensor(enc.transform(adata), dtype=torch.float32)
    w = sd["gene_head.proj.weight"]
    head = ProjectionHead(int(w.shape[1]), int(w.shape[0]), c.ccfg.dropout)
    head.load_state_dict({k[len("gene_head."):]: v for k, v in sd.items() if k.startswith("gene_head.")})
    with torch.no_grad():
        return F.normalize(head.eval()(z), dim=1).numpy()


def expression_lopo(run_dir: str | PathLike, method: str, n_hvg: int = 50, markers: Sequence[str] = MARKERS, k: int = 50,
                    progress: bool = True) -> dict[str, Any]:
    """Retrieval and ridge image → expression of ``method``'s models, every fold of the run (seed 0)."""
    from stguide.data.model import read_dataset
    from stguide.genes.base import select_genes
    from stguide.genes.expression import log_normalise
    from stguide.progress import track

    run = Path(run_dir)
    first = open_cell(run, method)
    adata = read_dataset(run / "data" / "dataset.h5ad")
    store = run_store(first, adata)
    has = store.has(adata.obs_names)
    adata = adata[has].copy()
    expr_all = log_normalise(adata.X)
    patients = adata.obs["patient"].astype(str).to_numpy()
    sections = adata.obs["section"].astype(str).to_numpy()
    folds = sorted(first.results["methods"][method]["folds"])
    out: dict[str, Any] = {"method": method, "k": k, "n_hvg": n_hvg, "folds": {}}
    for fold in track(folds, f"image → expression ({method})", enabled=progress):
        c = open_cell(run, method, fold)
        audit = json.loads((c.path / "leakage_audit.json").read_text())
        test = np.isin(patients, audit["held_out"]["patients"])
        train = ~test
        hvg = select_genes(adata[train], n_hvg)
        present = [g for g in markers if g in adata.var_names and g not in hvg]
        genes = hvg + present
        col = adata.var_names.get_indexer(genes)
        y = expr_all[:, col].astype(np.float64)
        names = list(map(str, adata.obs_names))
        tower, transform, sd = cell_tower(c)
        u, probed = _embed(tower, transform, store, names)
        preds = {"ridge": ridge(probed[train], y[train], probed[test])}
        if u is not None and c.method.gene_encoder:
            v = gene_embedding(c, sd, adata[train])
            preds["retrieval"] = retrieve(u[test], v, y[train], k)
        res: dict[str, Any] = {"genes": genes, "markers": present + [g for g in markers if g in hvg]}
        for name, yhat in preds.items():
            pooled = pearson_per_gene(y[test], yhat)
            per = [pearson_per_gene(y[test][sections[test] == s], yhat[sections[test] == s]) for s in np.unique(sections[test])]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a gene constant on every slide has no r
                per_slide = np.nanmean(np.stack(per), axis=0) if per else np.full(len(genes), np.nan)
            res[name] = {"pooled": dict(zip(genes, map(float, pooled), strict=True)),
                         "per_slide": dict(zip(genes, map(float, per_slide), strict=True)),
                         "hvg_mean_pooled": float(np.nanmean(pooled[:len(hvg)])), "hvg_mean_per_slide": float(np.nanmean(per_slide[:len(hvg)]))}
        out["folds"][fold] = res
    return out


def expression_table(res: dict[str, Any]) -> str:
    """Markdown: mean r over the top HVGs per fold and predictor (pooled / per slide), and r of each marker."""
    folds = sorted(res["folds"])
    preds = sorted({p for f in res["folds"].values() for p in f if p in ("ridge", "retrieval")})
    md = f"| predictor | r over the top {res['n_hvg']} HVGs: " + ", ".join(f"{f} pooled / per slide" for f in folds) + " |\n|---|---|\n"
    for p in preds:
        cells = [f"{res['folds'][f][p]['hvg_mean_pooled']:.3f} / {res['folds'][f][p]['hvg_mean_per_slide']:.3f}" if p in res["folds"][f] else "–"
                 for f in folds]
        md += f"| {p} | " + "; ".join(f"{f} {c}" for f, c in zip(folds, cells, strict=True)) + " |\n"
    markers = sorted({g for f in res["folds"].values() for g in f["markers"]})
    if markers:
        md += "\n| marker | " + " | ".join(f"{p} pooled (mean over folds)" for p in preds) + " |\n|---|" + "---|" * len(preds) + "\n"
        for g in markers:
            vals = [np.nanmean([res["folds"][f][p]["pooled"].get(g, np.nan) for f in folds if p in res["folds"][f]]) for p in preds]
            md += f"| {g} | " + " | ".join(f"{v:.3f}" for v in vals) + " |\n"
    return md
