"""Gene-side LOPO: how well each gene representation predicts a held-out patient's labels.

For every fold, each encoder (gene selection included) is fitted on the training patients only; a linear probe
and a kNN probe trained on the training patients' labelled spots score the held-out patient's labelled spots.
``results.json`` keeps the foundation schema, with one method per encoder. Each (fold, encoder) cell is cached
under ``folds/<patient>/<encoder>/`` with a key of its settings (the shared cell cache of ``evaluate/cache.py``),
so an interrupted run continues where it stopped. The leakage audit of a cell is written before its fit.
"""
from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict
from os import PathLike
from pathlib import Path
from typing import Any

import anndata as ad

from stguide.data.folds import assert_no_leak, lopo_folds
from stguide.data.model import EXCLUDED_LABELS, dataset_summary, labelled_mask
from stguide.evaluate.cache import data_key, finish_cell, key_matches, start_cell
from stguide.evaluate.metrics import mean_recalls, summarise
from stguide.evaluate.probes import ProbeConfig, score_probes
from stguide.genes import GeneConfig, get_encoder
from stguide.io import fingerprint, write_json_atomic
from stguide.progress import track


def run_gene_lopo(adata: ad.AnnData, encoders: Sequence[str], out_dir: str | PathLike, genes: GeneConfig = GeneConfig(),
                  probe: ProbeConfig = ProbeConfig(), exclude_labels: Sequence[str] = EXCLUDED_LABELS,
                  folds: Sequence[str] | None = None, progress: bool = True, command: str = "",
                  batch_key: str = "patient") -> dict:
    """Fit every encoder per fold on the training patients, probe the held-out patient; write ``results.json``.

    ``batch_key``: the obs column the encoders treat as the batch (``patient``, or ``section`` for a finer one); the
    folds always hold out whole patients.
    """
    out = Path(out_dir)
    dkey = data_key(adata)
    lab = labelled_mask(adata, exclude_labels)
    labels = adata.obs["label"].astype(str).to_numpy()
    patients = adata.obs["patient"].astype(str).to_numpy()
    per: dict[str, dict] = {e: {} for e in encoders}
    for fold in lopo_folds(adata, folds, exclude_labels):
        train, test = fold.train & lab, fold.test & lab
        for name in track(encoders, f"holding out {fold.held_out}", enabled=progress):
            cell = out / "folds" / fold.held_out / name
            enc = get_encoder(name, genes)
            key = fingerprint(enc.settings(), asdict(probe), list(exclude_labels), batch_key, dkey, fold.held_out,
                              "query: all held-out spots")
            if key_matches(cell, key):
                per[name][fold.held_out] = json.loads((cell / "metrics.json").read_text())
                continue
            start_cell(cell, key)
            audit = {"gene_selection": assert_no_leak(adata, fold, fold.train, "gene selection"),
                     "gene_encoder": assert_no_leak(adata, fold, fold.train, f"{name} encoder"),
                     "probe": assert_no_leak(adata, fold, train, "probe")}
            mapping = enc.query_mapping()
            if mapping is not None:
                audit[f"{name}_query_mapping"] = {"patients": [fold.held_out], **mapping}
            write_json_atomic(cell / "leakage_audit.json", audit)
            t0 = time.perf_counter()
            enc.fit(adata[fold.train], batch_key=batch_key, labels_key="label", exclude_labels=exclude_labels, progress=False)
            t_fit = time.perf_counter() - t0
            # the held-out patient is embedded from all its spots (a query mapping sees its unlabelled expression,
            # never which spots carry a label), then the labelled ones are scored
            z_train, z_test = enc.transform(adata[train]), enc.transform(adata[fold.test])[lab[fold.test]]
            m, _ = score_probes(z_train, labels[train], patients[train], z_test, labels[test], probe)
            write_json_atomic(cell / "metrics.json", m)
            write_json_atomic(cell / "fit.json", {"fit_seconds": round(t_fit, 1), "transform_seconds":
                                                  round(time.perf_counter() - t0 - t_fit, 1), "fitted_on": enc.fitted_on})
            finish_cell(cell, key)
            per[name][fold.held_out] = m
    results: dict[str, Any] = {"methods": {}, "config": {"genes": asdict(genes), "probe": asdict(probe), "encoders": list(encoders),
                                         "exclude_labels": list(exclude_labels), "batch_key": batch_key},
               "dataset": dataset_summary(adata), "command": command}
    for name, f in per.items():
        mean, sd = summarise(f)
        results["methods"][name] = {"folds": f, "mean": mean, "sd": sd, "recall": mean_recalls(f),
                                    "knn_recall": mean_recalls({k: {"recall": v.get("knn_recall", {})} for k, v in f.items()})}
    write_json_atomic(out / "results.json", results)
    return results
