"""Section images: read a level at (or just finer than) a target scale without decoding full resolution.

* JPEG (and other Pillow formats): Pillow's ``draft`` decodes JPEG at 1/2, 1/4 or 1/8 scale.
* TIFF: the coarsest pyramid level that is not coarser than needed; a tiled TIFF without a pyramid is streamed in
  strips of tiles and reduced on the fly, so the full-resolution image is never held in memory. A tiled level's
  tiles decode on all cores.
* Whole-slide formats (``.svs``, ``.ndpi``, ``.mrxs``, ...): OpenSlide, reading regions from the best level.
* OME-NGFF (OME-Zarr) multiscale images, e.g. a SpatialData store's image element ``STORE.zarr/images/NAME``: the
  coarsest stored scale not coarser than needed, whole or chunk by chunk (``ngff.py``).

All coordinates given to a :class:`~stguide.data.level.Level` are full-resolution pixels; the level and its cutting live
in ``level.py``, the TIFF decoding in ``tiff.py``.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from os import PathLike
from pathlib import Path

import numpy as np
from PIL import Image

from stguide.data import ngff, tiff
from stguide.data.level import Level
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
    if ngff.is_ngff(path):
        return "ngff"
    name = path.name.lower()
    if name.endswith(OPENSLIDE_SUFFIXES):
        return "openslide"
    if name.endswith(TIFF_SUFFIXES):
        return "tiff"
    return "pillow"


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Check that ``path`` exists, and turn any decoder failure inside the block into one clear InputError."""
    if not path.is_file() and not ngff.is_ngff(path):
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
        if kind == "ngff":
            return ngff.image_size(path)
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
        if kind == "ngff":
            return ngff.open_level(path, downsample, lazy)
        if kind == "openslide":
            import openslide

            slide = openslide.OpenSlide(str(path))
            lvl = slide.get_best_level_for_downsample(max(downsample, 1.0))
            w, h = slide.dimensions
            return Level(path, float(slide.level_downsamples[lvl]), (int(w), int(h)), slide=slide, slide_level=lvl)
        if kind == "tiff":
            return tiff.lazy_level(path, downsample) if lazy else tiff.read_level(path, downsample, fields)
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
        if kind == "ngff":
            return None
        if kind == "openslide":
            import openslide

            with openslide.OpenSlide(str(path)) as s:
                mpp = s.properties.get(openslide.PROPERTY_NAME_MPP_X)
                value = float(mpp) if mpp else None
        elif kind == "tiff":
            value = tiff.um_per_px(path)
        else:
            with Image.open(path) as im:
                dpi = im.info.get("dpi")
                value = 25_400.0 / float(dpi[0]) if dpi and float(dpi[0]) > 0 else None
    lo, hi = PLAUSIBLE_UM_PER_PX
    return value if value is not None and lo <= value <= hi else None
