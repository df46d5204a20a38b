"""A resolution level of a section image, and cutting patches from it: one field at a time (:meth:`Level.cut`) or
overlapping fields from one shared resample (:meth:`Level.cut_group`, grouped by :meth:`Level.sharing_groups`).

All coordinates given to a :class:`Level` are full-resolution pixels. Levels are opened by
:func:`stguide.data.images.open_level`.
"""
from __future__ import annotations

import contextlib
import math
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CHUNK_CACHE_BYTES = 96 * 2**20  # decoded tiles kept by a lazily read level (Level._read_chunks)
# Level.sharing_groups: cells of this many patch sides (boxes up to ~4 sides, where torch's kernel keeps its cost per
# pixel: benchmarks/patch_cut_profile.py), shared when the box has at most this share of the pixels cut one by one
SHARE_CELL = 3
SHARE_GAIN = 0.5
SHARE_MAX_PX = 2048  # a shared box's largest side (larger boxes cost torch's kernel more per pixel, and memory)
SHARE_MARGIN = 3  # level px read around each field of a shared box (Level.cut_group; tiff.needed_tiles decodes them)


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch's intra-op threads set to one for the block (restored after): for callers that resample on threads of
    their own."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resample(region: np.ndarray, factor: float, out_px: int) -> np.ndarray:
    """The top-left ``out_px`` × ``out_px`` of ``region`` (H × W × 3 uint8) scaled by ``factor``, with the
    antialiased bilinear filter Pillow's ``resize`` uses (torch's uint8 kernel of it: the same filter to within one
    grey level, several times faster, and it releases the GIL, so the cutting threads run in parallel)."""
    import torch  # here, so that reading data does not load torch until a patch is cut
    import torch.nn.functional as F

    if not region.flags.writeable:  # e.g. a Pillow crop; torch wraps only writeable memory without a warning
        region = region.copy()
    # channels last and contiguous in, as the fast uint8 kernel wants; then the result is channels last too, so the
    # patch below is a view of it in H × W × 3 order (no transposing copy)
    x = torch.from_numpy(region).permute(2, 0, 1)[None].contiguous(memory_format=torch.channels_last)
    out = F.interpolate(x, scale_factor=factor, mode="bilinear", antialias=True, recompute_scale_factor=False)
    return out[0, :, :out_px, :out_px].permute(1, 2, 0).numpy()


