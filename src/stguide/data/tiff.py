"""TIFF levels: the coarsest pyramid level not coarser than needed, decoded whole (tiles on all cores), only where
the patches' fields lie, streamed in strips and reduced on the fly, or read region by region through zarr; and a
TIFF's own µm per pixel."""
from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
from PIL import Image

from stguide.data.level import SHARE_MARGIN, Level, to_rgb


def pick_level(series, downsample: float) -> tuple[tuple[int, int], int, float]:
    """(full-resolution size, index of the coarsest pyramid level not coarser than ``downsample``, its downsample)."""
    base = series.levels[0]
    full = (int(base.shape[base.axes.index("X")]), int(base.shape[base.axes.index("Y")]))
    index, best_ds = 0, 1.0
    for i, lvl in enumerate(series.levels[1:], start=1):
        ds = full[0] / lvl.shape[lvl.axes.index("X")]
        if best_ds < ds <= downsample:
            index, best_ds = i, ds
    return full, index, best_ds


def lazy_level(path: Path, downsample: float) -> Level:
    """The coarsest pyramid level not coarser than ``downsample``, read region by region through zarr (memory stays
    flat in the image's size)."""
    import tifffile
    import zarr

    with tifffile.TiffFile(path) as tf:
        full, index, best_ds = pick_level(tf.series[0], downsample)
        axes = tf.series[0].levels[index].axes
    store = tifffile.imread(path, aszarr=True, level=index)
    z = zarr.open_array(store, mode="r")
    return Level(path, best_ds, full, lazy=z, lazy_axes=axes, store=store)


def read_level(path: Path, downsample: float, fields: np.ndarray | None = None) -> Level:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        full, index, best_ds = pick_level(tf.series[0], downsample)
        best = tf.series[0].levels[index]
        page = best.keyframe if hasattr(best, "keyframe") else best.pages[0]
        factor = int(downsample / best_ds)
        tiled = getattr(page, "is_tiled", False)
        if factor >= 2 and tiled and best.axes.startswith("YX"):
            arr = stream_reduce(best, factor)
            return Level(path, full[0] / arr.shape[1], full, array=arr)
        if fields is not None and tiled and best.axes in ("YX", "YXS") and len(best.pages) == 1 and best.dtype == np.uint8:
            arr, needed, tile = decode_tiles(best.pages[0], fields, best_ds)
            return Level(path, best_ds, full, array=to_rgb(arr, best.axes), tiles=needed, tile_shape=tile)
        # tiles decode on all cores (tifffile's default: half)
        arr = best.asarray(maxworkers=os.cpu_count(), out=blank(best.shape) if best.dtype == np.uint8 else None)
    arr = to_rgb(arr, best.axes)
    return Level(path, full[0] / arr.shape[1], full, array=arr)


def blank(shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed uint8 array for a decoded level, in an anonymous memory map: a page is allocated when first written
    (what no tile fills costs nothing), and without the huge pages numpy asks the kernel for, which cost more to
    allocate here (``benchmarks/patch_extraction.py --ways floor floor-numpy``)."""
    size = int(np.prod(shape))
    return np.frombuffer(mmap.mmap(-1, max(size, 1)), np.uint8)[:size].reshape(shape)


def needed_tiles(fields: np.ndarray, scale: float, shape: tuple[int, int], tile: tuple[int, int]) -> np.ndarray:
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


def decode_tiles(page, fields: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """A tiled TIFF page decoded only where ``fields`` need it, its tiles on all cores; the rest of the array is
    never written (zeros that the operating system does not even allocate) and is not to be read. Returns the
    array, the grid of which tiles hold the image, and the tile shape."""
    from concurrent.futures import ThreadPoolExecutor

    h, w = int(page.imagelength), int(page.imagewidth)
    th, tw = int(page.tilelength), int(page.tilewidth)
    needed = needed_tiles(fields, scale, (h, w), (th, tw))
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


def stream_reduce(level, factor: int) -> np.ndarray:
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
        block = to_rgb(np.asarray(z[y:y1, : out_w * factor]), "YXS")
        red = Image.fromarray(block).reduce(factor)
        out[y // factor : y // factor + red.size[1]] = np.asarray(red)
    store.close()
    return out


def um_per_px(path: Path) -> float | None:
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
