"""``stguide predict``: a model bundle applied to a whole-slide image without ST.

The slide's tissue is found on a thumbnail, tiled at the bundle's physical patch size, and read lazily at the right
pyramid level in batches (memory stays flat in the slide's size). Writes into ``out_dir``:

- ``{model}_tiles.h5ad`` (the tile table, named as LazySlide names a model's tile features; ``model`` is the bundle's
  method): one observation per tile — its probed features in ``X``, its centre in ``obsm["spatial"]``
  (full-resolution px), the tile size and µm/px in ``uns["tile_spec"]``, the class probabilities
  (``obs["p_<class>"]``), the predicted class (``obs["predicted"]``), the tissue fraction, and the slide's thumbnail
  with its scale factor in ``uns["spatial"][<slide>]`` (squidpy's ``pl.spatial_scatter`` draws it as is);
- with ``spatialdata``: the same table and the tiles as square shapes added to a SpatialData store;
- ``map.png``: the subtype map over the thumbnail, with a legend of classes and their area fractions;
- ``tiles.geojson``: each tile as a square polygon with its class (QuPath: File › Import objects);
- ``summary.json``: the slide, its µm/px and where it came from, the tile count and size, the area fractions, and the
  seconds spent finding tissue, embedding tiles and writing the outputs.
"""
from __future__ import annotations

import json
import time
from contextlib import closing
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np

from stguide.apply.bundle import Bundle, load_bundle
from stguide.apply.tissue import tile_grid, tissue_mask
from stguide.data.images import image_size, native_um_per_px, open_level, thumbnail
from stguide.data.model import spatial_library
from stguide.errors import InputError
from stguide.io import atomic_path, write_json_atomic
from stguide.progress import read_ahead, track
from stguide.report.palette import class_colour


def slide_um_per_px(slide: Path, given: float | None) -> tuple[float, str]:
    """The slide's µm per full-resolution pixel: ``given``, else the slide's metadata; a clear error otherwise."""
    if given is not None:
        if not given > 0:
            raise InputError(f"--um-per-px={given}", "must be a positive number", "give the scan's resolution, e.g. 0.25 (40x) or 0.5 (20x)")
        return float(given), "given"
    found = native_um_per_px(slide)
    if found is None:
        raise InputError(slide, "records no µm per pixel in its metadata",
                         "give --um-per-px (the scan's resolution, e.g. 0.25 at 40x or 0.5 at 20x)")
    return found, "slide metadata"


