"""The native HER2ST release layout (Andersson et al. 2021, Zenodo 4751624).

::

    ROOT/ST-cnts/{section}.tsv.gz                        spots × genes, rows named "{x}x{y}" (array coordinates)
    ROOT/ST-spotfiles/{section}_selection.tsv            x, y, new_x, new_y, pixel_x, pixel_y, selected
    ROOT/ST-imgs/{patient}/{section}/*.jpg               full-resolution H&E (optional per section)
    ROOT/ST-pat/lbl/{section}_labeled_coordinates.tsv    pathologist labels (optional per section)
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from stguide.data.images import image_size
from stguide.data.model import HER2ST_CLASSES, SectionInfo, check_um_per_px, combine_sections, make_section
from stguide.data.readers.registry import register_reader
from stguide.errors import InputError, warn_data
from stguide.progress import track

GRID_PITCH_UM = 200.0  # legacy ST: 100 µm spots on a 200 µm centre-to-centre grid
SPOT_DIAMETER_UM = 100.0
_SECTION = re.compile(r"^([A-Za-z]+)(\d+)$")


def _read_tsv(path: Path, **kw) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", **kw)
    except Exception as e:  # noqa: BLE001
        raise InputError(path, f"cannot be parsed as a TSV table ({type(e).__name__}: {e})", "re-download the file") from None


def measure_um_per_px(spots: pd.DataFrame, file: Path, pitch_um: float = GRID_PITCH_UM) -> float:
    """µm per pixel from the spot grid: the slope of pixel position against (adjusted) array position.

    One array step is ``pitch_um``; the slope is fitted on x and y separately and averaged.
    """
    ax = spots["new_x"] if "new_x" in spots else spots["x"]
    ay = spots["new_y"] if "new_y" in spots else spots["y"]
    slopes = []
    for a, p in ((ax, spots["pixel_x"]), (ay, spots["pixel_y"])):
        a, p = np.asarray(a, float), np.asarray(p, float)
        ok = np.isfinite(a) & np.isfinite(p)
        if ok.sum() < 3 or np.ptp(a[ok]) == 0:
            raise InputError(file, "too few spots to measure the grid pitch", "check the spot file")
        slopes.append(abs(np.polyfit(a[ok], p[ok], 1)[0]))
    return check_um_per_px(pitch_um / float(np.mean(slopes)), file, "µm per pixel measured from the spot grid")


def _labels(path: Path, spots: pd.Index, classes: Sequence[str] | None, policy: str = "warn") -> tuple[pd.Series, dict]:
    """Labels joined to spot ids by rounding the label file's array x, y (never its pixel columns)."""
    lab = _read_tsv(path)
    for col in ("x", "y", "label"):
        if col not in lab:
            raise InputError(path, f"the label file lacks the column {col!r}", "use the HER2ST *_labeled_coordinates.tsv")
    no_xy = lab["x"].isna() | lab["y"].isna()
    rows = lab[~no_xy]
    keys = [f"{int(round(x))}x{int(round(y))}" for x, y in zip(rows["x"], rows["y"], strict=True)]
    rows = rows.assign(spot=keys)
    matched = rows[rows["spot"].isin(spots)]
    unmatched = rows[~rows["spot"].isin(spots)]
    conflict = matched.groupby("spot")["label"].nunique()
    if (conflict > 1).any():
        raise InputError(path, f"spots {conflict[conflict > 1].index[:5].tolist()} get two different labels", "fix the label file")
    series = pd.Series(np.nan, index=spots, dtype=object)
    series.loc[matched["spot"].to_numpy()] = matched["label"].to_numpy()
    report: dict[str, Any] = {
        "file": str(path),
        "rows": int(len(lab)),
        "matched": int(matched["spot"].nunique()),
        "unmatched": [f"{k} ({label})" for k, label in zip(unmatched["spot"], unmatched["label"], strict=True)],
        "no_coordinates": [str(v) for v in lab.loc[no_xy, lab.columns[0]]],
    }
    if report["unmatched"] and policy == "error":
        raise InputError(path, f"{len(report['unmatched'])} label row(s) match no count spot: {report['unmatched'][:5]}",
                         "check that the label file belongs to this section, or pass unmatched_labels='warn' to skip them with a warning")
    if report["unmatched"]:
        warn_data(path, f"{len(report['unmatched'])} label row(s) match no count spot and are not used: {report['unmatched']}")
    if report["no_coordinates"]:
        warn_data(path, f"{len(report['no_coordinates'])} label row(s) have no x/y coordinates and are not used: {report['no_coordinates']}")
    return series, report


