"""Any AnnData with spot positions in ``obsm`` and an image with a known µm/px."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import anndata as ad
import numpy as np

from stguide.data.images import image_size
from stguide.data.model import HER2ST_CLASSES, SectionInfo, check_um_per_px, combine_sections, make_section
from stguide.data.readers.registry import register_reader
from stguide.errors import InputError


def _per_section(value, section: str):
    return value.get(section) if isinstance(value, Mapping) else value


@register_reader("anndata")
def read_anndata(
    h5ad: str | PathLike,
    image: str | PathLike | Mapping[str, str | PathLike] | None,
    um_per_px: float | Mapping[str, float] | None,
    *,
    patient: str | None = None,
    section: str | None = None,
    patient_key: str | None = None,
    section_key: str | None = None,
    label_key: str | None = None,
    label_source: str = "pathologist",
    spatial_key: str = "spatial",
    counts_layer: str | None = None,
    spot_diameter_um: float = 55.0,
    classes: Sequence[str] | None = HER2ST_CLASSES,
) -> ad.AnnData:
    """Read a generic AnnData.

    Parameters
    ----------
    h5ad
        The file. Raw counts in ``X`` or in ``layers[counts_layer]``; spot centres (x, y) in full-resolution
        pixels of ``image`` in ``obsm[spatial_key]``.
    image, um_per_px
        The H&E image and its µm per pixel; for several sections, a mapping section → value. ``image=None`` reads
        expression only.
    patient, section / patient_key, section_key
        A fixed patient and section name, or the ``obs`` columns that hold them.
    label_key, label_source
        The ``obs`` column of labels (optional) and where they come from (``pathologist``, ``proxy``, ``synthetic``).
    """
    h5ad = Path(h5ad)
    if not h5ad.is_file():
        raise InputError(h5ad, "file not found", "check the path")
    try:
        a = ad.read_h5ad(h5ad)
    except Exception as e:  # noqa: BLE001
        raise InputError(h5ad, f"cannot be read as h5ad ({type(e).__name__}: {e})", "re-create the file") from None
    if spatial_key not in a.obsm:
        raise InputError(h5ad, f"obsm[{spatial_key!r}] (spot pixel positions) is missing",
                         "store the (x, y) pixel centre of each spot in obsm['spatial'], or pass spatial_key=")
    for key in (patient_key, section_key, label_key):
        if key is not None and key not in a.obs:
            raise InputError(h5ad, f"obs has no column {key!r}", f"choose among {list(a.obs.columns)}")
    if patient is None and patient_key is None:
        raise InputError(h5ad, "the patient is not given", "pass patient='...' or patient_key='<obs column>'")
    if counts_layer is not None and counts_layer not in a.layers:
        raise InputError(h5ad, f"layers has no {counts_layer!r}", f"choose among {list(a.layers)}")
    counts = a.layers[counts_layer] if counts_layer else a.X
    sec_col = a.obs[section_key].astype(str).to_numpy() if section_key else np.full(a.n_obs, section or h5ad.stem, dtype=object)
    pat_col = a.obs[patient_key].astype(str).to_numpy() if patient_key else np.full(a.n_obs, patient, dtype=object)
    xy = np.asarray(a.obsm[spatial_key], dtype=float)
    parts = []
    for sec in dict.fromkeys(sec_col):
        m = sec_col == sec
        pats = set(pat_col[m])
        if len(pats) != 1:
            raise InputError(h5ad, f"section {sec!r} spans patients {sorted(pats)}", "a section belongs to one patient: fix patient_key/section_key")
        img = _per_section(image, sec)
        um = check_um_per_px(_per_section(um_per_px, sec), h5ad) if img is not None else None
        w, h = image_size(img) if img is not None else (0, 0)
        info = SectionInfo(sec, pats.pop(), str(img) if img is not None else None, um, spot_diameter_um, w, h)
        parts.append(make_section(counts[m], a.var_names, a.obs_names[m], info=info, x_px=xy[m, 0], y_px=xy[m, 1],
                                  labels=a.obs.loc[m, label_key].to_numpy() if label_key else None,
                                  label_source=label_source, file=h5ad, classes=classes))
    out = combine_sections(parts, "intersection", h5ad, classes)
    out.uns["source"] = {"reader": "anndata", "file": str(h5ad)}
    return out
