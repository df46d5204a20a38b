"""A SpatialData zarr store (Visium, Visium HD, Xenium … through spatialdata-io, or built by hand): one table of
counts, the spots or cells it annotates (shapes: circles, squares, polygons; or points), and an H&E image element,
related by their coordinate transformations. Needs the optional extra ``stguide[spatialdata]``.

Each spot's centre is mapped into the image's full-resolution pixels through the coordinate system both are
registered to (``coordinate_system``); the image's µm per pixel is, in this order: ``um_per_px`` when given; the
size of one image pixel in that coordinate system times ``um_per_unit`` (µm per coordinate unit: 1 for a system in µm,
a Xenium morphology pixel's 0.2125 for spatialdata-io's ``global``); or, for circles, ``spot_diameter_um`` over their
diameter in the system (Visium's 55 µm spots calibrate it, as Space Ranger's scale factors do). SpatialData records
no unit, so one of the three is needed; the one used is recorded in ``uns["source"]``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from stguide.data.images import image_size
from stguide.data.model import HER2ST_CLASSES, SectionInfo, check_um_per_px, combine_sections, make_section
from stguide.data.readers.registry import register_reader
from stguide.errors import InputError


def require_spatialdata(what: str) -> Any:
    """The ``spatialdata`` module, or one clear error naming the extra that installs it."""
    try:
        import spatialdata
    except ImportError:
        raise InputError(what, "needs the optional package spatialdata, which is not installed",
                         "pip install 'stguide[spatialdata]'") from None
    return spatialdata


def _one(kind: str, names: Sequence[str], given: str | None, store: Path, option: str) -> str:
    if given is not None:
        if given not in names:
            raise InputError(store, f"has no {kind} element {given!r} (its {kind}s: {sorted(names)})", f"set {option} to one of them")
        return given
    if len(names) != 1:
        raise InputError(store, f"holds {len(names)} {kind} elements ({sorted(names)}), so which one to read is not clear",
                         f"set the option {option} to one of them")
    return names[0]


def _affine(element: Any, cs: str, store: Path, what: str) -> np.ndarray:
    from spatialdata.transformations import get_transformation

    systems = get_transformation(element, get_all=True)
    if cs not in systems:
        raise InputError(store, f"the {what} is not registered to the coordinate system {cs!r} (it is to {sorted(systems)})",
                         "set coordinate_system to one that the image and the spots share")
    return np.asarray(systems[cs].to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")), dtype=float)


def _rows(index: pd.Index, ids: np.ndarray, region: str, store: Path) -> np.ndarray:
    """Where the table's instances ``ids`` sit in an element's ``index``; one clear error for any the element lacks."""
    pos = pd.Index(index.astype(str)).get_indexer(ids.astype(str))
    if (pos < 0).any():
        raise InputError(store, f"{int((pos < 0).sum())} table row(s) annotate instances missing from {region!r} "
                         f"(e.g. {list(ids[pos < 0][:3])})", "write the table and its shapes or points from the same data")
    return pos


def _centres(element: Any, ids: np.ndarray, region: str, store: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(x, y) of the instances ``ids`` of a shapes or points element in its own coordinates, and the circles'
    diameters (None for other shapes)."""
    if hasattr(element, "geometry"):  # shapes (GeoDataFrame)
        pos = _rows(element.index, ids, region, store)
        geom = element.geometry.iloc[pos]
        if set(geom.geom_type) == {"Point"}:
            xy = np.column_stack([geom.x.to_numpy(), geom.y.to_numpy()])
            diam = 2 * element["radius"].to_numpy(float)[pos] if "radius" in element else None
            return xy, diam
        c = geom.centroid
        return np.column_stack([c.x.to_numpy(), c.y.to_numpy()]), None
    df = element.compute() if hasattr(element, "compute") else element  # points (dask DataFrame)
    return df[["x", "y"]].to_numpy(float)[_rows(df.index, ids, region, store)], None


