"""Tissue on a slide thumbnail, and the grid of tiles a model reads over it.

Tissue is found as pathology tools commonly do: Otsu's threshold on the HSV saturation of a thumbnail (stained
tissue is coloured, glass and background are grey or white), then an opening, specks smaller than ``min_area``
removed and holes smaller than ``max_hole`` filled (areas as fractions of the thumbnail). Tiles are squares of the
model's physical patch size on a regular grid; a tile is kept when at least ``min_tissue`` of it is tissue.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (the split that maximises the between-class variance)."""
    hist, edges = np.histogram(np.clip(values, 0, 1), bins=bins, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    mu = np.cumsum(p * centres)
    w1 = 1.0 - w0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w0 - mu) ** 2 / (w0 * w1)
    between[~np.isfinite(between)] = -1
    return float(edges[int(np.argmax(between)) + 1])


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of an RGB uint8 image, in [0, 1]."""
    x = rgb[..., :3].astype(np.float32)
    mx, mn = x.max(-1), x.min(-1)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1), 0.0)


def tissue_mask(thumb: np.ndarray, min_area: float = 5e-4, max_hole: float = 5e-4) -> np.ndarray:
    """A boolean tissue mask of an RGB thumbnail."""
    from scipy import ndimage as ndi

    s = saturation(thumb)
    t = otsu_threshold(s)
    mask = s > max(t, 0.05)  # a blank image has no tissue, whatever Otsu says
    mask = ndi.binary_opening(mask, structure=np.ones((3, 3), bool))
    n_px = mask.size
    lab, n = ndi.label(mask)
    if n:
        sizes = ndi.sum(mask, lab, index=np.arange(1, n + 1))
        keep = np.zeros(n + 1, bool)
        keep[1:] = sizes >= min_area * n_px
        mask = keep[lab]
    holes, n = ndi.label(~mask)
    if n:
        sizes = ndi.sum(~mask, holes, index=np.arange(1, n + 1))
        border = set(np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))) - {0}
        fill = np.zeros(n + 1, bool)
        fill[1:] = sizes < max_hole * n_px
        for b in border:
            fill[b] = False  # background touching the edge is not a hole
        mask = mask | fill[holes]
    return mask


@dataclass(frozen=True)
class TileGrid:
    """Tile centres in full-resolution pixels, the tile side, and each tile's tissue fraction."""

    centres: np.ndarray  # n × 2 (x, y)
    side_px: float
    tissue: np.ndarray  # n


def tile_grid(mask: np.ndarray, mask_scale: float, full_size: tuple[int, int], side_px: float, min_tissue: float = 0.5) -> TileGrid:
    """The tiles of side ``side_px`` (full-resolution px) over an image of ``full_size`` whose tissue ``mask`` is
    drawn at ``mask_scale`` mask pixels per full-resolution pixel; tiles lying wholly inside the image and at least
    ``min_tissue`` tissue."""
    w, h = full_size
    nx, ny = int(w // side_px), int(h // side_px)
    if nx == 0 or ny == 0:
        return TileGrid(np.zeros((0, 2)), side_px, np.zeros(0))
    # tissue fraction per tile: the mask resampled onto the tile grid (mean over the mask pixels of each tile)
    mh, mw = mask.shape
    ys = np.clip((np.arange(ny + 1) * side_px * mask_scale).round().astype(int), 0, mh)
    xs = np.clip((np.arange(nx + 1) * side_px * mask_scale).round().astype(int), 0, mw)
    integral = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    area = np.maximum((ys[1:, None] - ys[:-1, None]) * (xs[None, 1:] - xs[None, :-1]), 1)
    total = (integral[ys[1:, None], xs[None, 1:]] - integral[ys[:-1, None], xs[None, 1:]]
             - integral[ys[1:, None], xs[None, :-1]] + integral[ys[:-1, None], xs[None, :-1]])
    frac = total / area
    iy, ix = np.nonzero(frac >= min_tissue)
    centres = np.stack([(ix + 0.5) * side_px, (iy + 0.5) * side_px], axis=1)
    return TileGrid(centres, side_px, frac[iy, ix])
