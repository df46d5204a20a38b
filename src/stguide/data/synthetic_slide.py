"""A large synthetic whole-slide image for benchmarks and tests: a tiled, JPEG-compressed pyramidal TIFF of H&E-like
tissue (pink stroma with purple nuclei) on white glass, written tile by tile so that memory stays flat however large
the slide. Tissue lies where a smooth field of a few Gaussian blobs exceeds a threshold (about a third of the slide)."""
from __future__ import annotations

from collections.abc import Iterator
from os import PathLike
from pathlib import Path

import numpy as np

GLASS = np.array([242, 240, 244], np.float32)
STROMA = np.array([222, 150, 190], np.float32)
NUCLEI = np.array([110, 60, 150], np.float32)


def tissue_blobs(size: int, seed: int, n: int = 9) -> np.ndarray:
    """(n, 4): centre x, centre y, radius (full-resolution px) and weight of the tissue field's blobs."""
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.uniform(0.15, 0.85, (n, 2)) * size, rng.uniform(0.08, 0.16, n) * size, rng.uniform(0.8, 1.2, n)])


def tissue_field(xs: np.ndarray, ys: np.ndarray, blobs: np.ndarray) -> np.ndarray:
    """The smooth tissue field at full-resolution coordinates (broadcast ``xs`` × ``ys``); tissue where > 0.5."""
    f = np.zeros(np.broadcast_shapes(xs.shape, ys.shape), np.float32)
    for cx, cy, r, w in blobs:
        f += w * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * r * r)).astype(np.float32)
    return f


def _tiles(size: int, down: int, tile: int, blobs: np.ndarray, seed: int) -> Iterator[np.ndarray]:
    """The tiles of the level with downsample ``down``, row by row (textures drawn from a small bank of noisy tissue
    and glass tiles, so that a 40,000 px slide is written in minutes)."""
    rng = np.random.default_rng((seed, down))
    nuclei = [(rng.random((tile, tile, 1)) < 0.04 + 0.06 / down) for _ in range(4)]
    tissue_bank = [np.clip(np.where(m, NUCLEI, STROMA) + rng.normal(0, 12, (tile, tile, 3)), 0, 255).astype(np.uint8) for m in nuclei]
    glass_bank = [np.clip(GLASS + rng.normal(0, 2, (tile, tile, 3)), 0, 255).astype(np.uint8) for _ in range(2)]
    n = -(-(size // down) // tile)
    step = 8  # the field is smooth: evaluate it every 8 px and repeat
    for ty in range(n):
        for tx in range(n):
            gx = ((tx * tile + np.arange(0, tile, step)) * down)[None, :]
            gy = ((ty * tile + np.arange(0, tile, step)) * down)[:, None]
            tissue = np.repeat(np.repeat(tissue_field(gx, gy, blobs) > 0.5, step, 0), step, 1)[..., None]
            i = ty * n + tx
            yield np.where(tissue, tissue_bank[i % 4], glass_bank[i % 2])


def write_synthetic_slide(path: str | PathLike, size: int = 40_000, um_per_px: float = 0.25, levels: int = 6,
                          tile: int = 512, seed: int = 0, quality: int = 90) -> Path:
    """Write a ``size`` × ``size`` px pyramidal TIFF (``levels`` levels, each half the one before; µm/px in the
    resolution tags) and return its path. Memory: a few tiles at a time."""
    import tifffile

    path = Path(path)
    blobs = tissue_blobs(size, seed)
    res = (1e4 / um_per_px, 1e4 / um_per_px)
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        for k in range(levels):
            down = 2 ** k
            side = size // down
            extra = dict(subifds=levels - 1, resolution=res, resolutionunit="CENTIMETER") if k == 0 else dict(subfiletype=1)
            tw.write(_tiles(size, down, tile, blobs, seed), shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile),
                     photometric="rgb", compression="jpeg", compressionargs={"level": quality}, **extra)
    return path
