"""The kNN probe's neighbour search: exact (scikit-learn) up to a training-set size, approximate (pynndescent) above.

Both search Euclidean neighbours of L2-normalised features, which are the cosine neighbours (‖a − b‖² = 2 − 2 cos(a,
b) for unit vectors), and both vote the same way: each test spot takes the class most frequent among its ``k``
neighbours, the first class in sorted order on a tie (scikit-learn's ``weights="uniform"``). Exact search costs
training × test spots (3.8–4.0× per doubling of both from 16k spots in benchmarks/probe_scaling.py); the
approximate index (nearest-neighbour descent on random-projection-tree seeds) grew 1.8–2.7× per doubling there. Its neighbours are not
always the exact ones, so the two agree on most spots rather than on all (the same benchmark measures the
balanced-accuracy difference on real HER2ST folds and at 8k–64k spots).

The index is built with one thread and a fixed seed, so the same features give the same neighbours on any machine
(pynndescent's parallel build depends on the thread count). Its first use in a process compiles numba kernels.
"""
from __future__ import annotations

import numpy as np
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, normalize

from stguide.errors import InputError

QUERY_EPSILON = 0.1  # pynndescent's search breadth (its default): how far past the best found a query keeps looking


class ApproximateKNN:
    """A uniform-vote kNN classifier on a pynndescent index of L2-normalised features (fit / predict)."""

    def __init__(self, k: int, seed: int = 0):
        self.k, self.seed = int(k), int(seed)

    def fit(self, x: np.ndarray, y: np.ndarray) -> ApproximateKNN:
        try:
            from pynndescent import NNDescent
        except ImportError as e:  # it comes with scib-metrics and umap-learn, both dependencies
            raise InputError("<kNN probe>", "the approximate kNN probe needs the package pynndescent",
                             "pip install pynndescent, or raise probe.knn_exact_max above the training spots") from e
        self.classes_, self._codes = np.unique(np.asarray(y), return_inverse=True)
        xn = normalize(np.asarray(x, np.float32))
        # the graph's degree bounds what a query can find: at least k, and pynndescent's default 30 otherwise
        self._index = NNDescent(xn, metric="euclidean", n_neighbors=max(30, self.k), random_state=self.seed, n_jobs=1)
        self._index.prepare()
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        # 2k neighbours searched, the k nearest kept: tried by hand on the real HER2ST folds' features, a search for k
        # alone found fewer of the exact neighbours, a wider one (epsilon 0.3) cost more than exact search in 1,280-d
        n = len(self._codes)
        nbrs, _ = self._index.query(normalize(np.asarray(x, np.float32)), k=min(2 * self.k, n), epsilon=QUERY_EPSILON)
        nbrs = nbrs[:, : self.k]  # sorted by distance
        votes = np.zeros((len(nbrs), len(self.classes_)), np.int64)
        np.add.at(votes, (np.repeat(np.arange(len(nbrs)), nbrs.shape[1]), self._codes[nbrs.ravel()]), 1)
        return self.classes_[votes.argmax(1)]  # argmax takes the first maximum: the first class on a tie


def knn_classifier(x: np.ndarray, y: np.ndarray, k: int, exact_max: int, seed: int = 0):
    """A fitted cosine kNN classifier of ``k`` (capped at the training spots) neighbours: exact search when the
    training spots number at most ``exact_max``, the approximate index above."""
    k = min(int(k), len(y))
    if len(y) <= exact_max:
        return make_pipeline(Normalizer(), KNeighborsClassifier(n_neighbors=k, metric="euclidean", weights="uniform")).fit(x, y)
    return ApproximateKNN(k, seed).fit(x, y)
