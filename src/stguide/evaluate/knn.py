"""The kNN probe's neighbour search: exact up to a training-set size, approximate (projected, then re-ranked) above.

Every search finds Euclidean neighbours of L2-normalised features, which are the cosine neighbours (‖a − b‖² =
2 − 2 cos(a, b) for unit vectors), and every one votes the same way: each test spot takes the class most frequent
among its ``k`` neighbours, the first class in sorted order on a tie (scikit-learn's ``weights="uniform"``).

- **Exact** (training spots ≤ ``probe.knn_exact_max``): scikit-learn's brute-force search in the full dimension,
  whose cost grows with training × test spots × dimension.
- **Projected** (above): the normalised features are projected on their first ``probe.knn_dims`` principal axes
  (fitted on at most :data:`PCA_FIT_SPOTS` training spots drawn with a fixed seed), the ``CANDIDATES`` × k nearest
  training spots of each test spot are found there, and those candidates are re-ranked by their exact full-dimension
  distance. The projection keeps most of the variance of image features (the benchmark below records how much), so
  the true neighbours are nearly always among the candidates; the search is still brute force, but over ``knn_dims``
  dimensions instead of the full dimension.
- **Indexed** (above ``probe.knn_index_min`` training spots): the candidates in the projected space come from a
  pynndescent graph index instead (nearest-neighbour descent on random-projection-tree seeds), which grows
  near-linearly but finds fewer of the true neighbours; built with one thread and a fixed seed, so the same features
  give the same neighbours on any machine (pynndescent's parallel build depends on the thread count). Its first use
  in a process compiles numba kernels.

benchmarks/probe_scaling.py measures each against exact search on the real HER2ST folds and from 8k to 64k spots.
"""
from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import KNeighborsClassifier, NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, normalize

from stguide.errors import InputError

CANDIDATES = 4  # candidates per neighbour, re-ranked in the full dimension
PCA_FIT_SPOTS = 8192  # the projection is fitted on at most this many training spots (a fixed-seed draw)
QUERY_EPSILON = 0.2  # the index's search breadth: how far past the best found a query keeps looking (pynndescent's default 0.1)
_RERANK_BLOCK = 256  # test spots re-ranked at a time (their candidates' full features in memory at once)


def vote(neighbours: np.ndarray, codes: np.ndarray, n_classes: int) -> np.ndarray:
    """The class code most frequent among each row's ``neighbours`` (training-spot indices into ``codes``), the
    smallest code on a tie."""
    votes = np.zeros((len(neighbours), n_classes), np.int64)
    np.add.at(votes, (np.repeat(np.arange(len(neighbours)), neighbours.shape[1]), codes[neighbours.ravel()]), 1)
    return votes.argmax(1)  # argmax takes the first maximum


def rerank(train: np.ndarray, query: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` of each query's ``candidates`` (indices into ``train``) nearest to it in ``train``'s full dimension
    (both L2-normalised: the largest dot products), nearest first; equal distances keep the candidates' order."""
    out = np.empty((len(candidates), k), np.int64)
    for s in range(0, len(candidates), _RERANK_BLOCK):
        c = candidates[s: s + _RERANK_BLOCK]
        sim = np.matmul(train[c], query[s: s + _RERANK_BLOCK, :, None])[..., 0]
        out[s: s + len(c)] = np.take_along_axis(c, np.argsort(-sim, axis=1, kind="stable")[:, :k], 1)
    return out


class ApproximateKNN:
    """A uniform-vote kNN classifier (fit / predict) that finds candidates among projected L2-normalised features,
    by brute force or (``indexed``) through a pynndescent index, and re-ranks them in the full dimension."""

    def __init__(self, k: int, dims: int = 128, indexed: bool = False, seed: int = 0):
        self.k, self.dims, self.indexed, self.seed = int(k), int(dims), bool(indexed), int(seed)

    def fit(self, x: np.ndarray, y: np.ndarray) -> ApproximateKNN:
        self.classes_, self._codes = np.unique(np.asarray(y), return_inverse=True)
        self._train = normalize(np.asarray(x, np.float32))
        n, d = self._train.shape
        self._pca = None
        if 0 < self.dims < min(d, n):
            fit_on = self._train
            if n > PCA_FIT_SPOTS:
                fit_on = fit_on[np.sort(np.random.default_rng(self.seed).choice(n, PCA_FIT_SPOTS, replace=False))]
            self._pca = PCA(self.dims, svd_solver="randomized", random_state=self.seed).fit(fit_on)
        z = self._project(self._train)
        self._m = min(CANDIDATES * self.k, n)
        if self.indexed:
            try:
                from pynndescent import NNDescent
            except ImportError as e:  # a declared dependency (pyproject), also installed with scib-metrics
                raise InputError("<kNN probe>", "the indexed kNN probe needs the package pynndescent",
                                 "pip install pynndescent, or raise probe.knn_index_min above the training spots") from e
            # the graph's degree bounds what a query can find: at least k, and pynndescent's default 30 otherwise
            self._search = NNDescent(z, metric="euclidean", n_neighbors=max(30, self.k), random_state=self.seed, n_jobs=1)
            self._search.prepare()
        else:
            self._search = NearestNeighbors(n_neighbors=self._m, algorithm="brute").fit(z)
        return self

    def _project(self, x: np.ndarray) -> np.ndarray:
        return x if self._pca is None else self._pca.transform(x).astype(np.float32)

    def neighbours(self, x: np.ndarray) -> np.ndarray:
        """Each row's ``k`` training-spot neighbours (indices, nearest first)."""
        q = normalize(np.asarray(x, np.float32))
        z = self._project(q)
        if self.indexed:
            cand, _ = self._search.query(z, k=self._m, epsilon=QUERY_EPSILON)
        else:
            cand = self._search.kneighbors(z, return_distance=False)
        return rerank(self._train, q, cand, min(self.k, len(self._codes)))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.classes_[vote(self.neighbours(x), self._codes, len(self.classes_))]


def knn_classifier(x: np.ndarray, y: np.ndarray, k: int, exact_max: int, dims: int = 128, index_min: int = 200_000, seed: int = 0):
    """A fitted cosine kNN classifier of ``k`` (capped at the training spots) neighbours: exact search when the
    training spots number at most ``exact_max``, projected to ``dims`` and re-ranked above, with an index finding the
    candidates above ``index_min``."""
    k = min(int(k), len(y))
    if len(y) <= exact_max:
        return make_pipeline(Normalizer(), KNeighborsClassifier(n_neighbors=k, metric="euclidean", weights="uniform")).fit(x, y)
    return ApproximateKNN(k, dims, indexed=len(y) > index_min, seed=seed).fit(x, y)
