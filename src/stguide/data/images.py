"""Section images: read a level at (or just finer than) a target scale without decoding full resolution.

* JPEG (and other Pillow formats): Pillow's ``draft`` decodes JPEG at 1/2, 1/4 or 1/8 scale.
* TIFF: the coarsest pyramid level that is not coarser than needed; a tiled TIFF without a pyramid is streamed in
  strips of tiles and reduced on the fly, so the full-resolution image is never held in memory.
* Whole-slide formats (``.svs``, ``.ndpi``, ``.mrxs``, ...): OpenSlide, reading regions from the best level.

All coordinates given to a :class:`Level` are full-resolution pixels.
"""
from __future__ import annotations

import contextlib
import math
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


@dataclass
class Level:
    """One resolution level of an image, in memory (``array``) or read on demand (``slide``)."""

    path: Path
    scale: float  # full-resolution pixels per level pixel
    full_size: tuple[int, int]
    array: np.ndarray | None = None
    slide: Any = None  # an openslide.OpenSlide, when read on demand
    slide_level: int = 0

    @property
    def size(self) -> tuple[int, int]:
        if self.array is not None:
            return self.array.shape[1], self.array.shape[0]
        w, h = self.full_size
        return int(w / self.scale), int(h / self.scale)

    def _read(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Level pixels [y0:y1, x0:x1], already clipped to the level."""
        if self.array is not None:
            return self.array[y0:y1, x0:x1]
        region = self.slide.read_region(
            (int(x0 * self.scale), int(y0 * self.scale)), self.slide_level, (x1 - x0, y1 - y0)
        )
        rgba = np.asarray(region)
        rgb = rgba[..., :3].copy()
        rgb[rgba[..., 3] == 0] = 255
        return rgb

    def cut(self, cx: float, cy: float, half: float, out_px: int, fill: int = 255) -> tuple[np.ndarray, float]:
        """A square of side ``2*half`` full-res px around (cx, cy), resampled to ``out_px``.

        Returns the uint8 patch and the fraction of its field of view that lies outside the image (padded with
        ``fill``).
        """
        s = self.scale
        bx0, by0, bx1, by1 = (cx - half) / s, (cy - half) / s, (cx + half) / s, (cy + half) / s
        ix0, iy0, ix1, iy1 = math.floor(bx0), math.floor(by0), math.ceil(bx1), math.ceil(by1)
        w, h = self.size
        cx0, cy0, cx1, cy1 = max(ix0, 0), max(iy0, 0), min(ix1, w), min(iy1, h)
        canvas = np.full((iy1 - iy0, ix1 - ix0, 3), fill, dtype=np.uint8)
        inside = 0.0
        if cx1 > cx0 and cy1 > cy0:
            canvas[cy0 - iy0 : cy1 - iy0, cx0 - ix0 : cx1 - ix0] = self._read(cx0, cy0, cx1, cy1)
            inside = (min(bx1, w) - max(bx0, 0)) * (min(by1, h) - max(by0, 0))
            inside = max(inside, 0.0) / ((bx1 - bx0) * (by1 - by0))
        patch = Image.fromarray(canvas).resize(
            (out_px, out_px), Image.Resampling.BILINEAR, box=(bx0 - ix0, by0 - iy0, bx1 - ix0, by1 - iy0)
        )
        return np.asarray(patch, dtype=np.uint8), float(1.0 - min(inside, 1.0))

    def close(self) -> None:
        if self.slide is not None:
            self.slide.close()


def _pillow_level(path: Path, downsample: float) -> Level:
    im = Image.open(path)
    full = im.size
    if im.format == "JPEG" and downsample >= 2:
        d = max(f for f in (1, 2, 4, 8) if f <= downsample)
        im.draft("RGB", (math.ceil(full[0] / d), math.ceil(full[1] / d)))
    arr = np.asarray(im.convert("RGB"))
    return Level(path, full[0] / arr.shape[1], full, array=arr)


def _tiff_level(path: Path, downsample: float) -> Level:
    import tifffile

    with tifffile.TiffFile(path) as tf:
        series = tf.series[0]
        base = series.levels[0]
        axes = base.axes
        full = (int(base.shape[axes.index("X")]), int(base.shape[axes.index("Y")]))
        best, best_ds = base, 1.0
        for lvl in series.levels[1:]:
            ds = full[0] / lvl.shape[lvl.axes.index("X")]
            if ds <= downsample and ds > best_ds:
                best, best_ds = lvl, ds
        page = best.keyframe if hasattr(best, "keyframe") else best.pages[0]
        factor = int(downsample / best_ds)
        if factor >= 2 and getattr(page, "is_tiled", False) and best.axes.startswith("YX"):
            arr = _stream_reduce(best, factor)
            return Level(path, full[0] / arr.shape[1], full, array=arr)
        arr = best.asarray()
    arr = _to_rgb(arr, best.axes)
    return Level(path, full[0] / arr.shape[1], full, array=arr)


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


def open_level(path: str | PathLike, downsample: float = 1.0) -> Level:
    """Open ``path`` at the coarsest stored or cheaply decodable level whose scale is at most ``downsample``.

    ``downsample`` is full-resolution pixels per output pixel of the patches to be cut; 1 reads full resolution.
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
            return _tiff_level(path, downsample)
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
