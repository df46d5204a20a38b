"""The one data model: an AnnData of raw counts, spots, sections, patients and optional labels.

* ``X``: raw integer counts, CSR (int32).
* ``obs``: ``patient``, ``section``, ``spot`` (the id inside its section), ``label`` (categorical, NaN where
  unlabelled), ``label_source`` (``pathologist`` / ``proxy`` / ``synthetic``, NaN where unlabelled) and
  ``x_px``, ``y_px``: the spot centre in its section's image, in that image's full-resolution pixels.
* ``uns["sections"][section]``: ``image`` (path, ``""`` when none), ``has_image``, ``um_per_px``,
  ``spot_diameter_um``, ``patient``, and the image size when known.
* ``uns["genes"]``: the rule that combined the sections' gene sets and how many genes it dropped.
* ``obsm["spatial"]``: ``x_px``, ``y_px`` as an array, and (written by :func:`write_dataset`) ``uns["spatial"]``:
  one library per section with its ``hires`` and ``lowres`` images and scale factors, the layout scanpy's
  ``pl.spatial`` and squidpy's ``pl.spatial_scatter`` read, so a dataset opens in both as is (``library_id`` = the
  section, ``obs["section"]``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from stguide.errors import InputError

HER2ST_CLASSES: tuple[str, ...] = (
    "invasive cancer",
    "cancer in situ",
    "immune infiltrate",
    "breast glands",
    "connective tissue",
    "adipose tissue",
    "undetermined",
)
"""The pathologist classes of HER2ST (Andersson et al. 2021), the default vocabulary of labels."""

EXCLUDED_LABELS: tuple[str, ...] = ("undetermined",)
"""Labels that do not count (the default of every ``exclude_labels``): never scored, never a probe's or scANVI's
training label."""

LABEL_SOURCES: tuple[str, ...] = ("pathologist", "proxy", "synthetic")
SPATIAL_IMAGE_PX = {"hires": 2000, "lowres": 600}  # longer sides of the images of uns["spatial"] (Space Ranger's)
UM_PER_PX_RANGE: tuple[float, float] = (0.1, 10.0)
GENE_RULES: tuple[str, ...] = ("intersection", "union")


@dataclass(frozen=True)
class SectionInfo:
    """What the data model knows of one section."""

    section: str
    patient: str
    image: str | None
    um_per_px: float | None
    spot_diameter_um: float
    image_width: int = 0
    image_height: int = 0

    @property
    def has_image(self) -> bool:
        return bool(self.image)

    def imaging(self) -> tuple[str, float]:
        """The image path and its µm/px (readers check µm/px whenever they set an image)."""
        if not self.image or self.um_per_px is None:
            raise InputError(self.section, "the section has no image with a known µm per pixel", "give it an H&E image and its um_per_px")
        return self.image, self.um_per_px

    def to_uns(self) -> dict:
        d = asdict(self)
        d["image"] = d["image"] or ""
        d["um_per_px"] = float("nan") if d["um_per_px"] is None else float(d["um_per_px"])
        d["has_image"] = self.has_image
        return d

    @classmethod
    def from_uns(cls, d: Mapping) -> SectionInfo:
        um = float(d["um_per_px"])
        return cls(
            section=str(d["section"]),
            patient=str(d["patient"]),
            image=str(d["image"]) or None,
            um_per_px=None if np.isnan(um) else um,
            spot_diameter_um=float(d["spot_diameter_um"]),
            image_width=int(d.get("image_width", 0)),
            image_height=int(d.get("image_height", 0)),
        )


def section_info(adata: ad.AnnData, section: str) -> SectionInfo:
    """The :class:`SectionInfo` of ``section`` in a dataset."""
    return SectionInfo.from_uns(adata.uns["sections"][section])


def check_um_per_px(value: float | None, file: str | PathLike, what: str = "µm per pixel") -> float:
    """Return ``value`` as float, or raise when it is missing or outside 0.1–10 µm/px."""
    lo, hi = UM_PER_PX_RANGE
    if value is None or not np.isfinite(value):
        raise InputError(file, f"the {what} is missing", "give the image's resolution in µm per pixel (um_per_px)")
    if not lo <= float(value) <= hi:
        raise InputError(
            file,
            f"the {what} is {value:g}, outside the plausible range {lo}–{hi} µm/px",
            "check the image's resolution; a value in pixels per µm must be inverted",
        )
    return float(value)


def check_counts(x: sp.spmatrix | np.ndarray, file: str | PathLike) -> sp.csr_matrix:
    """Validate raw counts and return them as int32 CSR without changing any value.

    Raises :class:`InputError` for negative, NaN/infinite or non-integer values.
    """
    m = sp.csr_matrix(x)
    data = np.asarray(m.data)
    if data.size:
        if not np.isfinite(data).all():
            raise InputError(file, "the counts contain NaN or infinite values", "export the raw UMI counts, not normalised values")
        if (data < 0).any():
            raise InputError(file, "the counts contain negative values", "export the raw UMI counts, not scaled or corrected values")
        if not np.array_equal(data, np.round(data)):
            raise InputError(
                file,
                "the counts are not integers (they look normalised or log-transformed)",
                "give the raw integer counts (AnnData .X or a layer named 'counts')",
            )
        if data.max() > np.iinfo(np.int32).max:
            raise InputError(file, "a count exceeds the int32 range", "check that the matrix holds counts")
    m = sp.csr_matrix((data.astype(np.int32), m.indices, m.indptr), shape=m.shape)
    m.eliminate_zeros()
    return m


def normalise_labels(
    labels: Sequence, file: str | PathLike, classes: Sequence[str] | None = HER2ST_CLASSES
) -> pd.Series:
    """Strip and lower-case labels; raise on a class outside ``classes`` (None accepts any)."""
    s = pd.Series(list(labels), dtype=object)
    s = s.where(s.isna(), s.astype(str).str.strip().str.lower())
    s = s.where(~s.isin(["", "nan", "na", "none"]), np.nan)
    if classes is not None:
        allowed = {c.lower() for c in classes}
        bad = sorted(set(s.dropna()) - allowed)
        if bad:
            raise InputError(
                file,
                f"unknown label class(es) {bad}; known classes are {list(classes)}",
                "fix the spelling, or pass classes=[...] listing your own vocabulary",
            )
    return s


def make_section(
    counts: sp.spmatrix | np.ndarray,
    genes: Sequence[str],
    spots: Sequence[str],
    *,
    info: SectionInfo,
    x_px: np.ndarray,
    y_px: np.ndarray,
    labels: Sequence | np.ndarray | None = None,
    label_source: str | Sequence | np.ndarray | None = None,
    file: str | PathLike,
    classes: Sequence[str] | None = HER2ST_CLASSES,
) -> ad.AnnData:
    """Build one section in the data model, validating counts, spot ids, genes, labels and positions."""
    ids = pd.Index([str(s) for s in spots])
    if len(ids) == 0:
        raise InputError(file, "the section has 0 spots", "remove the empty section or export its spots")
    if ids.has_duplicates:
        dup = ids[ids.duplicated()].unique()[:5].tolist()
        raise InputError(file, f"duplicate spot ids {dup}", "make the spot ids (barcodes) unique within the section")
    gidx = pd.Index([str(g) for g in genes])
    if gidx.has_duplicates:
        dup = gidx[gidx.duplicated()].unique()[:5].tolist()
        raise InputError(file, f"duplicate gene names {dup}", "make gene names unique (e.g. append '-1', '-2')")
    x = check_counts(counts, file)
    if x.shape != (len(ids), len(gidx)):
        raise InputError(file, f"counts are {x.shape} but there are {len(ids)} spots and {len(gidx)} genes", "check the export")
    x_px = np.asarray(x_px, dtype=float)
    y_px = np.asarray(y_px, dtype=float)
    if info.has_image and not (np.isfinite(x_px).all() and np.isfinite(y_px).all()):
        raise InputError(file, "some spots have no pixel position", "give every spot a position in the image")
    if info.has_image and info.image_width and info.image_height:
        out = (x_px < 0) | (y_px < 0) | (x_px >= info.image_width) | (y_px >= info.image_height)
        if out.any():
            ex = ids[out][:5].tolist()
            raise InputError(
                file,
                f"{int(out.sum())} spot centre(s) lie outside the {info.image_width}×{info.image_height} px image "
                f"{info.image} (e.g. {ex})",
                "check that the positions are in full-resolution pixels of this image (not a downscaled one) and x/y are not swapped",
            )
    obs = pd.DataFrame(index=pd.Index([f"{info.section}_{s}" for s in ids], name="obs_id"))
    obs["patient"] = info.patient
    obs["section"] = info.section
    obs["spot"] = ids.to_numpy()
    lab = normalise_labels(list(labels) if labels is not None else [np.nan] * len(ids), file, classes)
    obs["label"] = lab.to_numpy()
    if isinstance(label_source, str) or label_source is None:
        src = pd.Series([label_source] * len(ids), dtype=object)
    else:
        src = pd.Series(list(label_source), dtype=object)
    obs["label_source"] = src.where(lab.notna().to_numpy(), np.nan).to_numpy()
    obs["x_px"] = x_px
    obs["y_px"] = y_px
    a = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=gidx))
    a.uns["sections"] = {info.section: info.to_uns()}
    return a


def combine_sections(
    sections: Sequence[ad.AnnData],
    rule: str = "intersection",
    source: str | PathLike = "<input>",
    classes: Sequence[str] | None = HER2ST_CLASSES,
) -> ad.AnnData:
    """Combine sections into one dataset by a gene-set ``rule``: ``intersection`` (default) or ``union``.

    ``union`` fills the genes a section lacks with zeros, so it invents zero counts: use it knowingly. The rule,
    the union size, the genes kept and the number dropped (per section, too) are recorded in ``uns["genes"]``.
    """
    if rule not in GENE_RULES:
        raise InputError("config:gene_rule", f"unknown gene rule {rule!r}", f"use one of {list(GENE_RULES)}")
    if not sections:
        raise InputError(source, "no section was found", "check the folder layout")
    names = [next(iter(s.uns["sections"])) for s in sections]
    if len(set(names)) != len(names):
        raise InputError(source, "two sections share a name", "give every section a unique name")
    gene_sets = [pd.Index(s.var_names) for s in sections]
    union = gene_sets[0]
    inter = gene_sets[0]
    for g in gene_sets[1:]:
        union = union.union(g, sort=False)
        inter = inter.intersection(g, sort=False)
    if rule == "intersection":
        if len(inter) == 0:
            raise InputError(source, "the sections share no gene (empty intersection)",
                             "check gene naming (symbols vs Ensembl ids) across sections, or use gene_rule='union'")
        keep = inter
        parts = [s[:, keep].copy() for s in sections]
    else:
        keep = union
        parts = []
        for s in sections:
            missing = keep.difference(s.var_names)
            full = ad.concat(
                [s, ad.AnnData(X=sp.csr_matrix((s.n_obs, len(missing)), dtype=np.int32), obs=s.obs[[]], var=pd.DataFrame(index=missing))],
                axis=1,
                merge="first",
            )
            full.obs = s.obs
            parts.append(full[:, keep].copy())
    out = ad.concat(parts, axis=0, merge="same")
    out.X = sp.csr_matrix(out.X, dtype=np.int32)
    out.uns["sections"] = {n: dict(s.uns["sections"][n]) for n, s in zip(names, sections, strict=True)}
    out.uns["genes"] = {
        "rule": rule,
        "n_union": int(len(union)),
        "n_kept": int(len(keep)),
        "n_dropped": int(len(union) - len(keep)),
        "dropped_per_section": {n: int(len(g) - len(g.intersection(keep))) for n, g in zip(names, gene_sets, strict=True)},
    }
    return finalise(out, classes)


def finalise(adata: ad.AnnData, classes: Sequence[str] | None = HER2ST_CLASSES) -> ad.AnnData:
    """Make obs columns categorical in a stable order and check the invariants of the data model."""
    order = [c for c in (classes or []) if c in set(adata.obs["label"].dropna())]
    order += sorted(set(adata.obs["label"].dropna()) - set(order))
    adata.obs["label"] = pd.Categorical(adata.obs["label"], categories=order)
    adata.obs["label_source"] = pd.Categorical(adata.obs["label_source"])
    for key in ("patient", "section"):
        adata.obs[key] = pd.Categorical(adata.obs[key].astype(str), categories=list(dict.fromkeys(adata.obs[key].astype(str))))
    if adata.obs_names.has_duplicates:
        dup = adata.obs_names[adata.obs_names.duplicated()][:5].tolist()
        raise InputError("<dataset>", f"duplicate spot ids {dup}", "make spot ids unique within each section")
    set_spatial(adata)
    return adata


def set_spatial(adata: ad.AnnData) -> None:
    """``obsm["spatial"]``: the spot centres (``x_px``, ``y_px``, full-resolution pixels), as scanpy expects."""
    adata.obsm["spatial"] = adata.obs[["x_px", "y_px"]].to_numpy(dtype=np.float64)


def resized(image: np.ndarray, scale: float, max_px: int) -> tuple[np.ndarray, float]:
    """``image`` (whose pixels are ``scale`` per full-resolution pixel) at most ``max_px`` on its longer side, and
    its new scale."""
    from PIL import Image

    f = min(1.0, max_px / max(image.shape[:2]))
    if f == 1.0:
        return image, scale
    size = (max(1, round(image.shape[1] * f)), max(1, round(image.shape[0] * f)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR)), scale * size[0] / image.shape[1]


def spatial_library(image: np.ndarray, scale: float, spot_diameter_fullres: float, source: str) -> dict:
    """One library of scanpy's / squidpy's ``uns["spatial"]`` from an image of the section (``scale``: its pixels per
    full-resolution pixel): a ``hires`` and a ``lowres`` image at Space Ranger's sizes (at most 2000 and 600 px; never
    larger than ``image``), their scale factors and the spot diameter in full-resolution pixels."""
    hires, hs = resized(image, scale, SPATIAL_IMAGE_PX["hires"])
    lowres, ls = resized(hires, hs, SPATIAL_IMAGE_PX["lowres"])
    return {"images": {"hires": hires, "lowres": lowres},
            "scalefactors": {"tissue_hires_scalef": hs, "tissue_lowres_scalef": ls, "spot_diameter_fullres": spot_diameter_fullres},
            "metadata": {"source_image_path": source}}


def add_spatial_images(adata: ad.AnnData) -> None:
    """``uns["spatial"][section]``: for each section with an image, its :func:`spatial_library` (``hires`` and
    ``lowres`` images, ``tissue_*_scalef``, ``spot_diameter_fullres``), the layout of Space Ranger data that scanpy's
    ``pl.spatial`` and squidpy's ``pl.spatial_scatter`` read. Sections already present are kept."""
    from stguide.data.images import thumbnail

    spatial = dict(adata.uns.get("spatial", {}))
    for name, d in adata.uns["sections"].items():
        info = SectionInfo.from_uns(d)
        if name in spatial or not info.has_image or not info.image_width or info.um_per_px is None:
            continue
        image, um_per_px = info.imaging()
        side = max(info.image_width, info.image_height)
        img, scale = thumbnail(image, info.image_width, info.image_height, min(SPATIAL_IMAGE_PX["hires"], side))
        img = img[: max(1, round(info.image_height * scale)), : max(1, round(info.image_width * scale))]  # without the square's padding
        spatial[name] = spatial_library(img, scale, info.spot_diameter_um / um_per_px, image)
    adata.uns["spatial"] = spatial


