"""10x Space Ranger ``outs/``: counts, ``spatial/tissue_positions[_list].csv`` and ``scalefactors_json.json``."""
from __future__ import annotations

import json
from collections.abc import Sequence
from os import PathLike
from pathlib import Path

import anndata as ad
import pandas as pd

from stguide.data.images import image_size
from stguide.data.model import HER2ST_CLASSES, SectionInfo, check_um_per_px, combine_sections, make_section
from stguide.data.readers.registry import register_reader
from stguide.errors import InputError

VISIUM_SPOT_UM = 55.0
_POS_COLS = ["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]


def _positions(spatial: Path) -> pd.DataFrame:
    new, old = spatial / "tissue_positions.csv", spatial / "tissue_positions_list.csv"
    if new.is_file():
        pos = pd.read_csv(new)  # Space Ranger ≥ 2.0: with a header
    elif old.is_file():
        pos = pd.read_csv(old, header=None, names=_POS_COLS)  # Space Ranger 1.x: no header
    else:
        raise InputError(spatial, "neither tissue_positions.csv nor tissue_positions_list.csv was found", "point outs_dir at Space Ranger's outs/ folder")
    missing = [c for c in _POS_COLS if c not in pos]
    if missing:
        raise InputError(new if new.is_file() else old, f"columns {missing} are missing", "use Space Ranger's tissue positions file")
    return pos.set_index("barcode")


def _counts(outs: Path) -> ad.AnnData:
    h5 = outs / "filtered_feature_bc_matrix.h5"
    mtx = outs / "filtered_feature_bc_matrix"
    import scanpy as sc

    try:
        if h5.is_file():
            a = sc.read_10x_h5(h5)
        elif mtx.is_dir():
            a = sc.read_10x_mtx(mtx, var_names="gene_symbols")
        else:
            raise InputError(outs, "no filtered_feature_bc_matrix(.h5) was found", "point outs_dir at Space Ranger's outs/ folder")
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001
        raise InputError(h5 if h5.is_file() else mtx, f"cannot be read ({type(e).__name__}: {e})", "re-export the matrix") from None
    a.var_names_make_unique()
    return a


@register_reader("visium")
def read_visium(
    outs_dir: str | PathLike,
    image: str | PathLike | None = None,
    patient: str | None = None,
    section: str | None = None,
    labels: str | PathLike | None = None,
    classes: Sequence[str] | None = HER2ST_CLASSES,
) -> ad.AnnData:
    """Read one 10x Visium section.

    ``image`` is the full-resolution H&E given to Space Ranger; µm/px is then 55 µm over
    ``spot_diameter_fullres``. Without it, ``spatial/tissue_hires_image.png`` is used and positions and µm/px are
    scaled by ``tissue_hires_scalef``. ``labels`` is an optional ``barcode, label[, label_source]`` TSV.
    """
    outs = Path(outs_dir)
    if not outs.is_dir():
        raise InputError(outs, "folder not found", "point outs_dir at Space Ranger's outs/ folder")
    spatial = outs / "spatial"
    sf_file = spatial / "scalefactors_json.json"
    if not sf_file.is_file():
        raise InputError(sf_file, "scalefactors_json.json is missing", "point outs_dir at Space Ranger's outs/ folder")
    sf = json.loads(sf_file.read_text())
    a = _counts(outs)
    pos = _positions(spatial)
    missing = a.obs_names.difference(pos.index)
    if len(missing):
        raise InputError(spatial, f"{len(missing)} barcode(s) of the matrix have no position (e.g. {missing[:3].tolist()})",
                         "use the positions file of the same run")
    pos = pos.loc[a.obs_names]
    diam_full = float(sf["spot_diameter_fullres"])
    if image is not None:
        scale = 1.0
        img = Path(image)
    else:
        scale = float(sf["tissue_hires_scalef"])
        img = spatial / "tissue_hires_image.png"
    um = check_um_per_px(VISIUM_SPOT_UM / (diam_full * scale), sf_file)
    w, h = image_size(img)
    name = section or outs.parent.name
    info = SectionInfo(name, patient or name, str(img), um, VISIUM_SPOT_UM, w, h)
    lab = src = None
    if labels is not None:
        from stguide.data.readers.hest import read_labels_tsv

        lab, src, _ = read_labels_tsv(Path(labels), pd.Index(a.obs_names))
    sec = make_section(a.X, a.var_names, a.obs_names, info=info,
                       x_px=pos["pxl_col_in_fullres"].to_numpy(float) * scale,
                       y_px=pos["pxl_row_in_fullres"].to_numpy(float) * scale,
                       labels=lab, label_source=src, file=outs, classes=classes)
    for col in ("array_row", "array_col", "in_tissue"):
        sec.obs[col] = pos[col].to_numpy()
    out = combine_sections([sec], "intersection", outs, classes)
    out.uns["source"] = {"reader": "visium", "outs": str(outs)}
    return out
