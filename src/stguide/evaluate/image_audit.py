"""Per-cell descriptions of frozen image features: the scib-metrics batch/biology audit (patient as the batch,
label as the biology) and UMAP coordinates for the report. Both read the cell's ``features.npz``, so a resumed or
rebuilt run gives the same numbers."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from stguide.evaluate.audit import AuditConfig, audit, patient_auc, seeded_sample, umap_coords
from stguide.io import atomic_path, write_json_atomic


def load_features(cell: Path) -> dict[str, np.ndarray]:
    """A cell's scored spots: ``obs_names``, features ``x`` (float32), ``patient``, ``label`` and the ``test`` mask."""
    z = np.load(cell / "features.npz", allow_pickle=False)
    return {k: (z[k].astype(np.float32) if k == "x" else z[k]) for k in z.files}


def describe_features(cell: Path, audit_on: bool = True, umap: bool = False, seed: int = 0,
                      cfg: AuditConfig = AuditConfig(), umap_max_spots: int = 5000) -> None:
    """Write ``image_audit.json`` (the scib-metrics row and the cross-validated patient-prediction AUC) and/or
    ``umap.npz`` (2-D coordinates) into ``cell``."""
    f = load_features(cell)
    if audit_on:
        k = max(2, min(cfg.n_neighbors, len(f["x"]) // 4))
        row = audit({"x": f["x"]}, f["patient"], f["label"].astype(object), cfg=AuditConfig(k, cfg.max_spots, cfg.seed)).iloc[0]
        record = {c: float(v) for c, v in row.items()}
        record["patient_auc"] = patient_auc(f["x"], f["patient"], seed=cfg.seed)
        write_json_atomic(cell / "image_audit.json", record)
    if umap:  # at most umap_max_spots spots, drawn at random (seeded); ``rows`` says which
        rows = seeded_sample(len(f["x"]), umap_max_spots, seed)
        with atomic_path(cell / "umap.npz", suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, xy=umap_coords(f["x"][rows], seed), patient=f["patient"][rows], label=f["label"][rows],
                                    rows=rows)