def validate_dataset(adata: ad.AnnData, file: str | PathLike = "<dataset>") -> ad.AnnData:
    """Check that an AnnData follows the data model; raise :class:`InputError` naming what is missing."""
    need = ["patient", "section", "label", "label_source", "x_px", "y_px"]
    missing = [c for c in need if c not in adata.obs]
    if missing:
        raise InputError(file, f"obs lacks {missing}", "load the data with a stguide reader (stguide.data.read_*)")
    if "sections" not in adata.uns:
        raise InputError(file, "uns['sections'] is missing", "load the data with a stguide reader (stguide.data.read_*)")
    absent = sorted(set(adata.obs["section"].astype(str)) - set(adata.uns["sections"]))
    if absent:
        raise InputError(file, f"sections {absent} have no entry in uns['sections']", "load the data with a stguide reader")
    check_counts(adata.X, file)
    if "spatial" not in adata.obsm:  # datasets written before obsm["spatial"] was part of the data model
        set_spatial(adata)
    return adata


def labelled_mask(adata: ad.AnnData, exclude: Sequence[str] = EXCLUDED_LABELS) -> np.ndarray:
    """Spots with a label that is not in ``exclude``."""
    lab = adata.obs["label"]
    return (lab.notna() & ~lab.isin(list(exclude))).to_numpy()