def predict_slide(slide: str | PathLike, model: str | PathLike | Bundle, out_dir: str | PathLike, *, um_per_px: float | None = None,
                  batch_size: int = 64, min_tissue: float = 0.5, thumb_px: int = 2048, genes: list[str] | None = None,
                  map_gene: str | None = None, spatialdata: str | PathLike | None = None, progress: bool = True) -> dict[str, Any]:
    """Apply a bundle to ``slide``; returns the summary (also written as ``summary.json``). ``genes``: predicted
    expression of these genes per tile (retrieval from the bundle's reference: ``obs["expr_<gene>"]``, log1p of
    counts per 10,000); ``map_gene``: one of them drawn as ``map_<gene>.png``; ``spatialdata``: a SpatialData store the
    tiles are added to (:func:`stguide.apply.spatial.add_tiles`)."""
    import anndata as ad
    import pandas as pd

    slide = Path(slide)
    bundle = model if isinstance(model, Bundle) else load_bundle(model)
    genes = list(genes or [])
    if map_gene and map_gene not in genes:
        genes.append(map_gene)
    if genes:
        bundle.panel_columns(genes)  # checks them before any tile is read
    if spatialdata is not None:
        from stguide.data.readers.spatialdata import require_spatialdata

        require_spatialdata("--spatialdata")
    t0 = time.perf_counter()
    w, h = image_size(slide)
    mpp, mpp_source = slide_um_per_px(slide, um_per_px)
    patch = bundle.manifest["patch"]
    side_px = patch["size_um"] / mpp
    out_px = int(patch["out_px"])
    thumb, scale = thumbnail(slide, w, h, thumb_px)
    thumb = thumb[: max(1, round(h * scale)), : max(1, round(w * scale))]  # the slide itself, without the square's padding
    mask = tissue_mask(thumb)
    grid = tile_grid(mask, scale, (w, h), side_px, min_tissue)
    n = len(grid.centres)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    classes = bundle.classes
    feats: np.ndarray = np.zeros((0, 0), np.float32)
    proba = np.zeros((n, len(classes)))
    expr = np.zeros((n, len(genes)))
    t_mask = time.perf_counter()
    level = open_level(slide, downsample=side_px / out_px, lazy=True)
    try:
        stain = _stain(bundle, level, grid, side_px, out_px)
        chunks = []

        def read(s: int) -> np.ndarray:
            tiles = np.stack([level.cut(x, y, side_px / 2, out_px)[0] for x, y in grid.centres[s:s + batch_size]])
            if stain is not None:
                from stguide.data.stain import apply_macenko

                tiles = np.stack([apply_macenko(t, *stain) for t in tiles])
            return tiles

        starts = list(range(0, n, batch_size))
        with closing(read_ahead(starts, read)) as batches:  # the next batch is read and decoded while this one is embedded
            for s, tiles in track(batches, f"tiles of {slide.name} ({n} tiles of {patch['size_um']:g} µm)", enabled=progress,
                                  total=len(starts)):
                f, u = bundle.embed(tiles, head=bool(genes))
                chunks.append(f)
                proba[s:s + batch_size] = bundle.proba(f)
                if u is not None:
                    expr[s:s + batch_size] = bundle.expression(u, genes)
        feats = np.concatenate(chunks) if chunks else np.zeros((0, 1), np.float32)
    finally:
        level.close()
    t_tiles = time.perf_counter()
    pred = np.array(classes, dtype=object)[proba.argmax(1)] if n else np.array([], dtype=object)
    obs = pd.DataFrame({f"p_{c}": proba[:, i] for i, c in enumerate(classes)}, index=[f"tile{i}" for i in range(n)])
    obs["predicted"] = pd.Categorical(pred, categories=classes)
    obs["tissue_fraction"] = grid.tissue
    for j, g in enumerate(genes):
        obs[f"expr_{g}"] = expr[:, j]
    name = table_name(bundle.manifest["method"])
    tiles_ad = ad.AnnData(X=feats, obs=obs, obsm={"spatial": grid.centres.astype(np.float64)})
    library = slide_name(slide)
    tiles_ad.uns["tile_spec"] = {"width": side_px, "height": side_px, "tile_um": patch["size_um"], "mpp": mpp,
                                 "tile_px_at_model": out_px, "unit": "full-resolution px of the slide"}
    # squidpy/scanpy's spatial layout: the thumbnail as the library's low-resolution image, tiles drawn at their size
    tiles_ad.uns["spatial"] = {library: spatial_library(thumb, scale, side_px, str(slide))}
    tiles_ad.obs["library_id"] = pd.Categorical([library] * n)
    fractions = {c: float(np.mean(pred == c)) if n else 0.0 for c in classes}
    summary = {"slide": str(slide), "size_px": [w, h], "um_per_px": mpp, "um_per_px_source": mpp_source,
               "tile_um": patch["size_um"], "tile_px": side_px, "n_tiles": n, "min_tissue": min_tissue,
               "area_fraction": fractions, "genes": genes, "table": f"{name}.h5ad",
               "model": {k: bundle.manifest[k] for k in ("method", "fold", "backbone", "trunk", "features")},
               "seconds": {"thumbnail_and_mask": round(t_mask - t0, 2), "tiles": round(t_tiles - t_mask, 2)}}
    tiles_ad.uns["stguide_predict"] = json.loads(json.dumps(summary))
    with atomic_path(out / f"{name}.h5ad", suffix=".h5ad") as tmp:
        tiles_ad.write_h5ad(tmp)
    if spatialdata is not None:
        from stguide.apply.spatial import add_tiles

        summary["spatialdata"] = str(add_tiles(spatialdata, tiles_ad, name, slide, thumb, scale))
    write_geojson(out / "tiles.geojson", grid.centres, side_px, pred, proba.max(1) if n else np.zeros(0))
    subtype_map(out / "map.png", thumb, scale, grid.centres, side_px, pred, classes, fractions, slide.name)
    if map_gene:
        gene_map(out / f"map_{map_gene}.png", thumb, scale, grid.centres, side_px, expr[:, genes.index(map_gene)], map_gene, slide.name)
    summary["seconds"]["outputs"] = round(time.perf_counter() - t_tiles, 2)
    write_json_atomic(out / "summary.json", summary)
    return summary


