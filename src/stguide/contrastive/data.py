"""Datasets over the memory-mapped patch cache; no slide is ever held in memory."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from stguide.contrastive.augment import Augment
from stguide.data.patches import PatchStore


class PairDataset(Dataset):
    """(image tensor, gene latent, label id, row) for each training spot.

    ``rows`` index the patch store; ``latents`` and ``labels`` are aligned with ``rows``. Augmentation draws from
    a generator seeded by (seed, epoch, index), so a run is reproducible and a resumed run sees the same draws.
    """

    def __init__(self, store: PatchStore, rows: np.ndarray, latents: np.ndarray, labels: np.ndarray, transform,
                 augment: Augment | None = None, seed: int = 0) -> None:
        self.store, self.rows, self.transform, self.augment, self.seed = store, rows, transform, augment, seed
        self.latents = torch.as_tensor(latents, dtype=torch.float32)
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        img = self.store[int(self.rows[i])]
        if self.augment is not None:
            img = self.augment(img, np.random.default_rng([self.seed, self.epoch, i]))
        return self.transform(img), self.latents[i], self.labels[i], i


class ImageDataset(Dataset):
    """Image tensors only, for feature extraction."""

    def __init__(self, store: PatchStore, rows: np.ndarray, transform) -> None:
        self.store, self.rows, self.transform = store, rows, transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.transform(self.store[int(self.rows[i])])
