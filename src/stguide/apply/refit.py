"""Refit one method of a finished run on every patient (``stguide export --refit-all``): the model a user applies
to new slides, trained with the run's settings on all its data. Nothing is held out, so the refit has no score of
its own; the run's leave-one-patient-out scores estimate how it does on a new patient."""
from __future__ import annotations

from os import PathLike
from pathlib import Path

import numpy as np

from stguide.apply.runcell import REFIT, REFIT_DIR, check_exportable, open_cell, run_store
from stguide.data.folds import Fold
from stguide.data.model import labelled_mask, read_dataset
from stguide.errors import InputError
from stguide.evaluate.cache import data_key, finish_cell, key_matches, save_npz, start_cell
from stguide.evaluate.lopo import CellContext, cell_features, cell_path, trains
from stguide.evaluate.probes import fit_linear_probe, probe_arrays
from stguide.genes import get_encoder
from stguide.io import fingerprint, write_json_atomic


def refit_all(run_dir: str | PathLike, method: str, seed: int = 0, progress: bool = True) -> Path:
    """Train ``method`` of the run ``run_dir`` on every patient (gene encoder, contrastive model, linear probe with C
    chosen by the run's inner cross-validation over patients) and return its cell folder
    (``refit/<method>/[seed<k>/]``). Cached like a LOPO cell: a second call with the same run reloads it."""
    c = open_cell(run_dir, method, seed=seed)
    run, cfg, m, ccfg, pcfg = c.run, c.cfg, c.method, c.ccfg, c.pcfg
    check_exportable(c)  # before anything trains
    adata = read_dataset(run / "data" / "dataset.h5ad")
    store = run_store(c, adata)
    names = np.asarray(adata.obs_names)
    has_patch = store.has(names)
    fold = Fold(REFIT, train=np.ones(adata.n_obs, bool), test=np.zeros(adata.n_obs, bool), patients=())
    out = run / REFIT_DIR
    cell = cell_path(out, m, ccfg, cfg.lopo.seeds, ccfg.seed)
    dkey = data_key(adata)
    genes = get_encoder(m.gene_encoder, cfg.genes).settings() if m.gene_encoder else None
    key = fingerprint("refit-all", c.results["config"], method, ccfg.seed, genes, dkey, store.path.name)
    if key_matches(cell, key):
        return cell
    resume = start_cell(cell, key)
    ctx = CellContext(cfg, adata, store, dkey, progress, None, run / "features")
    lab = labelled_mask(adata, cfg.exclude_labels) & has_patch
    if not lab.any():
        raise InputError(run / "data" / "dataset.h5ad", "has no labelled spot with a patch", "label some spots to fit the probe")
    x = cell_features(m, ccfg, pcfg, ctx, fold, out, cell, resume, names[lab])
    patients = adata.obs["patient"].astype(str).to_numpy()
    y = adata.obs["label"].astype(str).to_numpy()[lab]
    lin, C, scores = fit_linear_probe(x, y, patients[lab], pcfg)
    everyone = sorted(set(patients))
    audit = {"held_out": {"fold": REFIT, "patients": [], "n_scored_spots": 0},
             "probe": {"patients": sorted(set(patients[lab])), "spots": int(lab.sum())}}
    if m.gene_encoder:
        audit.update(gene_selection={"patients": everyone}, gene_encoder={"patients": everyone})
    if trains(m, ccfg):
        audit["contrastive"] = {"patients": sorted(set(patients[has_patch]))}
    write_json_atomic(cell / "leakage_audit.json", audit)
    save_npz(cell / "probe.npz", **probe_arrays(lin))
    write_json_atomic(cell / "metrics.json", {"C": float(C), "inner_cv_bacc": {str(k): v for k, v in scores.items()},
                                              "n_train": int(lab.sum()), "refit": True})
    finish_cell(cell, key)
    return cell

