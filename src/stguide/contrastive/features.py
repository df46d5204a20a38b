"""The stage-2 feature cache: the frozen part of the trunk run once per patch and view, stored as float16 and
memory-mapped, so that training a head (or the trunk's last blocks) is a gather from RAM.

Cache folder ``features-<fingerprint>/``: ``features.npy`` (V × N × feature shape, float16) and ``meta.json``. The
fingerprint covers the trunk (backbone, weight source and, for a weights file, its content), the split point
(``trunk_blocks`` for ``partial``, none for ``frozen``), the number of views and their seed, the augmentation and
the patch cache's own fingerprint. View 0 is the plain patch; views 1 … V−1 are flips, 90° rotations and HED stain
jitter drawn from (view seed, view, spot). A folder whose files are missing, cut short or of another shape is
rebuilt with a warning naming the file, never read.
"""
from __future__ import annotations

import os
from os import PathLike
from pathlib import Path

import numpy as np
import torch

from stguide import timing
from stguide.contrastive.augment import Augment
from stguide.contrastive.config import ContrastiveConfig
from stguide.contrastive.encoders import build_image_encoder
from stguide.contrastive.trunk import split_trunk
from stguide.data.patches import PatchStore
from stguide.errors import InputError
from stguide.io import SpotRows, atomic_path, file_digest, fingerprint, open_cached_array, read_cache_meta, reuse_cache, write_json_atomic
from stguide.progress import track

CACHE_VERSION = 1
VIEW_AUGMENT = Augment(crop_scale=(1.0, 1.0))  # flips, 90° rotations, HED jitter; no crop (the field of view is physical)


class FeatureCache:
    """Read-only access to a feature cache: ``features`` (V × N × …, float16, memory-mapped) and ``rows(obs_names)``."""

    def __init__(self, path: str | PathLike) -> None:
        self.path = Path(path)
        self.meta = read_cache_meta(self.path)
        self.obs_names = list(self.meta["obs_names"])
        self.features = open_cached_array(self.path / "features.npy", tuple(self.meta["shape"]), "float16")
        self.spots = SpotRows(self.obs_names, self.path, "has no cached features", "rebuild the cache from the same patch cache")
        self.built = False  # True when this object's creation ran the trunk

    @property
    def views(self) -> int:
        return int(self.meta["views"])

    def rows(self, obs_names) -> np.ndarray:
        """Row of each spot id; raises when a spot has no cached features."""
        return self.spots.rows(obs_names)


def _weights_key(init: str) -> str:
    return file_digest(os.path.expanduser(init[5:])) if init.startswith("file:") else init


def cache_key(store: PatchStore, backbone: str, init: str, blocks: int, views: int, view_seed: int) -> str:
    """The fingerprint of the features of ``store`` under this trunk, split and views."""
    return fingerprint(CACHE_VERSION, backbone, _weights_key(init), blocks, views, view_seed, view_augment(),
                       store.meta["fingerprint"])


def view_of(store: PatchStore, row: int, view: int, view_seed: int) -> np.ndarray:
    """Patch ``row`` as seen in ``view`` (0: as cut)."""
    img = store[row]
    return img if view == 0 else VIEW_AUGMENT(img, np.random.default_rng([view_seed, view, row]))


@timing.part("trunk features")
def trunk_cache(cfg: ContrastiveConfig, store: PatchStore, cache_dir: str | PathLike, trained: bool = True,
                progress: bool = True) -> FeatureCache:
    """The feature cache a method of ``cfg`` (``trunk: frozen|partial``) reads: for one that trains, the output of the
    trunk's frozen prefix (the whole trunk for ``frozen``, all but the last ``trunk_blocks`` for ``partial``); for one
    that does not (``trained`` False), the whole trunk's pooled features."""
    blocks = cfg.trunk_blocks if trained and cfg.trunk == "partial" else 0
    return feature_cache(store, cfg.backbone, cfg.init, cache_dir, blocks=blocks, views=cfg.views, view_seed=cfg.view_seed, progress=progress)


def feature_cache(store: PatchStore, backbone: str, init: str, cache_dir: str | PathLike, *, blocks: int = 0,
                  views: int = 8, view_seed: int = 0, batch_size: int = 64, progress: bool = True) -> FeatureCache:
    """The cached output of the trunk's frozen prefix (``blocks = 0``: the whole trunk, pooled) for every patch of
    ``store`` and ``views`` views; built once, then reused while the trunk, split, views and patches are unchanged."""
    if views < 1:
        raise InputError("config:contrastive.views", f"views must be at least 1 (the plain patch), got {views}", "set views, e.g. 8")
    key = cache_key(store, backbone, init, blocks, views, view_seed)
    target = Path(cache_dir) / f"features-{key}"
    cached = reuse_cache(target, FeatureCache, "feature cache")
    if cached is not None:
        return cached
    torch.manual_seed(0)  # the pretrained weights do not depend on it; a random-init trunk does
    model, transform = build_image_encoder(backbone, init, img_size=int(store.meta["out_px"]))
    prefix, _ = split_trunk(model, blocks, backbone)
    prefix = prefix.eval().to(memory_format=torch.channels_last)  # faster convolutions on CPU (benchmarks/trunk_layout.py: 1.5× for effnet-lite0)
    n = len(store)
    with torch.inference_mode():
        shape = tuple(prefix(transform(store[0])[None].contiguous(memory_format=torch.channels_last)).shape[1:])
    with atomic_path(target) as tmp:
        tmp.mkdir()
        arr = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float16, shape=(views, n, *shape))
        steps = [(v, s) for v in range(views) for s in range(0, n, batch_size)]
        with torch.inference_mode():
            for v, s in track(steps, f"trunk features ({backbone}, {views} views)", enabled=progress):
                rows = range(s, min(s + batch_size, n))
                x = torch.stack([transform(view_of(store, r, v, view_seed)) for r in rows]).contiguous(memory_format=torch.channels_last)
                arr[v, s:s + len(rows)] = prefix(x).contiguous().numpy().astype(np.float16)
        arr.flush()
        del arr
        write_json_atomic(tmp / "meta.json", {"fingerprint": key, "version": CACHE_VERSION, "backbone": backbone, "init": init,
                                              "blocks": blocks, "views": views, "view_seed": view_seed, "augment": view_augment(),
                                              "patches": store.meta["fingerprint"], "obs_names": store.obs_names,
                                              "shape": [views, n, *shape]})
    cache = FeatureCache(target)
    cache.built = True
    return cache


def view_augment() -> dict:
    """The augmentation of views 1 … V−1, as recorded in a cache's metadata."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in vars(VIEW_AUGMENT).items()}

