"""Section images: read a level at (or just finer than) a target scale without decoding full resolution.

* JPEG (and other Pillow formats): Pillow's ``draft`` decodes JPEG at 1/2, 1/4 or 1/8 scale.
* TIFF: the coarsest pyramid level that is not coarser than needed; a tiled TIFF without a pyramid is streamed in
  strips of tiles and reduced on the fly, so the full-resolution image is never held in memory. A tiled level's
  tiles decode on all cores.
* Whole-slide formats (``.svs``, ``.ndpi``, ``.mrxs``, ...): OpenSlide, reading regions from the best level.

All coordinates given to a :class:`Level` are full-resolution pixels.
"""
from __future__ import annotations

import contextlib
import math
import mmap
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from stguide.errors import InputError

Image.MAX_IMAGE_PIXELS = None  # section images are large by nature; the user chose the file
OPENSLIDE_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".ome.tif")
CHUNK_CACHE_BYTES = 96 * 2**20  # decoded tiles kept by a lazily read level (Level._read_chunks)
# Level.sharing_groups: cells of this many patch sides (boxes up to ~4 sides, where torch's kernel keeps its cost per
# pixel: benchmarks/patch_cut_profile.py), shared when the box has at most this share of the pixels cut one by one
SHARE_CELL = 3
SHARE_GAIN = 0.5
SHARE_MARGIN = 3  # level px read around each field of a shared box (Level.cut_group; _needed_tiles decodes them)


