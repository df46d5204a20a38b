"""The embedded default dataset: synthetic patients with H&E-like images and batch-affected counts.

Each section is a square grid of spots. A smooth random field per class decides, pixel by pixel, which tissue
class is where, so classes form contiguous regions. From that map:

* **Images** are rendered in optical density with the Ruifrok–Johnston haematoxylin and eosin vectors, with
  morphology that depends on the class: tumour sheets of large pleomorphic nuclei (invasive cancer), ducts filled
  with tumour cells (cancer in situ), dense small round nuclei (immune infiltrate), ducts with an open lumen and
  a ring of epithelium (breast glands), wavy fibrous stroma with sparse elongated nuclei (connective tissue) and
  fat vacuoles (adipose tissue). Every patient gets its own stain vectors and concentrations (a stain shift).
* **Counts** are negative-binomial draws around class-specific gene programs mixed by the class composition of
  each spot, with strong patient effects: library size, per-gene multiplicative factors and a patient-specific
  program that no other patient expresses.

The patient effect in expression is deliberately larger than the class signal in many genes, so an encoder of
raw expression separates patients first, as on real HER2ST.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path

import anndata as ad
import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import cKDTree

from stguide.data.model import HER2ST_CLASSES, SectionInfo, combine_sections, make_section
from stguide.io import atomic_path

CLASSES: tuple[str, ...] = HER2ST_CLASSES[:6]
"""The classes drawn (``undetermined`` is not)."""

_OD_H = np.array([0.650, 0.704, 0.286])  # Ruifrok & Johnston 2001 haematoxylin optical density vector
_OD_E = np.array([0.072, 0.990, 0.105])  # eosin


@dataclass(frozen=True)
class SyntheticConfig:
    """Every parameter of the generator.

    Layout
        ``n_patients``, ``sections_per_patient``, ``spots_per_section`` (rounded up to a square grid),
        ``pitch_um`` (centre-to-centre spot distance), ``spot_diameter_um``, ``margin_um`` (background around the
        grid), ``um_per_px_range`` (each patient's scanner resolution is drawn in this range, so pixel sizes
        differ between patients as on real data), ``region_scale_um`` (the correlation length of class regions;
        larger gives bigger regions), ``class_bias_sd`` (patient-specific shift of class abundance).
    Expression
        ``n_genes``, ``genes_per_program`` (marker genes per class), ``program_log_fold`` (their log fold
        change), ``library_size`` (mean UMIs per spot), ``library_sd`` (sd of the patient's log library size),
        ``gene_factor_sd`` (sd of the patient's per-gene log factor), ``patient_program_genes`` and
        ``patient_program_log_fold`` (a program only that patient expresses), ``section_sd`` (a milder
        per-section per-gene log factor), ``spot_sd`` (per-spot log noise), ``nb_theta`` (negative-binomial
        inverse dispersion).
    Image
        ``stain_sd`` (sd of the patient's log stain-vector and concentration perturbation), ``brightness_sd``
        (patient background shift), ``pixel_noise`` (per-pixel optical density noise).
    """

    n_patients: int = 4
    sections_per_patient: int = 2
    spots_per_section: int = 144
    seed: int = 0
    pitch_um: float = 100.0
    spot_diameter_um: float = 55.0
    margin_um: float = 100.0
    um_per_px_range: tuple[float, float] = (0.8, 1.25)
    region_scale_um: float = 160.0
    class_bias_sd: float = 0.6
    n_genes: int = 300
    genes_per_program: int = 15
    program_log_fold: float = 1.6
    library_size: float = 1500.0
    library_sd: float = 0.5
    gene_factor_sd: float = 0.8
    patient_program_genes: int = 30
    patient_program_log_fold: float = 2.5
    section_sd: float = 0.15
    spot_sd: float = 0.2
    nb_theta: float = 8.0
    stain_sd: float = 0.15
    brightness_sd: float = 0.08
    pixel_noise: float = 0.04


def _class_map(rng: np.random.Generator, h: int, w: int, scale_px: float, bias: np.ndarray) -> np.ndarray:
    """Per-pixel class index from smoothed noise fields (computed coarse, then upsampled)."""
    f = 8
    ch, cw = h // f + 1, w // f + 1
    fields = np.stack([ndimage.gaussian_filter(rng.standard_normal((ch, cw)), scale_px / f) for _ in bias])
    fields /= fields.std(axis=(1, 2), keepdims=True) + 1e-9
    fine = ndimage.zoom(fields + bias[:, None, None], (1, f, f), order=1)[:, :h, :w]
    return np.argmax(fine, axis=0)


def _disks(conc: np.ndarray, xs: np.ndarray, ys: np.ndarray, rs: np.ndarray, value: float, elong: float = 1.0,
           angle: np.ndarray | None = None) -> None:
    """Add (elliptical) disks of density ``value`` to ``conc`` in place."""
    h, w = conc.shape
    for i, (x, y, r) in enumerate(zip(xs, ys, rs, strict=True)):
        ra = r * elong
        R = int(np.ceil(ra)) + 1
        x0, x1, y0, y1 = max(int(x) - R, 0), min(int(x) + R + 1, w), max(int(y) - R, 0), min(int(y) + R + 1, h)
        if x0 >= x1 or y0 >= y1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1]
        dx, dy = xx - x, yy - y
        if angle is not None:
            c, s = np.cos(angle[i]), np.sin(angle[i])
            dx, dy = c * dx + s * dy, -s * dx + c * dy
        m = (dx / ra) ** 2 + (dy / r) ** 2 <= 1.0
        conc[y0:y1, x0:x1][m] = np.maximum(conc[y0:y1, x0:x1][m], value)


def _render(rng: np.random.Generator, cmap: np.ndarray, um_per_px: float, stain: dict) -> np.ndarray:
    """An H&E-like RGB image for a class map (see the module docstring for the morphology)."""
    h, w = cmap.shape
    u = 1.0 / um_per_px  # px per µm
    H = np.zeros((h, w))
    E = np.zeros((h, w))
    yy, xx = np.mgrid[0:h, 0:w]
    tissue = cmap >= 0
    # Eosin background per class, stroma with waves, adipose handled below.
    theta = ndimage.gaussian_filter(rng.standard_normal((h // 16 + 1, w // 16 + 1)), 3) * 6
    theta = np.kron(theta, np.ones((16, 16)))[:h, :w]
    waves = 0.5 + 0.5 * np.sin((xx * np.cos(theta) + yy * np.sin(theta)) * (2 * np.pi / (9 * u)))
    base_e = np.array([0.45, 0.40, 0.30, 0.35, 0.55, 0.05])
    E[tissue] = base_e[cmap[tissue]]
    stroma = cmap == 4
    E[stroma] += 0.45 * waves[stroma]
    H[tissue] = 0.05

    def sample(cls: int, per_mm2: float) -> tuple[np.ndarray, np.ndarray]:
        n = rng.poisson(per_mm2 * h * w / (u * 1000) ** 2)
        xs, ys = rng.uniform(0, w, n), rng.uniform(0, h, n)
        keep = cmap[ys.astype(int), xs.astype(int)] == cls
        return xs[keep], ys[keep]

    # 0 invasive cancer: dense sheets of large, pleomorphic nuclei
    xs, ys = sample(0, 5200)
    _disks(H, xs, ys, rng.gamma(6, 0.9, len(xs)) * u, 1.15, 1.3, rng.uniform(0, np.pi, len(xs)))
    # 1 cancer in situ and 3 breast glands: ducts
    for cls, lumen_um, ring_um, fill in ((1, 28, 16, True), (3, 12, 9, False)):
        cx, cy = sample(cls, 260 if cls == 1 else 520)
        for x, y in zip(cx, cy, strict=True):
            R = (lumen_um + ring_um) * u
            d = np.hypot(xx[max(int(y - R), 0): int(y + R) + 1, max(int(x - R), 0): int(x + R) + 1] - x,
                         yy[max(int(y - R), 0): int(y + R) + 1, max(int(x - R), 0): int(x + R) + 1] - y)
            sl = (slice(max(int(y - R), 0), int(y + R) + 1), slice(max(int(x - R), 0), int(x + R) + 1))
            lumen = d < lumen_um * u
            E[sl][lumen] = 0.55 if fill else 0.02
            H[sl][lumen] = 0.02
            n_ring = int(2 * np.pi * (lumen_um + ring_um / 2) / 7)
            a = rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi, n_ring, endpoint=False)
            rr = (lumen_um + ring_um / 2) * u
            _disks(H, x + rr * np.cos(a), y + rr * np.sin(a), np.full(n_ring, 3.2 * u), 1.0, 1.4, a)
            if fill:
                m = int(lumen_um ** 2 / 30)
                r_in = np.sqrt(rng.uniform(0, 1, m)) * lumen_um * u
                b = rng.uniform(0, 2 * np.pi, m)
                _disks(H, x + r_in * np.cos(b), y + r_in * np.sin(b), rng.gamma(6, 0.8, m) * u, 1.1)
    # 2 immune infiltrate: many small round dark nuclei
    xs, ys = sample(2, 11000)
    _disks(H, xs, ys, rng.normal(2.6, 0.3, len(xs)).clip(1.5) * u, 1.45)
    # 4 connective tissue: sparse elongated nuclei along the fibres
    xs, ys = sample(4, 700)
    _disks(H, xs, ys, np.full(len(xs), 1.6 * u), 0.95, 3.0, theta[ys.astype(int), xs.astype(int)])
    # 5 adipose tissue: fat vacuoles with thin eosin borders
    fat = cmap == 5
    if fat.any():
        seeds = np.column_stack([rng.uniform(0, w, max(int(fat.sum() / (45 * u) ** 2 * 1.3), 2)),
                                 rng.uniform(0, h, max(int(fat.sum() / (45 * u) ** 2 * 1.3), 2))])
        pts = np.column_stack([xx[fat], yy[fat]])
        d, _ = cKDTree(seeds).query(pts, k=2)
        border = (d[:, 1] - d[:, 0]) < 2.5 * u
        E[fat] = np.where(border, 0.6, 0.02)
        xs, ys = sample(5, 120)
        _disks(H, xs, ys, np.full(len(xs), 2.2 * u), 0.9, 1.8, rng.uniform(0, np.pi, len(xs)))
    H = 0.6 * H * stain["h_scale"] * np.exp(rng.normal(0, 0.08, H.shape))
    E = 0.55 * E * stain["e_scale"]
    od = H[..., None] * stain["h"] + E[..., None] * stain["e"] + stain["background"]
    od += rng.normal(0, stain["noise"], od.shape)
    rgb = 255.0 * np.exp(-np.clip(od, 0, None) * np.log(10))
    rgb = ndimage.gaussian_filter(rgb, (0.6, 0.6, 0))
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _stain(rng: np.random.Generator, cfg: SyntheticConfig) -> dict:
    def jitter(v: np.ndarray) -> np.ndarray:
        v = v * np.exp(rng.normal(0, cfg.stain_sd * 2, 3))
        return v / np.linalg.norm(v)

    return {
        "h": jitter(_OD_H), "e": jitter(_OD_E),
        "h_scale": float(np.exp(rng.normal(0, cfg.stain_sd))), "e_scale": float(np.exp(rng.normal(0, cfg.stain_sd))),
        "background": float(abs(rng.normal(0.03, cfg.brightness_sd))), "noise": cfg.pixel_noise,
    }


def make_synthetic(
    n_patients: int = 4,
    sections_per_patient: int = 2,
    spots_per_section: int = 144,
    seed: int = 0,
    image_dir: str | PathLike | None = None,
    **overrides,
) -> ad.AnnData:
    """Generate the synthetic dataset (same seed, same dataset).

    Parameters
    ----------
    n_patients, sections_per_patient, spots_per_section, seed
        Size and seed; every other parameter of :class:`SyntheticConfig` may be given as a keyword.
    image_dir
        Where the section images (PNG) are written; default: a folder under the system's temporary directory
        named by the parameters, reused when it exists.

    Returns
    -------
    The dataset in the stguide data model; every spot is labelled (``label_source = "synthetic"``).
    """
    cfg = SyntheticConfig(n_patients=n_patients, sections_per_patient=sections_per_patient,
                          spots_per_section=spots_per_section, seed=seed, **overrides)
    from stguide.io import fingerprint

    fp = fingerprint(asdict(cfg))
    if image_dir is None:
        import tempfile

        image_dir = Path(tempfile.gettempdir()) / "stguide-synthetic" / fp
    image_dir = Path(image_dir)
    image_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed)
    k, g = len(CLASSES), cfg.n_genes
    base = rng.normal(0.0, 1.0, g)
    programs = np.zeros((k, g))
    for c in range(k):
        genes = rng.choice(g, cfg.genes_per_program, replace=False)
        programs[c, genes] = cfg.program_log_fold * rng.uniform(0.6, 1.4, len(genes))
    gene_names = [f"G{i:04d}" for i in range(g)]
    side = int(np.ceil(np.sqrt(cfg.spots_per_section)))
    parts = []
    for p in range(cfg.n_patients):
        patient = f"P{p + 1}"
        prng = np.random.default_rng([cfg.seed, p])
        um = float(prng.uniform(*cfg.um_per_px_range))
        lib = cfg.library_size * np.exp(prng.normal(0, cfg.library_sd))
        gene_factor = prng.normal(0, cfg.gene_factor_sd, g)
        pprog = np.zeros(g)
        pprog[prng.choice(g, cfg.patient_program_genes, replace=False)] = cfg.patient_program_log_fold
        bias = prng.normal(0, cfg.class_bias_sd, k)
        stain = _stain(prng, cfg)
        for s in range(cfg.sections_per_patient):
            section = f"{patient}S{s + 1}"
            srng = np.random.default_rng([cfg.seed, p, s])
            u = 1.0 / um
            margin = cfg.margin_um * u
            size = int(np.ceil(2 * margin + (side - 1) * cfg.pitch_um * u)) + 1
            cmap = _class_map(srng, size, size, cfg.region_scale_um * u, bias)
            idx = np.arange(side * side)[: cfg.spots_per_section]
            gx, gy = idx % side, idx // side
            x_px = margin + gx * cfg.pitch_um * u + srng.normal(0, 1.0, len(idx))
            y_px = margin + gy * cfg.pitch_um * u + srng.normal(0, 1.0, len(idx))
            bg = np.ones_like(cmap, dtype=bool)  # background outside the grid's tissue footprint
            pad = int(margin * 0.5)
            bg[pad:size - pad, pad:size - pad] = False
            cmap = np.where(bg, -1, cmap)
            img = _render(srng, cmap, um, stain)
            path = image_dir / f"{section}.png"
            with atomic_path(path, suffix=".png") as tmp:
                Image.fromarray(img).save(tmp, format="PNG")
            # class composition inside each spot
            rad = cfg.spot_diameter_um / 2 * u
            comp = np.zeros((len(idx), k))
            for i, (x, y) in enumerate(zip(x_px, y_px, strict=True)):
                r = int(np.ceil(rad))
                win = cmap[int(y) - r: int(y) + r + 1, int(x) - r: int(x) + r + 1]
                yy, xx = np.mgrid[-r: r + 1, -r: r + 1]
                vals = win[(xx ** 2 + yy ** 2) <= rad ** 2]
                comp[i] = np.bincount(vals[vals >= 0], minlength=k)[:k]
            comp /= comp.sum(1, keepdims=True)
            label_idx = cmap[y_px.astype(int), x_px.astype(int)]
            section_factor = srng.normal(0, cfg.section_sd, g)
            log_mu = np.log(comp @ np.exp(base + programs) + 1e-9) + gene_factor + pprog + section_factor
            log_mu += srng.normal(0, cfg.spot_sd, (len(idx), 1))
            mu = np.exp(log_mu)
            mu = mu / mu.sum(1, keepdims=True) * lib
            counts = srng.poisson(srng.gamma(cfg.nb_theta, mu / cfg.nb_theta))
            info = SectionInfo(section, patient, str(path), um, cfg.spot_diameter_um, size, size)
            parts.append(make_section(counts, gene_names, [f"{a}x{b}" for a, b in zip(gx, gy, strict=True)], info=info,
                                      x_px=x_px, y_px=y_px, labels=[CLASSES[c] for c in label_idx],
                                      label_source="synthetic", file=path))
    out = combine_sections(parts, "intersection", image_dir)
    d = asdict(cfg)
    d["um_per_px_range"] = list(d["um_per_px_range"])
    out.uns["synthetic"] = d
    out.uns["synthetic_markers"] = {CLASSES[c]: [gene_names[i] for i in np.flatnonzero(programs[c])] for c in range(k)}
    out.uns["source"] = {"reader": "synthetic", "image_dir": str(image_dir)}
    return out