@dataclass
class Level:
    """One resolution level of an image: in memory (``array``, or ``pil`` for a decoded JPEG/PNG) or read on demand
    (``slide``, ``lazy``)."""

    path: Path
    scale: float  # full-resolution pixels per level pixel
    full_size: tuple[int, int]
    array: np.ndarray | None = None
    slide: Any = None  # an openslide.OpenSlide, when read on demand
    slide_level: int = 0
    lazy: Any = None  # a zarr array over a TIFF level (Y, X[, S]), when read on demand
    lazy_axes: str = "YXS"
    store: Any = None
    pil: Any = None  # a decoded Pillow image (JPEG/PNG)
    chunk_cache: OrderedDict | None = None  # decoded tiles of a lazy level, least recently used first
    chunk_cache_cap: int = 0
    tiles: np.ndarray | None = None  # for an array decoded in part: which of its tiles hold the image
    tile_shape: tuple[int, int] = (0, 0)

    @property
    def size(self) -> tuple[int, int]:
        if self.array is not None:
            return self.array.shape[1], self.array.shape[0]
        if self.pil is not None:
            return self.pil.size
        if self.lazy is not None:
            return int(self.lazy.shape[self.lazy_axes.index("X")]), int(self.lazy.shape[self.lazy_axes.index("Y")])
        w, h = self.full_size
        return int(w / self.scale), int(h / self.scale)

    def _read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Level pixels [y0:y1, x0:x1], already clipped to the level."""
        if self.array is not None:
            if self.tiles is not None and not self._decoded(x0, y0, x1, y1):
                raise RuntimeError(f"{self.path}: level region ({x0}, {y0})-({x1}, {y1}) lies outside the fields "
                                   "it was opened for")
            return self.array[y0:y1, x0:x1]
        if self.pil is not None:
            return np.asarray(self.pil.crop((x0, y0, x1, y1)))
        if self.lazy is not None:
            return self._read_chunks(x0, y0, x1, y1)
        region = self.slide.read_region(
            (int(x0 * self.scale), int(y0 * self.scale)), self.slide_level, (x1 - x0, y1 - y0)
        )
        rgba = np.asarray(region)
        rgb = rgba[..., :3].copy()
        rgb[rgba[..., 3] == 0] = 255
        return rgb

    def _lazy_region(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        if self.lazy_axes.startswith("S"):
            return to_rgb(np.asarray(self.lazy[:, y0:y1, x0:x1]), self.lazy_axes)
        return to_rgb(np.asarray(self.lazy[y0:y1, x0:x1]), self.lazy_axes)

    def _read_chunks(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """A region of a lazy level assembled from its stored tiles (or strips), each decoded once while it stays in
        a small cache: neighbouring patches share tiles, and a row-by-row walk over the slide reuses the previous
        row's. The cache holds one row of tiles more than a region spans (two for a region within one row), at most
        ``CHUNK_CACHE_BYTES``."""
        ch, cw = (int(self.lazy.chunks[self.lazy_axes.index(a)]) for a in "YX")
        w, h = self.size
        if self.chunk_cache is None:
            self.chunk_cache = OrderedDict()
        rows = (y1 - 1) // ch - y0 // ch + 2
        self.chunk_cache_cap = max(self.chunk_cache_cap, 4, min(rows * -(-w // cw) + 4, CHUNK_CACHE_BYTES // (ch * cw * 3)))
        cache = self.chunk_cache
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        for ty in range(y0 // ch, (y1 - 1) // ch + 1):
            for tx in range(x0 // cw, (x1 - 1) // cw + 1):
                block = cache.get((ty, tx))
                if block is None:
                    block = self._lazy_region(tx * cw, ty * ch, min((tx + 1) * cw, w), min((ty + 1) * ch, h))
                    cache[(ty, tx)] = block
                    if len(cache) > self.chunk_cache_cap:
                        cache.popitem(last=False)
                else:
                    cache.move_to_end((ty, tx))
                by, bx = ty * ch, tx * cw
                sy0, sy1, sx0, sx1 = max(y0, by), min(y1, by + block.shape[0]), max(x0, bx), min(x1, bx + block.shape[1])
                out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = block[sy0 - by : sy1 - by, sx0 - bx : sx1 - bx]
        return out

    def _fields(self, cx, cy, half: float) -> tuple[np.ndarray, np.ndarray, int, float]:
        """The fields around centres (cx, cy): each one's first level pixel (x0, y0: the one nearest its exact
        corner), the width in level pixels to read (one more than the side, so that the resample never runs short of
        input), and the exact side in level pixels."""
        s, side = self.scale, 2 * half / self.scale
        x0 = np.floor((np.asarray(cx, dtype=float) - half) / s + 0.5).astype(np.int64)
        y0 = np.floor((np.asarray(cy, dtype=float) - half) / s + 0.5).astype(np.int64)
        return x0, y0, math.floor(side) + 1, side

    def _region(self, x0: int, y0: int, nx: int, ny: int, fill: int) -> np.ndarray:
        """Level pixels [y0:y0+ny, x0:x0+nx]; what lies outside the level is ``fill``."""
        w, h = self.size
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x0 + nx, w), min(y0 + ny, h)
        if cx1 - cx0 == nx and cy1 - cy0 == ny:
            return self._read(cx0, cy0, cx1, cy1)
        region = np.full((ny, nx, 3), fill, dtype=np.uint8)
        if cx1 > cx0 and cy1 > cy0:
            region[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = self._read(cx0, cy0, cx1, cy1)
        return region

    def _outside(self, x0: int, y0: int, side: float) -> float:
        """The fraction of a field of view (first level pixel x0, y0; side in level px) that lies outside the level."""
        w, h = self.size
        inside = max(min(x0 + side, w) - max(x0, 0), 0.0) * max(min(y0 + side, h) - max(y0, 0), 0.0) / side**2
        return float(1.0 - min(inside, 1.0))

    def cut(self, cx: float, cy: float, half: float, out_px: int, fill: int = 255) -> tuple[np.ndarray, float]:
        """A square of side ``2*half`` full-res px around (cx, cy), resampled to ``out_px``.

        The square starts at the level pixel nearest its exact corner (at most half a level pixel off, i.e. a
        fraction of a µm at the levels patches are read from) and keeps its exact physical side. Returns the uint8
        patch and the fraction of its field of view that lies outside the image (padded with ``fill``).
        """
        fx, fy, n, side = self._fields(cx, cy, half)
        x0, y0 = int(fx), int(fy)
        return resample(self._region(x0, y0, n, n, fill), out_px / side, out_px), self._outside(x0, y0, side)

    def cut_group(self, cx: np.ndarray, cy: np.ndarray, half: float, out_px: int, fill: int = 255) -> tuple[np.ndarray, np.ndarray]:
        """The patches of several spots (as :meth:`cut`) from one resample of the box that holds their fields, so
        that a pixel several patches share is resampled once (groups from :meth:`sharing_groups`). Each patch is
        the crop of the resampled box at the output pixel nearest its exact corner: at most half an output pixel off
        (0.45 µm for 200 µm at 224 px) instead of half a level pixel, with the same physical side. The box holds the
        fields with ``SHARE_MARGIN`` level pixels around each (what the filter reads beyond a crop when the level is
        at most 2× finer than the patches); of a level decoded only where the fields lie, the rest of the box is
        ``fill``, which no crop reads. A group of one is :meth:`cut`. Returns the patches (k × out_px × out_px × 3
        uint8) and the fraction of each one's field of view that lies outside the image."""
        if len(cx) == 1:
            patch, outside = self.cut(float(cx[0]), float(cy[0]), half, out_px, fill)
            return patch[None], np.array([outside])
        x0, y0, n, side = self._fields(cx, cy, half)
        m = SHARE_MARGIN
        bx, by, bw, bh = share_box(x0, y0, n)
        if self.tiles is None or self._decoded(bx, by, bx + bw, by + bh):
            box = self._region(bx, by, bw, bh, fill)
        else:  # at the tissue's edge the box reaches tiles no field touches (never decoded): the fields alone
            box = np.full((bh, bw, 3), fill, dtype=np.uint8)
            for a, b in zip(x0 - m - bx, y0 - m - by, strict=True):
                box[b : b + n + 2 * m, a : a + n + 2 * m] = self._region(int(a) + bx, int(b) + by, n + 2 * m, n + 2 * m, fill)
        f = out_px / side
        big = resample(box, f, max(bw, bh))
        s = self.scale
        ox = np.clip(np.round(((np.asarray(cx) - half) / s - bx) * f).astype(int), 0, big.shape[1] - out_px)
        oy = np.clip(np.round(((np.asarray(cy) - half) / s - by) * f).astype(int), 0, big.shape[0] - out_px)
        patches = np.stack([big[j : j + out_px, i : i + out_px] for i, j in zip(ox, oy, strict=True)])
        return patches, np.array([self._outside(int(a), int(b), side) for a, b in zip(x0, y0, strict=True)])

    def _decoded(self, x0: int, y0: int, x1: int, y1: int) -> bool:
        """Whether a level decoded in part holds every tile of level pixels [y0:y1, x0:x1] that lies in the level."""
        assert self.tiles is not None
        w, h = self.size
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        th, tw = self.tile_shape
        return x1 <= x0 or y1 <= y0 or bool(self.tiles[y0 // th : (y1 - 1) // th + 1, x0 // tw : (x1 - 1) // tw + 1].all())

    def sharing_groups(self, cx: np.ndarray, cy: np.ndarray, half: float, out_px: int) -> list[np.ndarray]:
        """The spots (indices into ``cx``, ``cy``) to cut together by :meth:`cut_group`, in reading order (cells
        top to bottom, left to right, and top to bottom within a cell).

        Spots fall into cells of ``SHARE_CELL`` patch sides (fewer for patches so large that a box would exceed
        ``SHARE_MAX_PX`` a side; none above half of it) on a lattice fixed to the level (a spot's group does
        not depend on the order of the spots); a cell's spots share one resample when their box has at most
        ``SHARE_GAIN`` times the pixels of their fields resampled one by one, i.e. where patches overlap much
        (Visium's 100 µm pitch under 200 µm patches: each tissue pixel lies in four or five), and the level is at
        most 2× finer than the patches (so that the filter reads no further than ``SHARE_MARGIN`` beyond a crop).
        Elsewhere (HER2ST's 200 µm grid under 200 µm patches) each spot is a group of one, cut as before."""
        x0, y0, n, side = self._fields(cx, cy, half)
        sides = min(SHARE_CELL, (SHARE_MAX_PX - 2 * SHARE_MARGIN) // n - 1)  # a box never exceeds SHARE_MAX_PX a side
        keys = np.stack([y0 // (max(sides, 1) * n), x0 // (max(sides, 1) * n), y0, x0])
        order = np.lexsort(keys[::-1])  # by cell row, cell column, then top to bottom within a cell
        if len(order) == 0 or out_px / side < 0.5 or sides < 1:
            return [order[i : i + 1] for i in range(len(order))]
        cells = np.split(order, np.flatnonzero(np.any(np.diff(keys[:2, order], axis=1) != 0, axis=0)) + 1)
        groups: list[np.ndarray] = []
        for g in cells:
            _, _, bw, bh = share_box(x0[g], y0[g], n)
            if len(g) > 1 and bw * bh <= SHARE_GAIN * len(g) * n * n:
                groups.append(g)
            else:
                groups.extend(g[:, None])
        return groups

    def close(self) -> None:
        if self.pil is not None:
            self.pil.close()
        if self.slide is not None:
            self.slide.close()
        if self.store is not None:
            self.store.close()


def share_box(x0: np.ndarray, y0: np.ndarray, n: int) -> tuple[int, int, int, int]:
    """The box one shared resample reads for fields of ``n`` level px whose first pixels are ``x0``, ``y0``: their
    union with ``SHARE_MARGIN`` px around it, as (x, y, width, height) in level px."""
    m = SHARE_MARGIN
    bx, by = int(x0.min()) - m, int(y0.min()) - m
    return bx, by, int(x0.max()) + n + m - bx, int(y0.max()) + n + m - by


def to_rgb(arr: np.ndarray, axes: str) -> np.ndarray:
    if axes.startswith("S"):  # planar RGB
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = (arr / max(float(arr.max()), 1.0) * 255).astype(np.uint8)
    return np.ascontiguousarray(arr)