@register_reader("her2st")
def read_her2st(
    root: str | PathLike,
    sections: Sequence[str] | None = None,
    gene_rule: str = "intersection",
    classes: Sequence[str] | None = HER2ST_CLASSES,
    unmatched_labels: str = "warn",
    progress: bool = True,
) -> ad.AnnData:
    """Read the native HER2ST layout into the stguide data model.

    Parameters
    ----------
    root
        The release folder holding ``ST-cnts``, ``ST-spotfiles`` and optionally ``ST-imgs``, ``ST-pat``.
    sections
        Only these sections (default: every count file).
    gene_rule
        How sections with different gene sets combine: ``intersection`` (default) or ``union``.
    classes
        The label vocabulary; a label outside it is an error.
    unmatched_labels
        ``warn`` (default: the release itself has a few such rows) or ``error``, for label rows whose rounded
        array position matches no count spot.

    Returns
    -------
    The dataset. Sections without an image load expression-only (``has_image`` False). Label rows that match no
    count spot, or have no coordinates, are shown as a warning and listed in ``uns["label_join"]``.

    Raises
    ------
    InputError
        A count file without a spot file (or the reverse), unreadable tables or images, duplicate spots, bad
        counts, unknown label classes, spots outside their image.
    """
    root = Path(root)
    if unmatched_labels not in ("warn", "error"):
        raise InputError("config:unmatched_labels", f"unknown policy {unmatched_labels!r}", "use 'warn' or 'error'")
    cnt_dir, spot_dir = root / "ST-cnts", root / "ST-spotfiles"
    for d in (cnt_dir, spot_dir):
        if not d.is_dir():
            raise InputError(d, "folder not found", "point root at the HER2ST release folder (it holds ST-cnts and ST-spotfiles)")
    cnt = {p.name.split(".")[0]: p for p in cnt_dir.glob("*.tsv*")}
    spt = {p.name.removesuffix("_selection.tsv"): p for p in spot_dir.glob("*_selection.tsv")}
    for name in sorted(set(cnt) ^ set(spt)):
        if name in cnt:
            raise InputError(spot_dir / f"{name}_selection.tsv", f"the count file {cnt[name].name} has no spot file",
                             "restore the spot file, or remove the count file")
        raise InputError(cnt_dir / f"{name}.tsv.gz", f"the spot file {spt[name].name} has no count file", "restore the count file, or remove the spot file")
    names = sorted(cnt) if sections is None else list(sections)
    for n in names:
        if n not in cnt:
            raise InputError(cnt_dir / f"{n}.tsv.gz", f"section {n!r} has no count file", f"choose among {sorted(cnt)}")
    parts, joins = [], {}
    for name in track(names, "reading HER2ST sections", enabled=progress):
        m = _SECTION.match(name)
        patient = m.group(1) if m else name
        counts = _read_tsv(cnt[name], index_col=0)
        spots = _read_tsv(spt[name])
        for col in ("x", "y", "pixel_x", "pixel_y"):
            if col not in spots:
                raise InputError(spt[name], f"the spot file lacks the column {col!r}", "use the HER2ST *_selection.tsv")
        spots.index = [f"{int(x)}x{int(y)}" for x, y in zip(spots["x"], spots["y"], strict=True)]
        if spots.index.has_duplicates:
            raise InputError(spt[name], f"duplicate spot positions {spots.index[spots.index.duplicated()][:5].tolist()}", "fix the spot file")
        counts.index = counts.index.astype(str)
        if counts.index.has_duplicates:
            dup = counts.index[counts.index.duplicated()].unique()[:5].tolist()
            raise InputError(cnt[name], f"duplicate spot ids {dup}", "keep one row per spot in the count file")
        missing = counts.index.difference(spots.index)
        if len(missing):
            raise InputError(spt[name], f"{len(missing)} count spot(s) have no row in the spot file (e.g. {missing[:5].tolist()})",
                             "use the spot file of the same section")
        um = measure_um_per_px(spots.loc[counts.index], spt[name])
        imgs = sorted((root / "ST-imgs" / patient / name).glob("*.jpg")) if (root / "ST-imgs").is_dir() else []
        w = h = 0
        if imgs:
            w, h = image_size(imgs[0])
        info = SectionInfo(name, patient, str(imgs[0]) if imgs else None, um, SPOT_DIAMETER_UM, w, h)
        lbl_file = root / "ST-pat" / "lbl" / f"{name}_labeled_coordinates.tsv"
        labels = None
        if lbl_file.is_file():
            labels, joins[name] = _labels(lbl_file, counts.index, classes, unmatched_labels)
        a = make_section(
            sp.csr_matrix(counts.to_numpy()),
            counts.columns,
            counts.index,
            info=info,
            x_px=spots.loc[counts.index, "pixel_x"].to_numpy(),
            y_px=spots.loc[counts.index, "pixel_y"].to_numpy(),
            labels=None if labels is None else labels.to_numpy(),
            label_source="pathologist",
            file=cnt[name],
            classes=classes,
        )
        a.obs["array_x"] = spots.loc[counts.index, "x"].to_numpy()
        a.obs["array_y"] = spots.loc[counts.index, "y"].to_numpy()
        parts.append(a)
    out = combine_sections(parts, gene_rule, root, classes)
    out.uns["label_join"] = joins
    out.uns["source"] = {"reader": "her2st", "root": str(root)}
    return out
