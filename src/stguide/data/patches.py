"""Patches cut around each spot by physical size (µm), cached as one memory-mapped uint8 array.

Cache folder ``patches-<fingerprint>/``: ``patches.npy`` (N×H×W×3 uint8), ``meta.json`` (spot ids, size_um,
out_px, µm/px per section, the fraction of each patch's field of view that lies outside its image, the
fingerprint). The fingerprint covers spot ids and positions, each image's content hash and µm/px, and every
extraction option; a re-run with the same inputs reuses the cache, any change writes a new one.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path
from typing import ClassVar, Literal

import anndata as ad
import numpy as np

from stguide.config import ConfigError, FromDict
from stguide.data.images import open_level
from stguide.data.level import one_torch_thread
from stguide.data.model import section_info
from stguide.data.stain import apply_macenko, fit_macenko
from stguide.errors import InputError
from stguide.io import RowWriter, SpotRows, atomic_path, file_digest, fingerprint, open_cached_array, read_cache_meta, reuse_cache, write_json_atomic
from stguide.progress import read_ahead, track

CACHE_VERSION = 3  # 2: patches resampled by torch's uint8 kernel from the nearest level pixel (level.resample);
# 3: overlapping patches cut from one shared resample (Level.sharing_groups)
CUTTERS = min(4, os.cpu_count() or 1)  # threads that cut a section's patches (the crops and resamples release the GIL)


@dataclass(frozen=True)
class PatchConfig(FromDict):
    """How patches are cut (the one definition; YAML section ``patches:``, CLI ``--size-um`` / ``--out-px``).

    ``size_um``: side of the square field of view in µm (default 200, the HER2ST grid pitch, so neighbouring
    patches touch without overlap; a free choice, since the paper's is unpublished). ``out_px``: side in pixels
    after resampling. ``outside``: ``pad`` (fill with white and record the outside fraction) or ``raise`` when a
    field of view leaves the image. ``stain_norm``: ``None`` or ``"macenko"`` (fitted per section). ``shards``: how
    the cache is stored: ``one`` file, or one file per ``section`` (``patches-00000.npy``, …; each can live on another
    disk through a symbolic link, and each is memory-mapped only when read), for datasets too large for one file.
    """

    section: ClassVar[str] = "patches"

    size_um: float = 200.0
    out_px: int = 224
    outside: Literal["pad", "raise"] = "pad"
    stain_norm: Literal["macenko"] | None = None
    shards: Literal["one", "section"] = "one"

    def __post_init__(self) -> None:
        object.__setattr__(self, "size_um", float(self.size_um))  # 200 and 200.0 are one setting (and one cache)
        if not self.size_um > 0:
            raise ConfigError("size_um", f"the field of view must be positive, got {self.size_um}", "give size_um in µm, e.g. 200")
        if self.out_px < 8:
            raise ConfigError("out_px", f"patches of {self.out_px} px are too small", "use out_px of at least 8")


class ShardedArray:
    """Row-sharded patches: shard ``k`` holds rows ``offsets[k]:offsets[k+1]``; indexed like one array by a row or
    an array of rows (reads), or written one row at a time. Each shard is opened only when first touched."""

    def __init__(self, opener, sizes: list[int], row_shape: tuple[int, ...], dtype=np.uint8) -> None:
        self._open, self.row_shape, self.dtype = opener, tuple(row_shape), np.dtype(dtype)
        self._shards: list[np.ndarray | None] = [None] * len(sizes)
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def shard(self, k: int) -> np.ndarray:
        a = self._shards[k]
        if a is None:
            a = self._shards[k] = self._open(k)
        return a

    def _where(self, i):
        k = np.searchsorted(self.offsets, i, side="right") - 1
        return k, i - self.offsets[k]

    def __getitem__(self, i):
        if np.ndim(i) == 0:
            k, j = self._where(int(i))
            return self.shard(int(k))[j]
        rows = np.asarray(i, dtype=np.int64)
        ks, js = self._where(rows)
        out = np.empty((len(rows), *self.row_shape), dtype=self.dtype)
        for k in np.unique(ks):
            m = ks == k
            out[m] = self.shard(int(k))[js[m]]
        return out

    def __setitem__(self, i: int | np.integer, value) -> None:
        k, j = self._where(int(i))
        self.shard(int(k))[j] = value

    def close(self) -> None:
        """Close the shards opened for writing (a read-only store has nothing to close)."""
        for a in self._shards:
            if a is not None and hasattr(a, "close"):
                a.close()


class PatchStore:
    """Read-only access to a patch cache: ``store[i]`` or ``store.take(obs_names)``; memory-mapped."""

    def __init__(self, path: str | PathLike) -> None:
        self.path = Path(path)
        self.meta = read_cache_meta(self.path)
        self.obs_names = list(self.meta["obs_names"])
        px = self.meta["out_px"]
        shards = self.meta.get("shard_sizes")
        self.images: np.ndarray | ShardedArray
        if shards:
            self.images = ShardedArray(lambda k: open_cached_array(self.path / shard_file(k), (shards[k], px, px, 3), "uint8"),
                                       shards, (px, px, 3))
        else:
            self.images = open_cached_array(self.path / "patches.npy", (len(self.obs_names), px, px, 3), "uint8")
        self.spots = SpotRows(self.obs_names, self.path, "has no patch in this cache",
                              "extract patches for this dataset (its section may lack an image)")
        self.outside = np.asarray(self.meta["outside_fraction"], dtype=float)

    def __len__(self) -> int:
        return len(self.obs_names)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.images[i])

    def indices(self, obs_names) -> np.ndarray:
        """Row of each spot id; raises when a spot has no patch (e.g. its section has no image)."""
        return self.spots.rows(obs_names)

    def has(self, obs_names) -> np.ndarray:
        """Whether each spot id has a patch here (a boolean mask aligned with ``obs_names``)."""
        return self.spots.has(obs_names)

    def take(self, obs_names) -> np.ndarray:
        return np.asarray(self.images[self.indices(obs_names)])


def shard_file(k: int) -> str:
    """The file of shard ``k`` of a sharded patch cache."""
    return f"patches-{k:05d}.npy"


def _fingerprint(adata: ad.AnnData, cfg: PatchConfig, sections: list[str]) -> str:
    infos = {s: section_info(adata, s) for s in sections}
    obs = adata.obs
    settings = asdict(cfg)
    if cfg.shards == "one":
        settings.pop("shards")  # the key of an unsharded cache is the one it had before sharding existed
    return fingerprint(
        CACHE_VERSION,
        settings,
        list(map(str, adata.obs_names)),
        obs["x_px"].to_numpy(float),
        obs["y_px"].to_numpy(float),
        {s: [file_digest(i.imaging()[0]), i.imaging()[1]] for s, i in infos.items()},
    )


def _cut_all(level, sel: np.ndarray, xs: np.ndarray, ys: np.ndarray, half_px: float, out_px: int, arr: RowWriter | ShardedArray,
             outside: np.ndarray, pool: ThreadPoolExecutor) -> None:
    """Cut the patches of spots ``sel`` (centres ``xs``, ``ys``) from a level into ``arr``, spread over the threads
    of ``pool`` (each writes its own rows), top to bottom (a lazily read level's tiles then serve neighbours);
    overlapping patches share one resample (``Level.sharing_groups``)."""
    groups = level.sharing_groups(xs, ys, half_px, out_px)
    parts = np.array_split(np.arange(len(groups)), max(1, min(len(groups), 32)))

    def cutter(part: np.ndarray) -> None:
        for gi in part:
            g = groups[gi]
            patches, out = level.cut_group(xs[g], ys[g], half_px, out_px)
            for k, patch, o in zip(g, patches, out, strict=True):
                arr[sel[k]], outside[sel[k]] = patch, o

    with one_torch_thread():  # the threads are the parallelism; torch's own per resample would oversubscribe
        for done in [pool.submit(cutter, part) for part in parts]:
            done.result()


def extract_patches(
    adata: ad.AnnData,
    cfg: PatchConfig = PatchConfig(),
    cache_dir: str | PathLike = "patches",
    *,
    progress: bool = True,
) -> PatchStore:
    """Cut every spot of every section that has an image at the same physical field of view.

    Each section image is opened once, at the coarsest level not coarser than the patches need (JPEG draft,
    TIFF pyramid or streamed tiles, OpenSlide level); the next section's image is decoded while the current one's
    patches are cut, so at most two images are in memory. Spots of sections without an image get no patch; they are
    listed in ``meta["skipped_sections"]``.

    Returns the :class:`PatchStore`. Raises :class:`InputError` when a field of view leaves its image and
    ``outside="raise"``, or when an image is missing or unreadable; nothing is left behind then.
    """
    sections = [s for s in adata.obs["section"].cat.categories if section_info(adata, s).has_image]
    skipped = [s for s in adata.obs["section"].cat.categories if s not in sections]
    fp = _fingerprint(adata, cfg, sections)
    target = Path(cache_dir) / f"patches-{fp}"
    cached = reuse_cache(target, PatchStore, "patch cache")
    if cached is not None:
        return cached
    sec_col = adata.obs["section"].astype(str).to_numpy()
    if cfg.shards == "section":  # rows grouped by section, so that each shard holds a run of rows
        rows = np.concatenate([np.flatnonzero(sec_col == s) for s in sections])
    else:
        rows = np.flatnonzero(np.isin(sec_col, sections))
    if len(rows) == 0:
        raise InputError(adata.uns.get("source", {}).get("root", "<dataset>"), "no section has an image", "give at least one section an H&E image")
    names = adata.obs_names[rows]
    outside_frac = np.zeros(len(rows))
    per_section = {}
    with atomic_path(target) as tmp:
        tmp.mkdir()
        arr: RowWriter | ShardedArray
        shape = (cfg.out_px, cfg.out_px, 3)
        row_sec = sec_col[rows]  # the section of each row
        sizes = [int((row_sec == s).sum()) for s in sections]
        if cfg.shards == "section":
            arr = ShardedArray(lambda k: RowWriter(tmp / shard_file(k), (sizes[k], *shape)), sizes, shape)
            for k in range(len(sizes)):
                if sizes[k]:
                    arr.shard(k)  # opened before the cutting threads write to them
        else:
            arr = RowWriter(tmp / "patches.npy", (len(rows), *shape))

        xy = adata.obs[["x_px", "y_px"]].to_numpy(float)[rows]  # the spots' centres, in the order of rows

        def opened(section: str):
            """The section's image decoded at the scale its patches need (a tiled TIFF only where they lie), with its
            µm/px."""
            image, um = section_info(adata, section).imaging()
            on, half = xy[row_sec == section], cfg.size_um / um / 2
            return open_level(image, downsample=cfg.size_um / um / cfg.out_px, fields=np.hstack([on - half, on + half])), image, um

        # the next section's image is decoded while this one's patches are cut
        images = read_ahead(sections, opened, discard=lambda opened_image: opened_image[0].close())
        cutters = ThreadPoolExecutor(CUTTERS)
        try:
            for s, (level, image, um_per_px) in track(images, f"cutting {cfg.size_um:g} µm patches", enabled=progress,
                                                      total=len(sections)):
                half_px = cfg.size_um / um_per_px / 2
                try:
                    sel = np.flatnonzero(row_sec == s)
                    xs, ys = xy[sel, 0], xy[sel, 1]
                    w, h = level.full_size
                    off = (xs < 0) | (ys < 0) | (xs >= w) | (ys >= h)
                    if off.any():
                        raise InputError(image,
                                         f"{int(off.sum())} spot centre(s) of section {s} lie outside the {w}×{h} px image "
                                         f"(e.g. {names[sel][off][:3].tolist()})",
                                         "check that positions are full-resolution pixels of this image")
                    _cut_all(level, sel, xs, ys, half_px, cfg.out_px, arr, outside_frac, cutters)
                    bad = outside_frac[sel] > 0
                    if bad.any() and cfg.outside == "raise":
                        raise InputError(image,
                                         f"the {cfg.size_um:g} µm field of view of {int(bad.sum())} spot(s) of section {s} leaves the image "
                                         f"(e.g. {names[sel][bad][:3].tolist()})",
                                         "use outside='pad' to pad them with white (they are flagged), or a smaller size_um")
                    if cfg.stain_norm == "macenko":
                        he, max_c = fit_macenko(np.asarray(arr[sel]))
                        for j in sel:
                            arr[j] = apply_macenko(np.asarray(arr[j]), he, max_c)
                        per_section[s] = {"stain_matrix": he.tolist(), "max_conc": max_c.tolist()}
                    per_section.setdefault(s, {})["um_per_px"] = um_per_px
                    per_section[s]["read_scale"] = level.scale
                finally:
                    level.close()
        finally:
            images.close()  # stopped early: the image read ahead is closed
            cutters.shutdown(wait=True)
            arr.close()
        meta = {
            "fingerprint": fp, "version": CACHE_VERSION, **asdict(cfg), "obs_names": list(map(str, names)),
            "outside_fraction": outside_frac.tolist(), "n_padded": int((outside_frac > 0).sum()),
            "sections": per_section, "skipped_sections": skipped,
            **({"shard_sizes": sizes, "shard_sections": sections} if cfg.shards == "section" else {}),
        }
        write_json_atomic(tmp / "meta.json", meta)
    return PatchStore(target)
