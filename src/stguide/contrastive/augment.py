"""Patch augmentation for contrastive training: flips, 90° rotations, HED stain jitter, random resized crop."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Ruifrok & Johnston stain matrix (rows: H, E, DAB optical density vectors)
_RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = np.linalg.inv(_RGB_FROM_HED)


class Augment:
    """Random augmentation of a uint8 H×W×3 patch (numpy in, numpy out), seeded by the caller's generator.

    ``hed_sigma``: multiplicative jitter of each stain concentration; ``hed_bias``: additive jitter;
    ``crop_scale``: the area range of the random resized crop inside the patch.
    """

    def __init__(self, hed_sigma: float = 0.05, hed_bias: float = 0.02, crop_scale: tuple[float, float] = (0.7, 1.0)) -> None:
        self.hed_sigma, self.hed_bias, self.crop_scale = hed_sigma, hed_bias, crop_scale

    def __call__(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = img.astype(np.float32)
        if self.hed_sigma or self.hed_bias:
            od = -np.log((x + 1.0) / 256.0)
            hed = od @ _HED_FROM_RGB
            hed = hed * rng.uniform(1 - self.hed_sigma, 1 + self.hed_sigma, 3) + rng.uniform(-self.hed_bias, self.hed_bias, 3)
            x = np.clip(256.0 * np.exp(-(hed @ _RGB_FROM_HED)) - 1.0, 0, 255)
        h, w = x.shape[:2]
        if self.crop_scale[0] < 1.0:
            s = np.sqrt(rng.uniform(*self.crop_scale))
            ch, cw = max(int(h * s), 4), max(int(w * s), 4)
            y0, x0 = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            t = torch.from_numpy(np.ascontiguousarray(x[y0:y0 + ch, x0:x0 + cw])).permute(2, 0, 1)[None]
            x = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
        x = np.rot90(x, int(rng.integers(0, 4)))
        if rng.random() < 0.5:
            x = x[:, ::-1]
        return np.ascontiguousarray(np.clip(x, 0, 255).astype(np.uint8))