def table_name(method: str) -> str:
    """The tile table's name for a model of ``method``: ``{model}_tiles`` (LazySlide's naming of a model's tile table)."""
    import re

    return re.sub(r"[^A-Za-z0-9_.+-]", "-", method) + "_tiles"


def slide_name(slide: str | PathLike) -> str:
    """The folder name of a slide's outputs when several slides are predicted: its file name without the extension
    (a SpatialData image element: the store's name and the element's)."""
    p = Path(slide)
    if p.parent.name == "images" and p.parent.parent.suffix == ".zarr":
        return f"{p.parent.parent.stem}-{p.name}"
    name = p.name
    for suffix in (".ome.tif", ".ome.tiff"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return p.stem


def predict_job(slide: str, model: str, out_dir: str, options: dict[str, Any]) -> dict[str, Any]:
    """One slide's prediction (a job of :func:`predict_slides`), with its output folder in the summary."""
    s = predict_slide(slide, model, out_dir, **options)
    return {**s, "out_dir": str(out_dir)}


def predict_slides(slides: list[str], model: str | PathLike, out_dir: str | PathLike, executor=None, progress: bool = True,
                   **options: Any) -> dict[str, Any]:
    """:func:`predict_slide` for each of ``slides``, one job per slide through ``executor``
    (:class:`~stguide.executors.ExecutorConfig`; default serial). One slide writes into ``out_dir``; several write
    into ``out_dir/<slide name>/`` and ``out_dir/slides.json`` lists them. Returns ``{"slides": {slide: summary}}``, or
    ``{"submitted": [job ids]}`` on a SLURM cluster. The bundle, the slides and their names are checked before any
    job starts."""
    from stguide.executors import ExecutorConfig, Stage, Submitted, run_stages

    executor = executor or ExecutorConfig()
    executor.check_available()
    load_bundle(model)  # a bundle whose files do not match its manifest is refused before any slide is read
    out = Path(out_dir)
    names = [slide_name(s) for s in slides]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise InputError(slides[names.index(twice[0])], f"several slides would write to the folder {twice[0]!r}",
                         "give slides distinct names, or predict them in separate runs")
    for s in slides:  # missing or unreadable slides, or one of unknown scale, stop the run before any job
        image_size(s)
        slide_um_per_px(Path(s), options.get("um_per_px"))
    if options.get("spatialdata") and len(slides) > 1:
        raise InputError("--spatialdata", f"one store was given for {len(slides)} slides, whose tile tables would share a name",
                         "predict one slide per --spatialdata store")
    dirs = [out] if len(slides) == 1 else [out / n for n in names]
    options = {**options, "progress": progress and executor.kind == "serial"}
    done = run_stages([Stage("predict", predict_job, [(str(s), str(model), str(d), options) for s, d in zip(slides, dirs, strict=True)],
                             gpu=True)], executor, out / "jobs", progress)
    if isinstance(done, Submitted):
        return {"submitted": done.jobs["predict"]}
    summaries = {str(s): r for s, r in zip(slides, done[0], strict=True)}
    if len(slides) > 1:
        write_json_atomic(out / "slides.json", {s: {"out_dir": r["out_dir"], "n_tiles": r["n_tiles"], "area_fraction": r["area_fraction"]}
                                                for s, r in summaries.items()})
    return {"slides": summaries}


def _stain(bundle: Bundle, level, grid, side_px: float, out_px: int, sample: int = 64):
    """The slide's Macenko stain fit (from up to ``sample`` tissue tiles) when the model was trained on
    Macenko-normalised patches; else None."""
    if bundle.manifest["patch"].get("stain_norm", "none") != "macenko" or not len(grid.centres):
        return None
    from stguide.data.stain import fit_macenko

    idx = np.linspace(0, len(grid.centres) - 1, min(sample, len(grid.centres))).astype(int)
    tiles = np.stack([level.cut(x, y, side_px / 2, out_px)[0] for x, y in grid.centres[idx]])
    return fit_macenko(tiles)


def write_geojson(path: Path, centres: np.ndarray, side_px: float, pred: np.ndarray, confidence: np.ndarray) -> None:
    """Tiles as square polygons (full-resolution px) with their class, as QuPath imports detections."""
    half = side_px / 2
    feats = []
    for (x, y), c, p in zip(centres, pred, confidence, strict=True):
        ring = [[x - half, y - half], [x + half, y - half], [x + half, y + half], [x - half, y + half], [x - half, y - half]]
        rgb = [int(class_colour(str(c))[i:i + 2], 16) for i in (1, 3, 5)]
        feats.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[float(a), float(b)] for a, b in ring]]},
                      "properties": {"objectType": "detection", "classification": {"name": str(c), "color": rgb},
                                     "probability": float(p)}})
    write_json_atomic(path, {"type": "FeatureCollection", "features": feats})


