"""Probes on frozen features: class-balanced logistic regression (C by inner leave-patient-out CV) and cosine kNN."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from stguide.config import ConfigError, FromDict
from stguide.errors import InputError
from stguide.evaluate.knn import knn_classifier
from stguide.evaluate.metrics import classification_metrics, detailed_metrics, missing_classes


@dataclass(frozen=True)
class ProbeConfig(FromDict):
    """How frozen image features are scored (YAML section ``probe:``). ``features``: the representation probed,
    the ``backbone`` output (for ``trunk: frozen``, the trunk's own features), the projection ``head``'s, or
    ``both`` side by side (backbone ‖ head). A method that trains probes its head instead of ``backbone`` when the
    training cannot change the backbone (``trunk: frozen``, or ``freeze_backbone`` in end-to-end training): its
    backbone features are the untrained trunk's, the same as a method that trains nothing (:func:`probed_features`).
    ``centre: patient`` subtracts each patient's mean feature before the probes (label-free but transductive: the
    held-out patient's mean comes from its own unlabelled spots; recorded in the leakage audit). ``Cs``: grid of
    inverse regularisation strengths for the linear probe, chosen by balanced accuracy in an inner cross-validation
    whose folds are training patients (a single C is used when there is one training patient). ``c_tolerance``: the smallest C whose inner score is within
    this of the best is taken (0: the best; with two or three training patients the inner scores of the grid often lie
    within 0.001 of each other, and a tolerance keeps the choice from flipping on noise). ``max_iter``: solver
    iterations. ``tol``: the L-BFGS stopping tolerance (the largest gradient component of scikit-learn's mean loss).
    scikit-learn's default, 1e-4, stops the fits far from their optimum on image features of ~1,000 spots: on real
    HER2ST folds the inner scores moved by up to 0.013 and the chosen C with them (benchmarks/probe_scaling.py), so
    the chosen C followed the solver's stopping point rather than the data. At 1e-6 the fits agree with 1e-8 on
    every fold there. ``warm_start``: each inner fold fits the grid in ascending C, each fit starting from the
    solution at the C before: fewer iterations to the same optimum (at ``tol`` 1e-6, the same chosen C and held-out
    balanced accuracy as cold fits on every real HER2ST fold there). The results of docs/results.md were computed
    with ``tol: 1.0e-4, warm_start: false``, which their configs pin. ``k``: neighbours of the cosine kNN probe.
    ``knn_exact_max``: the kNN probe searches exactly while the training spots number at most this. Above it,
    ``knn_dims``: candidates are found among the features projected on this many principal axes and re-ranked by
    their exact distance (0: no projection), and ``knn_index_min``: above this many training spots the candidates
    come from a pynndescent index instead of brute force (:mod:`stguide.evaluate.knn`)."""

    section: ClassVar[str] = "probe"

    features: Literal["backbone", "head", "both"] = "backbone"
    Cs: tuple[float, ...] = (0.01, 0.1, 1.0)
    max_iter: int = 2000
    k: int = 15
    centre: Literal["none", "patient"] = "none"
    c_tolerance: float = 0.0
    tol: float = 1e-6
    warm_start: bool = True
    knn_exact_max: int = 20_000
    knn_dims: int = 128
    knn_index_min: int = 200_000

    def __post_init__(self) -> None:
        if not self.Cs or any(not c > 0 for c in self.Cs):
            raise ConfigError("Cs", f"must be one or more positive numbers, got {list(self.Cs)}", "e.g. [0.01, 0.1, 1.0]")
        if not self.tol > 0:
            raise ConfigError("tol", f"must be positive, got {self.tol}", "use the default 1.0e-6 (1.0e-4: the results before issue 30)")
        for key, value, low in (("max_iter", self.max_iter, 1), ("k", self.k, 1), ("knn_exact_max", self.knn_exact_max, 0),
                                ("knn_dims", self.knn_dims, 0), ("knn_index_min", self.knn_index_min, 0)):
            if value < low:
                raise ConfigError(key, f"must be at least {low}, got {value}", f"set {key} to {low} or more")
        if not self.c_tolerance >= 0:
            raise ConfigError("c_tolerance", f"must be ≥ 0, got {self.c_tolerance}", "use 0 (the best inner score) or e.g. 0.01")


def probed_features(features: str, backbone_trained: bool) -> str:
    """What a trained method's probes read: ``features``, with ``backbone`` giving way to ``head`` when the training
    left the backbone as it was (probing it would score the untrained trunk under the method's name)."""
    return "head" if features == "backbone" and not backbone_trained else features


def _check(y: np.ndarray, where: str) -> None:
    if len(np.unique(y)) < 2:
        raise InputError(where, f"the training labels hold a single class ({np.unique(y).tolist()})",
                         "a probe needs at least two classes among the training patients' labelled spots")


def _logistic(C: float, cfg: ProbeConfig) -> LogisticRegression:
    return LogisticRegression(C=C, class_weight="balanced", max_iter=cfg.max_iter, tol=cfg.tol, warm_start=cfg.warm_start)


def _linear(C: float, cfg: ProbeConfig):
    return make_pipeline(StandardScaler(), _logistic(C, replace(cfg, warm_start=False)))


def choose_c(scores: dict[float, float], tolerance: float = 0.0) -> float:
    """The most regularised (smallest) C whose inner score is within ``tolerance`` of the best one (``tolerance``
    0: the best, the smallest C on an exact tie)."""
    valid = {c: v for c, v in scores.items() if v == v}
    if not valid:
        return min(scores)
    top = max(valid.values())
    return min(c for c, v in valid.items() if v >= top - tolerance)


# The probe's L-BFGS iterations multiply a (spots × features) matrix by a few class columns: too small for BLAS
# threads to pay their synchronisation, which on 2 cores made the probes several times slower than one thread
# (docs/performance.md). Torch and the other stages keep their threads.
@threadpool_limits.wrap(limits=1, user_api="blas")
def fit_linear_probe(x: np.ndarray, y: np.ndarray, groups: np.ndarray, cfg: ProbeConfig = ProbeConfig()):
    """Fit the linear probe; returns (model, chosen C, inner scores)."""
    _check(y, "<probe training set>")
    ug = np.unique(groups)
    scores = {}
    if len(cfg.Cs) > 1 and len(ug) >= 2:
        cv = GroupKFold(n_splits=min(len(ug), 5))
        per_c: dict[float, list[float]] = {C: [] for C in cfg.Cs}
        for tr, va in cv.split(x, y, groups):
            if len(np.unique(y[tr])) < 2:
                continue
            scaler = StandardScaler().fit(x[tr])  # what _linear's pipeline fits on x[tr], once for the whole grid
            xtr, xva = scaler.transform(x[tr]), scaler.transform(x[va])
            lr = _logistic(1.0, cfg)  # C set per grid point below
            for C in sorted(cfg.Cs):
                per_c[C].append(classification_metrics(y[va], lr.set_params(C=C).fit(xtr, y[tr]).predict(xva))["bacc"])
        scores = {C: float(np.mean(s)) if s else float("nan") for C, s in per_c.items()}
        best = choose_c(scores, cfg.c_tolerance)
    else:
        best = cfg.Cs[len(cfg.Cs) // 2]
    return _linear(best, cfg).fit(x, y), best, scores


def fit_knn_probe(x: np.ndarray, y: np.ndarray, cfg: ProbeConfig = ProbeConfig()):
    """Cosine kNN (k capped at the number of training spots), as Euclidean kNN on L2-normalised features: the same
    neighbours (‖a − b‖² = 2 − 2 cos(a, b) for unit vectors) through scikit-learn's multi-threaded Euclidean search,
    2× faster than its ``metric="cosine"`` at 32k spots (benchmarks/scaling_profile.py). Exact up to
    ``cfg.knn_exact_max`` training spots, an approximate index above (:func:`stguide.evaluate.knn.knn_classifier`).
    (A zero feature vector, with no direction, is at cosine distance 0.5 from every spot here, 1 in scikit-learn's
    convention.)"""
    _check(y, "<probe training set>")
    return knn_classifier(x, y, cfg.k, cfg.knn_exact_max, cfg.knn_dims, cfg.knn_index_min)


@dataclass(frozen=True)
class ProbeScores:
    """What :func:`fit_and_score` gives: the metrics, the linear probe's predictions and class probabilities on the
    test spots, and the linear probe as plain arrays (:func:`probe_arrays`)."""

    metrics: dict[str, Any]
    pred: np.ndarray
    proba: np.ndarray
    linear: dict[str, np.ndarray]


def fit_and_score(xtr: np.ndarray, ytr: np.ndarray, groups: np.ndarray, xte: np.ndarray, yte: np.ndarray,
                  cfg: ProbeConfig = ProbeConfig()) -> ProbeScores:
    """Fit both probes on the training spots and score the test spots.

    The metrics are the linear probe's (:func:`detailed_metrics`: with the recall per class and the 3-class view),
    the kNN's with a ``knn_`` prefix, ``n_train``, ``n_test``, the chosen ``C`` and the training classes absent from
    the test set.
    """
    lin, C, _ = fit_linear_probe(xtr, ytr, groups, cfg)
    knn = fit_knn_probe(xtr, ytr, cfg)
    pred = lin.predict(xte)
    m: dict[str, Any] = detailed_metrics(yte, pred)
    m.update({f"knn_{k}": v for k, v in detailed_metrics(yte, knn.predict(xte)).items()})
    m.update(n_train=int(len(ytr)), n_test=int(len(yte)), C=float(C), missing_classes=missing_classes(yte, sorted(set(ytr))))
    return ProbeScores(m, pred, lin.predict_proba(xte), probe_arrays(lin))


def score_probes(xtr: np.ndarray, ytr: np.ndarray, groups: np.ndarray, xte: np.ndarray, yte: np.ndarray,
                 cfg: ProbeConfig = ProbeConfig()) -> tuple[dict, np.ndarray]:
    """(metrics, linear-probe predictions) of :func:`fit_and_score`."""
    s = fit_and_score(xtr, ytr, groups, xte, yte, cfg)
    return s.metrics, s.pred


def probe_arrays(model) -> dict[str, np.ndarray]:
    """The fitted linear probe (scaler + logistic regression) as plain arrays, to save without pickling."""
    scaler, lr = model[0], model[-1]
    return {"mean": scaler.mean_.astype(np.float64), "scale": scaler.scale_.astype(np.float64), "coef": lr.coef_.astype(np.float64),
            "intercept": lr.intercept_.astype(np.float64), "classes": np.asarray(lr.classes_).astype(str)}


def probe_proba(arrays: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Class probabilities of the probe saved by :func:`probe_arrays` (columns in ``arrays["classes"]`` order): the
    same numbers as scikit-learn's ``predict_proba``."""
    z = (np.asarray(x, np.float64) - arrays["mean"]) / arrays["scale"]
    logits = z @ arrays["coef"].T + arrays["intercept"]
    if logits.shape[1] == 1:  # two classes: scikit-learn's binary model
        p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
        return np.stack([1.0 - p1, p1], axis=1)
    logits -= logits.max(1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(1, keepdims=True)
