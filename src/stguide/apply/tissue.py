"""Tissue on a slide thumbnail, and the grid of tiles a model reads over it.

Tissue is found on a thumbnail by how far each pixel's colour lies from the glass's: the background colour is the
median optical density of the thumbnail's border (black scanner margins left out), each pixel's distance to it in
optical density is smoothed, and Otsu's threshold on its logarithm splits tissue from glass. (Otsu on the HSV
saturation, the common rule, keeps only densely stained tissue on slides whose glass is tinted, as on HER2ST's; the
log distance also keeps pale stroma and fat.) Then a closing, holes smaller than ``max_hole`` filled (fat inside
tissue) and specks smaller than ``min_area`` removed (areas as fractions of the thumbnail). Stain haze on the glass
can pass as tissue; ``min_tissue`` of the tiles raises the bar. Tiles are squares of the
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


def background_distance(thumb: np.ndarray, border: int = 8) -> np.ndarray:
    """Each pixel's distance in optical density from the glass colour (the median of the border's pixels that are not
    black scanner margin); black pixels get 0."""
    rgb = thumb[..., :3].astype(np.float32)  # float32 halves the mask's memory on a large thumbnail
    od = -np.log(np.clip(rgb, 1, 255) / np.float32(255.0))
    dark = rgb.max(-1) < 30  # scanner margins and out-of-scan areas
    edge = np.zeros(dark.shape, bool)
    edge[:border], edge[-border:], edge[:, :border], edge[:, -border:] = True, True, True, True
    ref = od[edge & ~dark]
    if len(ref) == 0:  # no usable border: the brightest tenth of the image
        lum = rgb.mean(-1)
        ref = od[(lum >= np.percentile(lum[~dark], 90)) & ~dark] if (~dark).any() else od.reshape(-1, 3)
    d = np.linalg.norm(od - np.median(ref, axis=0), axis=-1)
    d[dark] = 0.0
    return d


def tissue_mask(thumb: np.ndarray, min_area: float = 5e-4, max_hole: float = 0.02, min_distance: float = 0.05) -> np.ndarray:
    """A boolean tissue mask of an RGB thumbnail (see the module docstring); ``min_distance``: the least optical
    density distance from the glass that can count as tissue (a blank slide has none, whatever Otsu says)."""
    from scipy import ndimage as ndi

    d = ndi.gaussian_filter(background_distance(thumb), 2)
    ld = np.log(d + 1e-3)
    lo, hi = float(ld.min()), float(ld.max())
    t = float(np.exp(otsu_threshold((ld - lo) / max(hi - lo, 1e-9)) * (hi - lo) + lo)) if hi > lo else np.inf
    mask = d > max(t, min_distance)
    mask = ndi.binary_closing(mask, structure=np.ones((5, 5), bool), iterations=2)
    n_px = mask.size
    holes, n = ndi.label(~mask)
    if n:
        sizes = ndi.sum(~mask, holes, index=np.arange(1, n + 1))
        border = set(np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))) - {0}
        fill = np.zeros(n + 1, bool)
        fill[1:] = sizes < max_hole * n_px
        for b in border:
            fill[b] = False  # glass touching the edge is not a hole
        mask = mask | fill[holes]
    lab, n = ndi.label(mask)
    if n:
        sizes = ndi.sum(mask, lab, index=np.arange(1, n + 1))
        keep = np.zeros(n + 1, bool)
        keep[1:] = sizes >= min_area * n_px
        mask = keep[lab]
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