def read_dataset(path: str | PathLike) -> ad.AnnData:
    """Read a dataset written by :func:`write_dataset` (or any h5ad in the data model)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "the dataset file does not exist", "check the path, or build it with `stguide data`")
    try:
        a = ad.read_h5ad(path)
    except Exception as e:  # noqa: BLE001 - any h5py/anndata failure is a bad file to the user
        raise InputError(path, f"cannot be read as h5ad ({type(e).__name__}: {e})", "re-create the file") from None
    return validate_dataset(a, path)


def write_dataset(adata: ad.AnnData, path: str | PathLike) -> Path:
    """Write a dataset atomically as h5ad, with ``obsm["spatial"]`` and the per-section images of
    ``uns["spatial"]`` (added to ``adata`` when missing), so scanpy and squidpy open it as is."""
    from stguide.io import atomic_path

    set_spatial(adata)
    add_spatial_images(adata)
    with atomic_path(path, suffix=".h5ad") as tmp:
        adata.write_h5ad(tmp)
    return Path(path)


def dataset_summary(adata: ad.AnnData) -> dict:
    """What was read: patients, sections, spots, labelled spots per patient and label source, genes kept/dropped."""
    obs = adata.obs
    return {
        "n_spots": int(adata.n_obs), "n_genes": int(adata.n_vars),
        "patients": sorted(map(str, obs["patient"].unique())),
        "sections": {s: {"patient": str(v["patient"]), "has_image": bool(v["has_image"]), "um_per_px": float(v["um_per_px"])}
                     for s, v in adata.uns["sections"].items()},
        "labelled_per_patient": {str(p): int(n) for p, n in obs.groupby("patient", observed=True)["label"].count().items()},
        "label_sources": {str(k): int(v) for k, v in obs["label_source"].value_counts().items()},
        "classes": [str(c) for c in obs["label"].cat.categories],
        "genes": dict(adata.uns.get("genes", {})),
        "source": dict(adata.uns.get("source", {})),
    }
