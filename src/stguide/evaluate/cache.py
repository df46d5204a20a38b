"""The cell cache both LOPO runners share: one folder per (fold, method) cell, finished when its ``key.txt`` (a
hash of every setting and input of the cell) is written beside its result, and resumable while ``key.pending``
holds the same key. Also the dataset key and the pickle-free npz writer the cells use."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np

from stguide.io import atomic_path, fingerprint

DONE = "metrics.json"


def data_key(adata: ad.AnnData) -> str:
    """A content key of a dataset: spot ids, patients, sections, labels, per-spot count totals and genes."""
    obs = adata.obs
    return fingerprint(np.asarray(adata.obs_names).astype(str), obs["patient"].astype(str).to_numpy(),
                       obs["section"].astype(str).to_numpy(), obs["label"].astype(str).to_numpy(),
                       np.asarray(adata.X.sum(1)).ravel().astype(np.float64), list(map(str, adata.var_names)))


def key_matches(folder: Path, key: str, done: str | None = DONE) -> bool:
    """True when ``folder`` holds a finished artefact (``done`` present) computed under ``key`` (its ``key.txt``)."""
    k = folder / "key.txt"
    return k.is_file() and k.read_text() == key and (done is None or (folder / done).is_file())


def start_cell(cell: Path, key: str) -> bool:
    """Prepare a cell for (re)computation; True when an interrupted run of the same key can resume its checkpoint
    (the folder is kept), False when the folder was emptied for a fresh start."""
    pending = cell / "key.pending"
    if pending.is_file() and pending.read_text() == key:
        return True
    if cell.exists():
        shutil.rmtree(cell)
    cell.mkdir(parents=True)
    pending.write_text(key)
    return False


def finish_cell(cell: Path, key: str) -> None:
    """Mark a cell finished under ``key`` (its result files must be written before)."""
    (cell / "key.txt").write_text(key)
    (cell / "key.pending").unlink(missing_ok=True)


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    """Atomic, pickle-free npz (object arrays are stored as unicode strings)."""
    plain: dict[str, Any] = {k: np.asarray(v).astype(str) if np.asarray(v).dtype == object else v for k, v in arrays.items()}
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, allow_pickle=False, **plain)
