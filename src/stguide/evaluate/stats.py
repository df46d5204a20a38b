"""Statistics that can decide: paired differences from a baseline with a bootstrap confidence interval.

A method and its baseline are scored on the same folds (held-out patients) and seeds, so their difference is taken
pair by pair, ``d[fold][seed] = method − baseline``. The bootstrap resamples folds with replacement and, within each
drawn fold, its seeds with replacement (a two-level, hierarchical bootstrap: folds are the independent units,
seeds repeat a fold); each replicate is the mean of the drawn differences. The 95 % interval is the 2.5th and
97.5th percentile of the replicates. With three folds the interval is coarse: it cannot be narrower than what three
patients allow, and it says so by being wide.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def paired_differences(method: Mapping[str, Mapping[int, float]], baseline: Mapping[str, Mapping[int, float]]
                       ) -> dict[str, list[float]]:
    """``{fold: [method − baseline for each seed]}`` over the folds both have; a baseline fold with one value (a
    method that does not depend on the seed) is paired with every seed of the method, otherwise seeds pair with the
    same seed (those only one side has are left out)."""
    out: dict[str, list[float]] = {}
    for fold, runs in method.items():
        if fold not in baseline:
            continue
        base = baseline[fold]
        if len(base) == 1:
            only = float(next(iter(base.values())))
            out[fold] = [float(v) - only for _, v in sorted(runs.items())]
        else:
            out[fold] = [float(v) - float(base[s]) for s, v in sorted(runs.items()) if s in base]
    return out


def bootstrap_ci(diffs: Mapping[str, Sequence[float]], n_boot: int = 10000, seed: int = 0, level: float = 0.95
                 ) -> tuple[float, float, float]:
    """(mean difference, lower, upper) of the two-level bootstrap described in the module docstring."""
    folds = [np.asarray(v, dtype=float) for v in diffs.values() if len(v)]
    if not folds:
        return float("nan"), float("nan"), float("nan")
    mean = float(np.mean([f.mean() for f in folds]))
    rng = np.random.default_rng(seed)
    k = len(folds)
    reps = np.empty(n_boot)
    for b in range(n_boot):
        drawn = rng.integers(0, k, k)
        reps[b] = np.mean([folds[i][rng.integers(0, len(folds[i]), len(folds[i]))].mean() for i in drawn])
    lo, hi = np.percentile(reps, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return mean, float(lo), float(hi)
