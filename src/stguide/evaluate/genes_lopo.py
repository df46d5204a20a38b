"""Gene-side LOPO: how well each gene representation predicts a held-out patient's labels.

For every fold, each encoder (gene selection included) is fitted on the training patients only; a linear probe
and a kNN probe trained on the training patients' labelled spots score the held-out patient's labelled spots.
``results.json`` keeps the foundation schema, with one method per encoder.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from os import PathLike
from pathlib import Path

import anndata as ad

from stguide.data.folds import assert_no_leak, lopo_folds
from stguide.data.model import labelled_mask
from stguide.evaluate.lopo import _jsonable, dataset_summary
from stguide.evaluate.metrics import summarise
from stguide.evaluate.probes import ProbeConfig, score_probes
from stguide.genes.base import GeneConfig
from stguide.genes.registry import get_encoder
from stguide.io import write_json_atomic
from stguide.progress import track


def run_gene_lopo(adata: ad.AnnData, encoders: Sequence[str], out_dir: str | PathLike, genes: GeneConfig = GeneConfig(),
                  probe: ProbeConfig = ProbeConfig(), exclude_labels: tuple[str, ...] = ("undetermined",),
                  folds: Sequence[str] | None = None, progress: bool = True, command: str = "") -> dict:
    """Fit every encoder per fold on the training patients, probe the held-out patient; write ``results.json``."""
    out = Path(out_dir)
    lab = labelled_mask(adata, exclude_labels)
    labels = adata.obs["label"].astype(str).to_numpy()
    patients = adata.obs["patient"].astype(str).to_numpy()
    per: dict[str, dict] = {e: {} for e in encoders}
    for fold in lopo_folds(adata, folds, exclude_labels):
        train, test = fold.train & lab, fold.test & lab
        for name in track(encoders, f"holding out {fold.held_out}", enabled=progress):
            enc = get_encoder(name, genes).fit(adata[fold.train], batch_key="patient", labels_key="label", progress=False)
            audit = {"gene_selection": assert_no_leak(adata, fold, fold.train, "gene selection"),
                     "gene_encoder": assert_no_leak(adata, fold, fold.train, f"{name} encoder"),
                     "probe": assert_no_leak(adata, fold, train, "probe")}
            write_json_atomic(out / "folds" / fold.held_out / name / "leakage_audit.json", audit)
            z_train, z_test = enc.transform(adata[train]), enc.transform(adata[test])
            m, _ = score_probes(z_train, labels[train], patients[train], z_test, labels[test], probe)
            write_json_atomic(out / "folds" / fold.held_out / name / "metrics.json", m)
            per[name][fold.held_out] = m
    results = {"methods": {}, "config": _jsonable({"genes": asdict(genes), "probe": asdict(probe), "encoders": list(encoders)}),
               "dataset": dataset_summary(adata), "command": command}
    for name, f in per.items():
        mean, sd = summarise(f)
        results["methods"][name] = {"folds": f, "mean": mean, "sd": sd}
    write_json_atomic(out / "results.json", results)
    return results
