"""Leave-one-patient-out folds: the one place that decides who is held out.

A fold holds out every section of one patient. Patients without a labelled spot cannot be scored, so they get
no fold of their own, but their spots still train every fit of every fold (they are never a test patient).

``by="section"`` makes one fold per labelled section instead. It exists so that the leakage audit can be shown to
catch the trap peers fell into: a held-out section whose patient keeps other sections in training. Every fit of
such a fold is refused by :func:`assert_no_leak`, unless each patient has a single section.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np

from stguide.data.model import EXCLUDED_LABELS, labelled_mask
from stguide.errors import InputError, LeakageError


@dataclass(frozen=True)
class Fold:
    """One LOPO fold: ``held_out`` patient (or section), boolean masks over the dataset's spots, and the patients
    of the test spots (which no fit may see)."""

    held_out: str
    train: np.ndarray
    test: np.ndarray
    patients: tuple[str, ...] = ()


def lopo_folds(
    adata: ad.AnnData,
    patients: Sequence[str] | None = None,
    exclude_labels: Sequence[str] = EXCLUDED_LABELS,
    by: str = "patient",
) -> list[Fold]:
    """One fold per patient with at least one labelled spot (or per patient in ``patients``); ``by="section"``:
    per labelled section (leaky when a patient has several sections; see the module docstring).

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
    if by == "section":
        sec = adata.obs["section"].astype(str).to_numpy()
        secs = [s for s in dict.fromkeys(sec) if pat[sec == s][0] in chosen and lab[sec == s].any()]
        return [Fold(s, sec != s, sec == s, (str(pat[sec == s][0]),)) for s in secs]
    if by != "patient":
        raise InputError("config:fold_by", f"unknown fold unit {by!r}", "use 'patient' (or 'section' to demonstrate leakage)")
    return [Fold(p, pat != p, pat == p, (p,)) for p in chosen]


def refuse_leak(seen: Sequence[str], held_out: Sequence[str], what: str, where: str, detail: str = "",
                fix: str = "Hold out whole patients (fold_by: patient).") -> None:
    """Raise :class:`LeakageError` when a fit that saw the patients ``seen`` would be scored on one of ``held_out``
    (the one check behind every leakage refusal)."""
    leaked = sorted(set(map(str, held_out)) & set(map(str, seen)))
    if leaked:
        raise LeakageError(f"leakage: {what} of {where} would be fitted on held-out patient(s) {leaked}{detail}; "
                           f"refusing to fit or score it. {fix}")


def assert_no_leak(adata: ad.AnnData, fold: Fold, mask: np.ndarray, what: str) -> dict:
    """The audit record of one fit (patients and number of spots it sees); raises :class:`LeakageError` if that
    includes a held-out patient."""
    pat = adata.obs["patient"].astype(str).to_numpy()
    seen = sorted(set(pat[mask]))
    held = set(fold.patients or (fold.held_out,)) | set(pat[fold.test])
    n = int((mask & np.isin(pat, sorted(held))).sum())
    refuse_leak(seen, sorted(held), what, f"fold {fold.held_out!r}", f" ({n} of their spots)")
    return {"patients": seen, "n_spots": int(mask.sum())}
