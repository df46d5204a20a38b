"""OME-NGFF (OME-Zarr) multiscale images, the image elements of a SpatialData store (``STORE.zarr/images/NAME``):
the coarsest scale not coarser than the patches need, decoded whole or read chunk by chunk (zarr v3 and v2 stores).

A level's axes are read from the multiscale metadata; a 2-D image with a channel axis first (SpatialData's and the
OME-NGFF order ``c, y, x``) or last, or without one, is accepted, and its first three channels are the RGB of the patches."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from stguide.data.level import Level, to_rgb
from stguide.errors import InputError

_AXIS = {"c": "S", "y": "Y", "x": "X"}


def is_ngff(path: Path) -> bool:
    """Whether ``path`` is a zarr group folder (an OME-NGFF image element is one)."""
    return path.is_dir() and ((path / "zarr.json").is_file() or (path / ".zattrs").is_file() or (path / ".zgroup").is_file())


def multiscale(path: Path) -> tuple[Any, list[str], str]:
    """(the zarr group, its scales' array paths from finest to coarsest, the axes as level letters, e.g. ``SYX``)."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    attrs: dict[str, Any] = dict(group.attrs)
    scales = (attrs.get("ome") or attrs).get("multiscales")
    if not scales:
        raise InputError(path, "is a zarr group but not an OME-NGFF image (no 'multiscales' metadata)",
                         "give an image element of a SpatialData store (STORE.zarr/images/NAME)")
    ms: dict[str, Any] = scales[0]
    names = [a["name"] if isinstance(a, dict) else str(a) for a in ms.get("axes", [])]
    if names not in (["c", "y", "x"], ["y", "x"], ["y", "x", "c"]):  # the orders a Level reads as they are stored
        raise InputError(path, f"has axes {names}; stguide reads 2-D images (c, y, x; y, x; or y, x, c)",
                         "give a 2-D H&E image element (a 3-D or time-lapse image has no single section plane)")
    return group, [d["path"] for d in ms["datasets"]], "".join(_AXIS[n] for n in names)


def _size(arr: Any, axes: str) -> tuple[int, int]:
    return int(arr.shape[axes.index("X")]), int(arr.shape[axes.index("Y")])


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of the finest scale."""
    group, paths, axes = multiscale(path)
    return _size(group[paths[0]], axes)


def open_level(path: Path, downsample: float, lazy: bool = False) -> Level:
    """The coarsest scale whose downsample is at most ``downsample``: decoded whole, or (``lazy``) read chunk by chunk."""
    group, paths, axes = multiscale(path)
    full = _size(group[paths[0]], axes)
    best, best_ds = paths[0], 1.0
    for p in paths[1:]:
        ds = full[0] / _size(group[p], axes)[0]
        if best_ds < ds <= downsample:
            best, best_ds = p, ds
    arr = group[best]
    if lazy:
        return Level(path, best_ds, full, lazy=arr, lazy_axes=axes)
    data = to_rgb(np.asarray(arr[...]), axes)
    return Level(path, full[0] / data.shape[1], full, array=data)
