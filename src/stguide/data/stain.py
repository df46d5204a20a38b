"""Macenko stain normalisation (Macenko et al., ISBI 2009), fitted per section and applied at extraction."""
from __future__ import annotations

import numpy as np

REF_HE = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])  # reference H and E OD vectors (columns)
REF_MAX_C = np.array([1.9705, 1.0308])  # reference 99th-percentile concentrations
IO = 240.0  # transmitted light intensity


def fit_macenko(pixels: np.ndarray, beta: float = 0.15, alpha: float = 1.0, max_pixels: int = 200_000,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Estimate a section's stain matrix (3×2, H then E) and max concentrations from its RGB pixels (…×3 uint8)."""
    rgb = pixels.reshape(-1, 3).astype(float)
    if len(rgb) > max_pixels:
        rgb = rgb[np.random.default_rng(seed).choice(len(rgb), max_pixels, replace=False)]
    od = -np.log((rgb + 1) / IO)
    od = od[(od > beta).all(axis=1)]
    if len(od) < 100:
        return REF_HE.copy(), REF_MAX_C.copy()
    _, vecs = np.linalg.eigh(np.cov(od.T))
    plane = vecs[:, 1:3]
    proj = od @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, alpha), np.percentile(phi, 100 - alpha)
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    he = np.stack([v1, v2], 1) if v1[0] > v2[0] else np.stack([v2, v1], 1)
    he *= np.sign(he.sum(0, keepdims=True))
    conc = np.linalg.lstsq(he, od.T, rcond=None)[0]
    return he, np.percentile(conc, 99, axis=1)


def apply_macenko(img: np.ndarray, he: np.ndarray, max_c: np.ndarray) -> np.ndarray:
    """Map an RGB uint8 image stained with (he, max_c) onto the reference stain."""
    shape = img.shape
    od = -np.log((img.reshape(-1, 3).astype(float) + 1) / IO)
    conc = np.linalg.lstsq(he, od.T, rcond=None)[0]
    conc *= (REF_MAX_C / np.maximum(max_c, 1e-6))[:, None]
    out = IO * np.exp(-(REF_HE @ conc))
    return np.clip(out.T, 0, 255).reshape(shape).astype(np.uint8)
