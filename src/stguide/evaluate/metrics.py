"""Classification metrics as pure functions of (y_true, y_pred); see :func:`classification_metrics`."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from sklearn import metrics as skm

METRICS: tuple[str, ...] = ("acc", "bacc", "macro_f1", "weighted_f1", "kappa")


def classification_metrics(y_true: ArrayLike, y_pred: ArrayLike, classes: Sequence | None = None) -> dict[str, float]:
    """Accuracy, balanced accuracy, macro-F1, weighted F1 and Cohen's κ.

    Balanced accuracy and macro-F1 average over the classes present in ``y_true`` (a class absent from the test
    patient cannot be recalled; it is reported by :func:`missing_classes`, not averaged in as zero).
    """
    import warnings

    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
        return _scores(yt, yp, np.unique(yt))


def _scores(y_true: np.ndarray, y_pred: np.ndarray, present: np.ndarray) -> dict[str, float]:
    return {
        "acc": float(skm.accuracy_score(y_true, y_pred)),
        "bacc": float(skm.balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(skm.f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "weighted_f1": float(skm.f1_score(y_true, y_pred, labels=present, average="weighted", zero_division=0)),
        "kappa": float(skm.cohen_kappa_score(y_true, y_pred)) if len(np.unique(np.r_[y_true, y_pred])) > 1 else 0.0,
    }


def missing_classes(y_true: ArrayLike, classes: Sequence) -> list:
    """Classes of the training set that the test patient lacks."""
    return sorted(set(classes) - set(np.asarray(y_true).tolist()))


def summarise(per_fold: dict[str, dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """(mean, sd) over folds of every numeric metric; sd is the sample sd (ddof=1), 0 for a single fold."""
    keys = sorted({k for m in per_fold.values() for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    mean, sd = {}, {}
    for k in keys:
        v = np.array([m[k] for m in per_fold.values() if k in m], dtype=float)
        mean[k] = float(np.mean(v))
        sd[k] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
    return mean, sd
