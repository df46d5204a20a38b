"""Datasets over the memory-mapped patch cache; no slide is ever held in memory."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from stguide.contrastive.augment import Augment
from stguide.contrastive.encoders import as_uint8
from stguide.data.patches import PatchStore


class PairDataset(Dataset):
    """(uint8 image, gene input, frozen gene latent, label id, patient id) for each training spot.

    ``rows`` index the patch store; ``latents``, ``labels`` and ``gene_inputs`` (counts, when the gene encoder is
    fine-tuned; otherwise the latent is the gene input) are aligned with ``rows``. Augmentation draws from
    a generator seeded by (seed, epoch, index), so a run is reproducible and a resumed run sees the same draws.
    """

    def __init__(self, store: PatchStore, rows: np.ndarray, latents: np.ndarray, labels: np.ndarray,
                 augment: Augment | None = None, seed: int = 0, gene_inputs: np.ndarray | None = None,
                 patients: np.ndarray | None = None) -> None:
        self.store, self.rows, self.augment, self.seed = store, rows, augment, seed
        self.latents = torch.as_tensor(latents, dtype=torch.float32)
        self.gene_inputs = self.latents if gene_inputs is None else torch.as_tensor(gene_inputs, dtype=torch.float32)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.patients = torch.zeros(len(rows), dtype=torch.long) if patients is None else torch.as_tensor(patients, dtype=torch.long)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        img = self.store[int(self.rows[i])]
        if self.augment is not None:
            img = self.augment(img, np.random.default_rng([self.seed, self.epoch, i]))
        return as_uint8(img), self.gene_inputs[i], self.latents[i], self.labels[i], self.patients[i]


class ImageDataset(Dataset):
    """uint8 images only, for feature extraction."""

    def __init__(self, store: PatchStore, rows: np.ndarray) -> None:
        self.store, self.rows = store, rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return as_uint8(self.store[int(self.rows[i])])


class EpochSampler(Sampler[int]):
    """A shuffle whose order depends only on (seed, epoch), so a resumed run sees the batches an uninterrupted run
    would. Lightning calls ``set_epoch`` before every epoch."""

    def __init__(self, n: int, seed: int = 0, dataset: PairDataset | None = None) -> None:
        self.n, self.seed, self.epoch, self.dataset = n, seed, 0, dataset

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of the shuffle and of the dataset's augmentation draws."""
        self.epoch = epoch
        if self.dataset is not None:
            self.dataset.epoch = epoch

    def __iter__(self):
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n