def _unreadable(path: Path, e: Exception) -> InputError:
    return InputError(
        path,
        f"the image cannot be read ({type(e).__name__}: {e})",
        "check that the file is complete (not a cut-off download) and is a JPEG, PNG, TIFF or OpenSlide format",
    )


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(OPENSLIDE_SUFFIXES):
        return "openslide"
    if name.endswith(TIFF_SUFFIXES):
        return "tiff"
    return "pillow"


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Check that ``path`` exists, and turn any decoder failure inside the block into one clear InputError."""
    if not path.is_file():
        raise InputError(path, "the image file does not exist", "check the path, or load the section without an image")
    try:
        yield
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - decoder errors become one clear message
        raise _unreadable(path, e) from None


def image_size(path: str | PathLike) -> tuple[int, int]:
    """(width, height) of the full-resolution image, reading only its header."""
    path = Path(path)
    with _reading(path):
        kind = _kind(path)
        if kind == "openslide":
            import openslide

            with openslide.OpenSlide(str(path)) as s:
                return tuple(int(v) for v in s.dimensions)  # type: ignore[return-value]
        if kind == "tiff":
            import tifffile

            with tifffile.TiffFile(path) as tf:
                shape = tf.series[0].levels[0].shape
                axes = tf.series[0].levels[0].axes
                return int(shape[axes.index("X")]), int(shape[axes.index("Y")])
        with Image.open(path) as im:
            return im.size


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
            if self.tiles is not None:
                th, tw = self.tile_shape
                if not self.tiles[y0 // th : (y1 - 1) // th + 1, x0 // tw : (x1 - 1) // tw + 1].all():
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
            return _to_rgb(np.asarray(self.lazy[:, y0:y1, x0:x1]), self.lazy_axes)
        return _to_rgb(np.asarray(self.lazy[y0:y1, x0:x1]), self.lazy_axes)

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
        bx, by = int(x0.min()) - m, int(y0.min()) - m
        bw, bh = int(x0.max()) + n + m - bx, int(y0.max()) + n + m - by
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

        Spots fall into cells of ``SHARE_CELL`` patch sides on a lattice fixed to the level (a spot's group does
        not depend on the order of the spots); a cell's spots share one resample when their box has at most
        ``SHARE_GAIN`` times the pixels of their fields resampled one by one, i.e. where patches overlap much
        (Visium's 100 µm pitch under 200 µm patches: each tissue pixel lies in four or five), and the level is at
        most 2× finer than the patches (so that the filter reads no further than ``SHARE_MARGIN`` beyond a crop).
        Elsewhere (HER2ST's 200 µm grid under 200 µm patches) each spot is a group of one, cut as before."""
        x0, y0, n, side = self._fields(cx, cy, half)
        keys = np.stack([y0 // (SHARE_CELL * n), x0 // (SHARE_CELL * n), y0, x0])
        order = np.lexsort(keys[::-1])  # by cell row, cell column, then top to bottom within a cell
        if len(order) == 0 or out_px / side < 0.5:
            return [order[i : i + 1] for i in range(len(order))]
        cells = np.split(order, np.flatnonzero(np.any(np.diff(keys[:2, order], axis=1) != 0, axis=0)) + 1)
        groups: list[np.ndarray] = []
        for g in cells:
            area = (int(np.ptp(x0[g])) + n + 2 * SHARE_MARGIN) * (int(np.ptp(y0[g])) + n + 2 * SHARE_MARGIN)
            if len(g) > 1 and area <= SHARE_GAIN * len(g) * n * n:
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


def _pillow_level(path: Path, downsample: float) -> Level:
    """A JPEG/PNG decoded once (a JPEG at the smallest draft scale that keeps ``downsample``), kept as Pillow's own
    image: regions are cropped from it, so the whole image is never copied into an array."""
    im: Image.Image = Image.open(path)
    full = im.size
    if im.format == "JPEG" and downsample >= 2:
        d = max(f for f in (1, 2, 4, 8) if f <= downsample)
        im.draft("RGB", (math.ceil(full[0] / d), math.ceil(full[1] / d)))
    im.load()
    if im.mode != "RGB":
        im = im.convert("RGB")
    return Level(path, full[0] / im.size[0], full, pil=im)


def _tiff_pick_level(series, downsample: float) -> tuple[tuple[int, int], int, float]:
    """(full-resolution size, index of the coarsest pyramid level not coarser than ``downsample``, its downsample)."""
    base = series.levels[0]
    full = (int(base.shape[base.axes.index("X")]), int(base.shape[base.axes.index("Y")]))
    index, best_ds = 0, 1.0
    for i, lvl in enumerate(series.levels[1:], start=1):
        ds = full[0] / lvl.shape[lvl.axes.index("X")]
        if best_ds < ds <= downsample:
            index, best_ds = i, ds
    return full, index, best_ds


def _tiff_lazy_level(path: Path, downsample: float) -> Level:
    """The coarsest pyramid level not coarser than ``downsample``, read region by region through zarr (memory stays
    flat in the image's size)."""
    import tifffile
    import zarr

    with tifffile.TiffFile(path) as tf:
        full, index, best_ds = _tiff_pick_level(tf.series[0], downsample)
        axes = tf.series[0].levels[index].axes
    store = tifffile.imread(path, aszarr=True, level=index)
    z = zarr.open_array(store, mode="r")
    return Level(path, best_ds, full, lazy=z, lazy_axes=axes, store=store)


def _tiff_level(path: Path, downsample: float, fields: np.ndarray | None = None) -> Level:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        full, index, best_ds = _tiff_pick_level(tf.series[0], downsample)
        best = tf.series[0].levels[index]
        page = best.keyframe if hasattr(best, "keyframe") else best.pages[0]
        factor = int(downsample / best_ds)
        tiled = getattr(page, "is_tiled", False)
        if factor >= 2 and tiled and best.axes.startswith("YX"):
            arr = _stream_reduce(best, factor)
            return Level(path, full[0] / arr.shape[1], full, array=arr)
        if fields is not None and tiled and best.axes in ("YX", "YXS") and len(best.pages) == 1 and best.dtype == np.uint8:
            arr, needed, tile = _decode_tiles(best.pages[0], fields, best_ds)
            return Level(path, best_ds, full, array=_to_rgb(arr, best.axes), tiles=needed, tile_shape=tile)
        # tiles decode on all cores (tifffile's default: half)
        arr = best.asarray(maxworkers=os.cpu_count(), out=blank(best.shape) if best.dtype == np.uint8 else None)
    arr = _to_rgb(arr, best.axes)
    return Level(path, full[0] / arr.shape[1], full, array=arr)


def blank(shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed uint8 array for a decoded level, in an anonymous memory map: a page is allocated when first written
    (what no tile fills costs nothing), and without the huge pages numpy asks the kernel for, whose compaction
    stalled a large decode here for up to a second (``benchmarks/patch_extraction.py``)."""
    size = int(np.prod(shape))
    return np.frombuffer(mmap.mmap(-1, max(size, 1)), np.uint8)[:size].reshape(shape)


def _needed_tiles(fields: np.ndarray, scale: float, shape: tuple[int, int], tile: tuple[int, int]) -> np.ndarray:
    """Which tiles of a level (``shape`` px in tiles of ``tile`` px) the full-resolution boxes ``fields``
    (x0, y0, x1, y1 rows) touch, with the pixels of margin :meth:`Level.cut` (one, after rounding) and
    :meth:`Level.cut_group` (``SHARE_MARGIN`` more) read beyond a box."""
    th, tw = tile
    grid = np.zeros((-(-shape[0] // th), -(-shape[1] // tw)), dtype=bool)
    lo = np.floor(np.asarray(fields, float)[:, :2] / scale).astype(np.int64) - SHARE_MARGIN
    hi = np.ceil(np.asarray(fields, float)[:, 2:] / scale).astype(np.int64) + 2 + SHARE_MARGIN  # exclusive
    lo = np.clip(lo, 0, [shape[1], shape[0]])
    hi = np.clip(hi, 0, [shape[1], shape[0]])
    for (x0, y0), (x1, y1) in zip(lo, hi, strict=True):
        if x1 > x0 and y1 > y0:
            grid[y0 // th : (y1 - 1) // th + 1, x0 // tw : (x1 - 1) // tw + 1] = True
    return grid


def _decode_tiles(page, fields: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """A tiled TIFF page decoded only where ``fields`` need it, its tiles on all cores; the rest of the array is
    never written (zeros that the operating system does not even allocate) and is not to be read. Returns the
    array, the grid of which tiles hold the image, and the tile shape."""
    from concurrent.futures import ThreadPoolExecutor

    h, w = int(page.imagelength), int(page.imagewidth)
    th, tw = int(page.tilelength), int(page.tilewidth)
    needed = _needed_tiles(fields, scale, (h, w), (th, tw))
    arr = blank((h, w, page.samplesperpixel) if page.samplesperpixel > 1 else (h, w))
    jpeg = {"jpegtables": page.jpegtables, "jpegheader": page.jpegheader} if page.compression in (6, 7, 33007, 34892) else {}

    def put(segment: tuple[bytes | None, int]) -> None:
        data, index = segment
        tile, at, _ = page.decode(data, index, **jpeg)
        if tile is None:  # an empty tile: left as zeros, as tifffile leaves it
            return
        y, x = at[2], at[3]
        tile = tile.reshape(tile.shape[1], tile.shape[2], -1)[: h - y, : w - x]
        arr[y : y + tile.shape[0], x : x + tile.shape[1]] = tile if arr.ndim == 3 else tile[..., 0]

    indices = np.flatnonzero(needed.ravel())
    offsets, counts = np.asarray(page.dataoffsets)[indices], np.asarray(page.databytecounts)[indices]
    fh = page.parent.filehandle
    with ThreadPoolExecutor(os.cpu_count()) as pool:
        for chunk in fh.read_segments(offsets, counts, indices=indices.tolist(), lock=fh.lock, flat=False):
            list(pool.map(put, chunk))
    return arr, needed, (th, tw)


def _to_rgb(arr: np.ndarray, axes: str) -> np.ndarray:
    if axes.startswith("S"):  # planar RGB
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    arr = arr[..., :3]
    if arr.dtype != np.uint8:
        arr = (arr / max(float(arr.max()), 1.0) * 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _stream_reduce(level, factor: int) -> np.ndarray:
    """Reduce a tiled TIFF level by ``factor`` reading one strip of tiles at a time."""
    import zarr

    store = level.aszarr()
    z = zarr.open_array(store, mode="r")
    h, w = z.shape[0], z.shape[1]
    tile_h = level.keyframe.tilelength
    strip = tile_h * factor
    out_h, out_w = h // factor, w // factor
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    for y in range(0, out_h * factor, strip):
        y1 = min(y + strip, out_h * factor)
        block = _to_rgb(np.asarray(z[y:y1, : out_w * factor]), "YXS")
        red = Image.fromarray(block).reduce(factor)
        out[y // factor : y // factor + red.size[1]] = np.asarray(red)
    store.close()
    return out


def open_level(path: str | PathLike, downsample: float = 1.0, lazy: bool = False,
               fields: np.ndarray | None = None) -> Level:
    """Open ``path`` at the coarsest stored or cheaply decodable level whose scale is at most ``downsample``.

    ``downsample`` is full-resolution pixels per output pixel of the patches to be cut; 1 reads full resolution.
    ``lazy``: a TIFF is read region by region on demand instead of decoded into memory (for whole slides; OpenSlide
    formats are always read on demand, JPEG/PNG never can be).
    ``fields``: the full-resolution boxes (rows of x0, y0, x1, y1) that will be cut, when known in advance: a tiled
    TIFF level then decodes only the tiles they touch (a slide's background is never decoded), and the level refuses
    to read outside them.
    Raises :class:`InputError` when the file is missing, truncated or not an image.
    """
    path = Path(path)
    with _reading(path):
        kind = _kind(path)
        if kind == "openslide":
            import openslide

            slide = openslide.OpenSlide(str(path))
            lvl = slide.get_best_level_for_downsample(max(downsample, 1.0))
            w, h = slide.dimensions
            return Level(path, float(slide.level_downsamples[lvl]), (int(w), int(h)), slide=slide, slide_level=lvl)
        if kind == "tiff":
            return _tiff_lazy_level(path, downsample) if lazy else _tiff_level(path, downsample, fields)
        return _pillow_level(path, downsample)


def thumbnail(path: str | PathLike, width: int, height: int, max_px: int) -> tuple[np.ndarray, float]:
    """A ``max_px`` × ``max_px`` thumbnail of a ``width`` × ``height`` image whose top-left corner is the image's
    (padded with white on the right or bottom when the image is not square), and its scale: thumbnail pixels per
    full-resolution pixel (scanpy's ``tissue_*_scalef``)."""
    side = max(width, height)
    level = open_level(path, downsample=side / max_px)
    try:
        thumb, _ = level.cut(side / 2, side / 2, side / 2, max_px)
    finally:
        level.close()
    return thumb, max_px / side


PLAUSIBLE_UM_PER_PX = (0.05, 20.0)  # microscopy scans; a default 72 dpi tag (353 µm/px) is not a scan's resolution


def native_um_per_px(path: str | PathLike) -> float | None:
    """The full-resolution µm per pixel recorded in the image's own metadata, or ``None`` when there is none (or
    only an implausible one, such as a 72 dpi default). Read: OpenSlide's ``openslide.mpp-x``; for TIFF, the OME
    ``PhysicalSizeX``, an Aperio ``MPP =`` description, or the resolution tags (cm or inch); for other formats,
    Pillow's ``dpi``."""
    path = Path(path)
    with _reading(path):
        kind = _kind(path)
        value: float | None = None
        if kind == "openslide":
            import openslide

            with openslide.OpenSlide(str(path)) as s:
                mpp = s.properties.get(openslide.PROPERTY_NAME_MPP_X)
                value = float(mpp) if mpp else None
        elif kind == "tiff":
            value = _tiff_um_per_px(path)
        else:
            with Image.open(path) as im:
                dpi = im.info.get("dpi")
                value = 25_400.0 / float(dpi[0]) if dpi and float(dpi[0]) > 0 else None
    lo, hi = PLAUSIBLE_UM_PER_PX
    return value if value is not None and lo <= value <= hi else None


def _tiff_um_per_px(path: Path) -> float | None:
    import re

    import tifffile

    with tifffile.TiffFile(path) as tf:
        if tf.is_ome and tf.ome_metadata:
            m = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tf.ome_metadata)
            unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', tf.ome_metadata)
            if m:
                factor = {"nm": 1e-3, "mm": 1e3, "cm": 1e4}.get(unit.group(1) if unit else "µm", 1.0)
                return float(m.group(1)) * factor
        page = tf.pages.first
        mpp = re.search(r"MPP\s*=\s*([0-9.]+)", page.description or "")
        if mpp:
            return float(mpp.group(1))
        tags = page.tags
        if "XResolution" in tags and "ResolutionUnit" in tags:
            num, den = tags["XResolution"].value
            res_unit = int(tags["ResolutionUnit"].value)
            per_unit = num / den if den else 0.0
            if per_unit > 0 and res_unit in (2, 3):  # inch, centimetre
                return (25_400.0 if res_unit == 2 else 10_000.0) / per_unit
    return None