def _tile_map(path: Path, thumb: np.ndarray, scale: float, centres: np.ndarray, side_px: float, title: str, draw) -> Path:
    """The thumbnail with the tiles drawn by ``draw(ax, tiles_of(mask))`` over it, titled and saved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    s = side_px * scale

    def tiles_of(sel: np.ndarray, **kw) -> PatchCollection:
        return PatchCollection([Rectangle((x * scale - s / 2, y * scale - s / 2), s, s) for x, y in centres[sel]], edgecolor="none", **kw)

    fig, ax = plt.subplots(figsize=(9, 9))
    ax.imshow(thumb)
    draw(fig, ax, tiles_of)
    ax.set_title(title)
    ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def subtype_map(path: Path, thumb: np.ndarray, scale: float, centres: np.ndarray, side_px: float, pred: np.ndarray,
                classes: list[str], fractions: dict[str, float], title: str) -> Path:
    """The thumbnail with each tile coloured by its class, and a legend of the classes' area fractions."""
    from matplotlib.lines import Line2D

    def draw(fig, ax, tiles_of) -> None:
        for c in classes:
            if (pred == c).any():
                ax.add_collection(tiles_of(pred == c, facecolor=class_colour(c), alpha=0.55))
        handles = [Line2D([], [], marker="s", ls="", markersize=9, color=class_colour(c), label=f"{c} ({100 * fractions[c]:.1f} %)")
                   for c in classes]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9, frameon=False, title="class (tissue area)")

    return _tile_map(path, thumb, scale, centres, side_px, f"{title}: {len(centres)} tiles", draw)


def gene_map(path: Path, thumb: np.ndarray, scale: float, centres: np.ndarray, side_px: float, values: np.ndarray, gene: str,
             title: str) -> Path:
    """The thumbnail with each tile coloured by one gene's predicted expression (viridis, with a colour bar)."""

    def draw(fig, ax, tiles_of) -> None:
        coll = tiles_of(np.ones(len(centres), bool), cmap="viridis", alpha=0.75)
        coll.set_array(np.asarray(values, float))
        ax.add_collection(coll)
        fig.colorbar(coll, ax=ax, fraction=0.04, label=f"{gene}: predicted log1p(counts per 10,000)")

    return _tile_map(path, thumb, scale, centres, side_px, f"{title}: {gene} (retrieved from the model's reference spots)", draw)
