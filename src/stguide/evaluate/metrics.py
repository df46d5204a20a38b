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
        warnings.filterwarnings("ignore", "A single label was found")  # a patient with one class (common in the 3-class view)
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


THREE_CLASSES = {"invasive cancer": "invasive cancer", "cancer in situ": "cancer in situ"}
"""The 3-class view: invasive cancer / cancer in situ / everything else (``other``)."""


def three_class(y: ArrayLike) -> np.ndarray:
    """Labels mapped to the 3-class view (invasive cancer, cancer in situ, other)."""
    return np.array([THREE_CLASSES.get(str(c), "other") for c in np.asarray(y)], dtype=object)


def class_recalls(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """Recall of every class present in ``y_true`` (the fraction of its spots predicted as it)."""
    yt, yp = np.asarray(y_true).astype(str), np.asarray(y_pred).astype(str)
    return {str(c): float(np.mean(yp[yt == c] == c)) for c in np.unique(yt)}


def detailed_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, object]:
    """:func:`classification_metrics` plus the recall per class (``recall``) and the balanced accuracy and
    macro-F1 of the 3-class view (``bacc3``, ``macro_f1_3``)."""
    m: dict[str, object] = dict(classification_metrics(y_true, y_pred))
    three = classification_metrics(three_class(y_true), three_class(y_pred))
    m.update(bacc3=three["bacc"], macro_f1_3=three["macro_f1"], recall=class_recalls(y_true, y_pred))
    return m


def mean_recalls(per_fold: dict[str, dict]) -> dict[str, float]:
    """Mean over the folds where a class is present of its recall (``metrics["recall"]``)."""
    by_class: dict[str, list[float]] = {}
    for m in per_fold.values():
        for c, r in m.get("recall", {}).items():
            by_class.setdefault(c, []).append(r)
    return {c: float(np.mean(v)) for c, v in by_class.items()}
