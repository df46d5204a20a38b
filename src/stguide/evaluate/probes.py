"""Probes on frozen features: class-balanced logistic regression (C by inner leave-patient-out CV) and cosine kNN."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.model_selection import GroupKFold
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from stguide.errors import InputError


@dataclass(frozen=True)
class ProbeConfig:
    """``Cs``: grid of inverse regularisation strengths for the linear probe, chosen by balanced accuracy in an
    inner cross-validation whose folds are training patients (a single C is used when there is one training
    patient). ``max_iter``: solver iterations. ``k``: neighbours of the cosine kNN probe."""

    Cs: tuple[float, ...] = (0.01, 0.1, 1.0)
    max_iter: int = 2000
    k: int = 15


def _check(y: np.ndarray, where: str) -> None:
    if len(np.unique(y)) < 2:
        raise InputError(where, f"the training labels hold a single class ({np.unique(y).tolist()})",
                         "a probe needs at least two classes among the training patients' labelled spots")


def _linear(C: float, max_iter: int):
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, class_weight="balanced", max_iter=max_iter))


def fit_linear_probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray, cfg: ProbeConfig = ProbeConfig()):
    """Fit the linear probe; returns (model, chosen C, inner scores)."""
    _check(y, "<probe training set>")
    ug = np.unique(groups)
    scores = {}
    if len(cfg.Cs) > 1 and len(ug) >= 2:
        cv = GroupKFold(n_splits=min(len(ug), 5))
        for C in cfg.Cs:
            s = []
            for tr, va in cv.split(x, y, groups):
                if len(np.unique(y[tr])) < 2:
                    continue
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
                    s.append(balanced_accuracy_score(y[va], _linear(C, cfg.max_iter).fit(x[tr], y[tr]).predict(x[va])))
            scores[C] = float(np.mean(s)) if s else float("nan")
        best = max(scores, key=lambda c: (np.nan_to_num(scores[c], nan=-1), -c))
    else:
        best = cfg.Cs[len(cfg.Cs) // 2]
    return _linear(best, cfg.max_iter).fit(x, y), best, scores


def fit_knn_probe(x: np.ndarray, y: np.ndarray, cfg: ProbeConfig = ProbeConfig()):
    """Cosine kNN (k capped at the number of training spots)."""
    _check(y, "<probe training set>")
    return KNeighborsClassifier(n_neighbors=min(cfg.k, len(y)), metric="cosine", weights="uniform").fit(x, y)
