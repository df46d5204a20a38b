"""The HEST-1k layout (Jaume et al. 2024).

::

    ROOT/st/{id}.h5ad          raw counts, obsm["spatial"] = (x, y) px in the WSI
    ROOT/wsis/{id}.tif         H&E (pyramidal or tiled TIFF)
    ROOT/metadata/{id}.json    pixel_size_um_estimated, patient, subseries, spot_diameter, ...
    LABELS/{id}.tsv            optional: barcode, label, label_source
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from stguide.data.images import image_size
from stguide.data.model import HER2ST_CLASSES, SectionInfo, check_um_per_px, combine_sections, make_section
from stguide.data.readers.registry import register_reader
from stguide.errors import InputError, warn_data
from stguide.progress import track

_SOURCE_ALIASES = {"pathologist": "pathologist", "synthetic": "synthetic"}


def _label_source(value: str) -> str:
    """Map a label file's source column onto pathologist / proxy / synthetic (anything transferred is proxy)."""
    v = str(value).strip().lower()
    return _SOURCE_ALIASES.get(v, "proxy")


def read_labels_tsv(path: Path, barcodes: pd.Index) -> tuple[np.ndarray, np.ndarray, dict]:
    """Labels and their sources for ``barcodes`` from a ``barcode, label[, label_source]`` TSV."""
    try:
        lab = pd.read_csv(path, sep="\t", dtype={"barcode": str})
    except Exception as e:  # noqa: BLE001
        raise InputError(path, f"cannot be parsed as a TSV table ({e})", "write columns barcode, label, label_source") from None
    for col in ("barcode", "label"):
        if col not in lab:
            raise InputError(path, f"the label file lacks the column {col!r}", "write columns barcode, label, label_source")
    if lab["barcode"].duplicated().any():
        raise InputError(path, f"duplicate barcodes {lab['barcode'][lab['barcode'].duplicated()][:5].tolist()}", "keep one label per spot")
    lab = lab.set_index("barcode")
    unmatched = lab.index.difference(barcodes)
    if len(unmatched):
        warn_data(path, f"{len(unmatched)} label row(s) match no spot and are not used (e.g. {unmatched[:5].tolist()})")
    labels = lab["label"].reindex(barcodes).to_numpy(dtype=object)
    src = lab["label_source"].reindex(barcodes) if "label_source" in lab else pd.Series("proxy", index=barcodes)
    sources = np.array([_label_source(s) if isinstance(s, str) else np.nan for s in src], dtype=object)
    report = {"file": str(path), "rows": int(len(lab)), "matched": int(len(lab) - len(unmatched)), "unmatched": unmatched.tolist()}
    return labels, sources, report


@register_reader("hest")
def read_hest(
    root: str | PathLike,
    ids: Sequence[str] | None = None,
    labels_dir: str | PathLike | None = None,
    gene_rule: str = "intersection",
    classes: Sequence[str] | None = HER2ST_CLASSES,
    in_tissue_only: bool = True,
    progress: bool = True,
) -> ad.AnnData:
    """Read HEST-1k sections into the stguide data model.

    µm/px comes from ``pixel_size_um_estimated``, the patient from ``patient``, the section name from
    ``subseries`` (or the id). ``labels_dir`` (optional) holds ``{id}.tsv`` label files; any source other than
    ``pathologist`` or ``synthetic`` (e.g. ``transferred_from_B1``) is recorded as ``proxy``. With
    ``in_tissue_only`` (default), spots with ``in_tissue == 0`` are left out and the count is recorded in
    ``uns["sections"][s]["n_off_tissue"]``.
    """
    root = Path(root)
    st_dir = root / "st"
    if not st_dir.is_dir():
        raise InputError(st_dir, "folder not found", "point root at a HEST-1k folder holding st/, wsis/ and metadata/")
    all_ids = sorted(p.stem for p in st_dir.glob("*.h5ad"))
    ids = all_ids if ids is None else list(ids)
    parts, joins = [], {}
    for sid in track(ids, "reading HEST sections", enabled=progress):
        h5 = st_dir / f"{sid}.h5ad"
        meta_file = root / "metadata" / f"{sid}.json"
        if not h5.is_file():
            raise InputError(h5, f"no expression file for id {sid!r}", f"choose among {all_ids}")
        if not meta_file.is_file():
            raise InputError(meta_file, "the metadata file is missing", "download the id's metadata json with its h5ad")
        meta = json.loads(meta_file.read_text())
        try:
            a = ad.read_h5ad(h5)
        except Exception as e:  # noqa: BLE001
            raise InputError(h5, f"cannot be read as h5ad ({type(e).__name__}: {e})", "re-download the file") from None
        if "spatial" not in a.obsm:
            raise InputError(h5, "obsm['spatial'] (spot pixel positions) is missing", "use the HEST-1k st/*.h5ad, which carries it")
        n_off = 0
        if in_tissue_only and "in_tissue" in a.obs:
            keep = a.obs["in_tissue"].astype(int).to_numpy() == 1
            n_off = int((~keep).sum())
            a = a[keep].copy()
        wsi = root / "wsis" / f"{sid}.tif"
        image = str(wsi) if wsi.is_file() else None
        w, h = image_size(wsi) if image else (0, 0)
        um = check_um_per_px(meta.get("pixel_size_um_estimated"), meta_file, "pixel_size_um_estimated")
        info = SectionInfo(
            str(meta.get("subseries") or sid),
            str(meta.get("patient") or sid).removeprefix("Patient ").strip(),
            image,
            um,
            float(meta.get("spot_diameter") or 55.0),
            w,
            h,
        )
        labels = sources = None
        barcodes = pd.Index(a.obs_names.astype(str))
        if labels_dir is not None:
            lf = Path(labels_dir) / f"{sid}.tsv"
            if lf.is_file():
                labels, sources, joins[info.section] = read_labels_tsv(lf, barcodes)
        xy = np.asarray(a.obsm["spatial"], dtype=float)
        sec = make_section(a.X, a.var_names, barcodes, info=info, x_px=xy[:, 0], y_px=xy[:, 1], labels=labels,
                           label_source=sources, file=h5, classes=classes)
        sec.uns["sections"][info.section].update(hest_id=sid, n_off_tissue=n_off)
        for col in ("array_col", "array_row"):
            if col in a.obs:
                sec.obs[col] = a.obs[col].to_numpy()
        parts.append(sec)
    out = combine_sections(parts, gene_rule, root, classes)
    out.uns["label_join"] = joins
    out.uns["source"] = {"reader": "hest", "root": str(root), "labels_dir": str(labels_dir or "")}
    return out