def _pixel_size(a: np.ndarray, store: Path, what: str) -> float:
    """One unit of an element (an image's pixel) as a side in the coordinate system (the affine's scale), refusing
    anisotropic scales."""
    sx, sy = np.linalg.norm(a[:2, 0]), np.linalg.norm(a[:2, 1])
    if not np.isclose(sx, sy, rtol=0.01):
        raise InputError(store, f"the {what} has non-square pixels in this coordinate system ({sx:g} × {sy:g})",
                         "register it with the same scale on x and y")
    return float((sx + sy) / 2)


@register_reader("spatialdata")
def read_spatialdata(
    path: str | PathLike,
    *,
    table: str | None = None,
    image: str | Mapping[str, str] | None = None,
    coordinate_system: str = "global",
    patient: str | None = None,
    patient_key: str | None = None,
    section: str | None = None,
    section_key: str | None = None,
    label_key: str | None = None,
    label_source: str = "pathologist",
    counts_layer: str | None = None,
    um_per_px: float | None = None,
    um_per_unit: float | None = None,
    spot_diameter_um: float | None = None,
    classes: Sequence[str] | None = HER2ST_CLASSES,
) -> ad.AnnData:
    """Read a SpatialData store into the data model.

    Parameters
    ----------
    path
        The ``.zarr`` store.
    table
        The table of counts (default: the store's only table). Its region annotation (``spatialdata_attrs``:
        ``region``, ``region_key``, ``instance_key``) names the shapes or points each row belongs to.
    image
        The H&E image element (default: the store's only image); a mapping region → image when regions are
        sections with images of their own.
    coordinate_system
        The coordinate system the image and the spots are both registered to (default ``global``).
    patient, patient_key / section, section_key
        A fixed patient (or the table's ``obs`` column of patients), and a fixed section name (or the ``obs``
        column of sections; default: one section per annotated region, named after it).
    label_key, label_source
        The ``obs`` column of labels (optional) and where they come from.
    counts_layer
        Raw counts from ``layers[counts_layer]`` instead of ``X``.
    um_per_px, um_per_unit, spot_diameter_um
        The image's scale (see the module docstring); ``spot_diameter_um`` also sets the spots' size.
    """
    sd = require_spatialdata("the spatialdata reader")
    store = Path(path)
    if not store.is_dir():
        raise InputError(store, "the SpatialData store does not exist (a .zarr folder was expected)", "check the path")
    try:
        sdata = sd.read_zarr(str(store))
    except Exception as e:  # noqa: BLE001 - any zarr / spatialdata failure is a bad store to the user
        raise InputError(store, f"cannot be read as a SpatialData store ({type(e).__name__}: {str(e)[:200]})",
                         "write it with spatialdata (sdata.write) or spatialdata-io") from None
    tname = _one("table", list(sdata.tables), table, store, "table")
    t = sdata.tables[tname]
    attrs = t.uns.get("spatialdata_attrs") or {}
    region_key, instance_key = attrs.get("region_key"), attrs.get("instance_key")
    if not region_key or not instance_key or region_key not in t.obs or instance_key not in t.obs:
        raise InputError(store, f"the table {tname!r} has no region annotation (uns['spatialdata_attrs'] with region_key and "
                         "instance_key columns)", "parse it with spatialdata.models.TableModel.parse(adata, region=..., "
                         "region_key=..., instance_key=...)")
    for key in (patient_key, section_key, label_key):
        if key is not None and key not in t.obs:
            raise InputError(store, f"the table {tname!r} has no obs column {key!r}", f"choose among {list(t.obs.columns)}")
    if (patient is None) == (patient_key is None):
        raise InputError(store, "give the patient either as patient (one for the whole store) or as patient_key (an obs column)",
                         "set exactly one of patient and patient_key")
    if counts_layer is not None and counts_layer not in t.layers:
        raise InputError(store, f"the table {tname!r} has no layer {counts_layer!r}", f"choose among {list(t.layers)}")
    counts = t.layers[counts_layer] if counts_layer else t.X
    regions = t.obs[region_key].astype(str).to_numpy()
    ids = t.obs[instance_key].astype(str).to_numpy()
    x_px, y_px = np.full(t.n_obs, np.nan), np.full(t.n_obs, np.nan)
    sec_of = np.empty(t.n_obs, dtype=object)
    infos: dict[str, dict[str, Any]] = {}
    for region in dict.fromkeys(regions):
        rows = np.flatnonzero(regions == region)
        element = sdata.shapes.get(region) if region in sdata.shapes else sdata.points.get(region) if region in sdata.points else None
        if element is None:
            raise InputError(store, f"the table annotates {region!r}, which is not a shapes or points element of the store",
                             "stguide reads spots and cells as shapes or points (a labels mask has no centres to cut patches at)")
        img = _one("image", list(sdata.images), image.get(region) if isinstance(image, Mapping) else image, store, "image")
        a_img = _affine(sdata.images[img], coordinate_system, store, f"image {img!r}")
        a_el = _affine(element, coordinate_system, store, f"element {region!r}")
        xy, diam = _centres(element, ids[rows], region, store)
        to_px = np.linalg.inv(a_img) @ a_el
        px = (to_px @ np.column_stack([xy, np.ones(len(xy))]).T).T
        x_px[rows], y_px[rows] = px[:, 0], px[:, 1]
        unit = _pixel_size(a_img, store, f"image {img!r}")  # coordinate units per image pixel
        diam_units = None if diam is None else float(np.median(diam)) * _pixel_size(a_el, store, f"element {region!r}")
        if um_per_px is not None:
            mpp, source = float(um_per_px), "um_per_px (given)"
        elif um_per_unit is not None:
            mpp, source = float(um_per_unit) * unit, f"um_per_unit {um_per_unit:g} × the image's scale in {coordinate_system!r}"
        elif spot_diameter_um is not None and diam_units:
            mpp, source = float(spot_diameter_um) / diam_units * unit, f"spot_diameter_um {spot_diameter_um:g} over the circles' diameter"
        else:
            raise InputError(store, f"records no physical unit for the coordinate system {coordinate_system!r}, so the image's µm per "
                             "pixel is unknown", "give um_per_unit (µm per coordinate unit), um_per_px, or, for circular spots, "
                             "spot_diameter_um (e.g. 55 for Visium)")
        mpp = check_um_per_px(mpp, store / "images" / img)
        diameter = spot_diameter_um if spot_diameter_um is not None else (diam_units * mpp / unit if diam_units else 55.0)
        w, h = image_size(store / "images" / img)
        if section_key:
            sec_of[rows] = t.obs[section_key].astype(str).to_numpy()[rows]
        else:
            sec_of[rows] = section or region
        for sec in dict.fromkeys(sec_of[rows]):
            if sec in infos and infos[sec]["image"] != img:
                raise InputError(store, f"section {sec!r} spans regions with different images", "give each section one image")
            infos[sec] = {"image": img, "um_per_px": mpp, "diameter": float(diameter), "size": (w, h), "source": source}
    pat_col = t.obs[patient_key].astype(str).to_numpy() if patient_key else np.full(t.n_obs, patient, dtype=object)
    parts = []
    for sec, info in infos.items():
        m = sec_of == sec
        pats = set(pat_col[m])
        if len(pats) != 1:
            raise InputError(store, f"section {sec!r} spans patients {sorted(pats)}", "a section belongs to one patient: fix patient_key/section_key")
        si = SectionInfo(str(sec), pats.pop(), str(store / "images" / info["image"]), info["um_per_px"], info["diameter"], *info["size"])
        parts.append(make_section(counts[m], t.var_names, t.obs_names[m], info=si, x_px=x_px[m], y_px=y_px[m],
                                  labels=t.obs.loc[m, label_key].to_numpy() if label_key else None, label_source=label_source,
                                  file=store, classes=classes))
    out = combine_sections(parts, "intersection", store, classes)
    out.uns["source"] = {"reader": "spatialdata", "store": str(store), "table": tname, "coordinate_system": coordinate_system,
                         "um_per_px": {s: i["source"] for s, i in infos.items()}}
    return out

