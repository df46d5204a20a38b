"""Leave-one-patient-out folds: the one place that decides who is held out.

A fold holds out every section of one patient. Patients without a labelled spot cannot be scored, so they get
no fold of their own, but their spots still train every fit of every fold (they are never a test patient).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np

from stguide.data.model import labelled_mask
from stguide.errors import InputError


@dataclass(frozen=True)
class Fold:
    """One LOPO fold: ``held_out`` patient, and boolean masks over the dataset's spots."""

    held_out: str
    train: np.ndarray
    test: np.ndarray


def lopo_folds(
    adata: ad.AnnData,
    patients: Sequence[str] | None = None,
    exclude_labels: Sequence[str] = ("undetermined",),
) -> list[Fold]:
    """One fold per patient with at least one labelled spot (or per patient in ``patients``).

    Raises :class:`InputError` when a requested patient is unknown or has no labelled spot, or when fewer than
    two patients exist (nothing to train on).
    """
    pat = adata.obs["patient"].astype(str).to_numpy()
    all_p = list(dict.fromkeys(pat))
    if len(all_p) < 2:
        raise InputError("<dataset>", f"only {len(all_p)} patient(s); leave-one-patient-out needs at least 2", "add patients")
    lab = labelled_mask(adata, exclude_labels)
    scorable = [p for p in all_p if lab[pat == p].any()]
    if patients is None:
        chosen = scorable
        if not chosen:
            raise InputError("<dataset>", "no patient has a labelled spot", "add labels (obs['label']) to at least one patient")
    else:
        chosen = [str(p) for p in patients]
        for p in chosen:
            if p not in all_p:
                raise InputError("config:folds", f"patient {p!r} is not in the dataset", f"choose among {all_p}")
            if p not in scorable:
                raise InputError("config:folds", f"held-out patient {p!r} has no labelled spot, so its fold cannot be scored",
                                 f"hold out a labelled patient ({scorable}); unlabelled patients still train every fold")
    return [Fold(p, pat != p, pat == p) for p in chosen]


def assert_no_leak(adata: ad.AnnData, fold: Fold, mask: np.ndarray, what: str) -> dict:
    """The audit record of one fit; raises ``RuntimeError`` if it saw the held-out patient."""
    pat = adata.obs["patient"].astype(str).to_numpy()[mask]
    seen = sorted(set(pat))
    if fold.held_out in seen:
        raise RuntimeError(f"leakage: {what} was fitted on held-out patient {fold.held_out!r}")
    return {"patients": seen, "n_spots": int(mask.sum())}
