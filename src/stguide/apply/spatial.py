"""Predicted tiles into a SpatialData store (``stguide predict --spatialdata STORE``): the tiles as square shapes and
their table annotating them, registered with the slide's image, so that napari-spatialdata or spatialdata-plot show
the slide and its predicted classes together. Needs the optional extra ``stguide[spatialdata]``."""
from __future__ import annotations

from os import PathLike
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from stguide.data.readers.spatialdata import require_spatialdata


def _store_element(slide: Path, store: Path) -> str | None:
    """The image element's name when ``slide`` is an image of ``store`` (``STORE/images/NAME``), else None."""
    if slide.parent.name == "images" and store.exists() and slide.parent.parent.resolve() == store.resolve():
        return slide.name
    return None


def add_tiles(store: str | PathLike, tiles: ad.AnnData, name: str, slide: str | PathLike, thumb: np.ndarray, scale: float) -> Path:
    """Add the tile table ``tiles`` (as :func:`~stguide.apply.predict.predict_slide` writes it) to ``store`` as the
    table ``name`` annotating the shapes ``{name}_squares`` (each tile's square in the slide's full-resolution pixels;
    column names as SpatialData allows them, spaces replaced by ``_``).

    When the slide is an image element of ``store``, the squares take that image's transformations, so they lie on it
    in every coordinate system it has; otherwise the squares are in ``global`` (the slide's pixels) and the slide's
    thumbnail is added as the image ``{name}_slide``, scaled onto them. A store that does not exist is created; elements
    of these names already in it are replaced. Returns the store."""
    sd = require_spatialdata("--spatialdata")
    import geopandas as gpd
    import shapely
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale, get_transformation

    store, slide = Path(store), Path(slide)
    squares = f"{name}_squares"
    half = float(tiles.uns["tile_spec"]["width"]) / 2
    c = np.asarray(tiles.obsm["spatial"], dtype=float).reshape(-1, 2)
    boxes = shapely.box(c[:, 0] - half, c[:, 1] - half, c[:, 0] + half, c[:, 1] + half)
    element = _store_element(slide, store)
    sdata = sd.read_zarr(str(store)) if store.exists() else sd.SpatialData()
    new: dict[str, object] = {}
    if element is not None:
        transformations = get_transformation(sdata.images[element], get_all=True)
    else:
        transformations = {"global": Identity()}
        new[f"{name}_slide"] = Image2DModel.parse(np.ascontiguousarray(thumb.transpose(2, 0, 1)), dims=("c", "y", "x"),
                                                  transformations={"global": Scale([1 / scale, 1 / scale], axes=("x", "y"))})
    new[squares] = ShapesModel.parse(gpd.GeoDataFrame(geometry=boxes, index=pd.Index(tiles.obs_names.astype(str))),
                                     transformations=transformations)
    table = tiles.copy()
    table.uns.pop("spatial", None)  # the store holds the image itself
    table.obs["region"] = pd.Categorical([squares] * table.n_obs)
    table.obs["instance_id"] = table.obs_names.astype(str)
    table = sd.sanitize_table(table, inplace=False)  # SpatialData's names have no spaces: p_invasive cancer → p_invasive_cancer
    new[name] = TableModel.parse(table, region=squares, region_key="region", instance_key="instance_id")
    if not store.exists():
        for key, value in new.items():
            sdata[key] = value
        sdata.write(str(store))
        return store
    for key, value in new.items():
        if key in sdata:
            del sdata[key]
            sdata.delete_element_from_disk(key)
        sdata[key] = value
        sdata.write_element(key)
    return store
