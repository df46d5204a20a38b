"""scverse interop (issue 31): SpatialData stores built with the spatialdata library itself are read into the data
model (a multiscale image, a transformation that is not the identity), their patches match the same image read as
a TIFF, and what the product writes opens in squidpy as is."""
import sys
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from stguide.errors import InputError

pytest.importorskip("spatialdata")
H, W, N, UM_PER_PX, OFFSET_UM = 900, 1200, 40, 0.5, (100.0, 50.0)


def _image() -> np.ndarray:
    """An RGB image (H × W × 3) with structure at every scale, so that patches from different levels can be compared."""
    yy, xx = np.mgrid[0:H, 0:W]
    return np.stack([128 + 100 * np.sin(xx / 37.0), 128 + 100 * np.cos(yy / 53.0), 128 + 60 * np.sin((xx + yy) / 71.0)],
                    axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A store in a µm coordinate system: the image's pixels are 0.5 µm with an offset (scale then translation), the
    spots are circles of 55 µm in µm, the table annotates them; also the spots' true pixel positions."""
    import spatialdata as sd
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale, Sequence, Translation

    rng = np.random.default_rng(0)
    d = tmp_path_factory.mktemp("sdata")
    img = _image()
    to_um = Sequence([Scale([UM_PER_PX, UM_PER_PX], axes=("x", "y")), Translation(list(OFFSET_UM), axes=("x", "y"))])
    image = Image2DModel.parse(img.transpose(2, 0, 1), dims=("c", "y", "x"), scale_factors=[2, 2], chunks=(3, 256, 256),
                               transformations={"microns": to_um})
    px = np.column_stack([rng.uniform(150, W - 150, N), rng.uniform(150, H - 150, N)])
    ids = [f"spot{i}" for i in range(N)]
    circles = ShapesModel.parse(px * UM_PER_PX + OFFSET_UM, geometry=0, radius=np.full(N, 27.5), index=pd.Index(ids),
                                transformations={"microns": Identity()})
    labels = np.where(px[:, 0] < W / 2, "invasive cancer", "adipose tissue")
    obs = pd.DataFrame({"region": pd.Categorical(["spots"] * N), "spot_id": ids, "pathology": labels, "donor": "D1"}, index=ids)
    table = TableModel.parse(ad.AnnData(X=rng.poisson(3, (N, 50)).astype(np.float32), obs=obs,
                                        var=pd.DataFrame(index=[f"G{i}" for i in range(50)])),
                             region="spots", region_key="region", instance_key="spot_id")
    path = d / "sample.zarr"
    sd.SpatialData(images={"he": image}, shapes={"spots": circles}, tables={"table": table}).write(str(path))
    tif = d / "he.tif"
    import tifffile

    tifffile.imwrite(tif, img, tile=(256, 256), photometric="rgb")
    return path, px, img, tif


OPTIONS = {"coordinate_system": "microns", "um_per_unit": 1.0, "patient_key": "donor", "label_key": "pathology"}


def test_a_store_becomes_the_data_model_with_positions_and_scale_from_its_transformations(store):
    from stguide.data.readers import read

    path, px, _, _ = store
    a = read("spatialdata", str(path), **OPTIONS)
    info = a.uns["sections"]["spots"]
    assert info["um_per_px"] == pytest.approx(UM_PER_PX) and info["image"] == str(path / "images" / "he")
    assert (info["image_width"], info["image_height"]) == (W, H)
    np.testing.assert_allclose(a.obs[["x_px", "y_px"]].to_numpy(), px, atol=1e-6)
    assert info["spot_diameter_um"] == pytest.approx(55.0)  # the circles' diameter, in µm through the same scale
    assert set(a.obs["patient"]) == {"D1"} and a.obs["label"].notna().all()
    assert a.X.dtype == np.int32 and a.uns["source"]["reader"] == "spatialdata"
    # Visium's calibration: the spots' known 55 µm over their diameter in the coordinate system gives the same scale
    b = read("spatialdata", str(path), coordinate_system="microns", spot_diameter_um=55.0, patient="D1")
    assert b.uns["sections"]["spots"]["um_per_px"] == pytest.approx(UM_PER_PX)
    assert "spot_diameter_um" in b.uns["source"]["um_per_px"]["spots"]


def test_stguide_data_reads_a_store_from_the_command_line(store, tmp_path, capsys):
    """`stguide data spatialdata STORE` with the reader's options as flags writes the same dataset as read()."""
    from stguide import cli
    from stguide.data import read_dataset

    path = store[0]
    assert cli.main(["data", "spatialdata", str(path), "--coordinate-system", "microns", "--um-per-unit", "1",
                     "--patient-key", "donor", "--label-key", "pathology", "--out", str(tmp_path / "d.h5ad")]) == 0
    a = read_dataset(tmp_path / "d.h5ad")
    assert a.n_obs == N and a.uns["sections"]["spots"]["um_per_px"] == pytest.approx(UM_PER_PX)
    assert f"{N} spots" in capsys.readouterr().out
    assert cli.main(["data", "spatialdata", str(path), "--patient", "D1", "--out", str(tmp_path / "e.h5ad")]) == 2
    assert "not registered to the coordinate system 'global'" in capsys.readouterr().err
    assert cli.main(["data", "spatialdata", str(path), "--patient", "D1", "--coordinate-system", "microns", "--out", str(tmp_path / "e.h5ad")]) == 2
    assert "records no physical unit" in capsys.readouterr().err and not (tmp_path / "e.h5ad").exists()


def test_patches_from_the_multiscale_store_match_the_same_image_as_a_tiff(store, tmp_path):
    """The µm patches cut from the store (its 2× scale, chunk by chunk) and from the full-resolution TIFF of the same
    image at the same pixel positions show the same tissue, within a few grey levels (different source levels)."""
    from stguide.data.patches import PatchConfig, extract_patches
    from stguide.data.readers import read, read_anndata

    path, px, _, tif = store
    a = read("spatialdata", str(path), **OPTIONS)
    plain = ad.AnnData(X=a.X, obs=pd.DataFrame({"donor": "D1"}, index=a.obs["spot"].to_numpy()), var=a.var,
                       obsm={"spatial": px})
    plain.write_h5ad(tmp_path / "plain.h5ad")
    b = read_anndata(tmp_path / "plain.h5ad", tif, UM_PER_PX, patient="D1", section="spots")
    cfg = PatchConfig(size_um=100, out_px=32)  # 200 image px → 32: the store's 2× scale is read
    sa, sb = extract_patches(a, cfg, tmp_path / "pa", progress=False), extract_patches(b, cfg, tmp_path / "pb", progress=False)
    pa, pb = sa.take(list(a.obs_names)).astype(float), sb.take(list(b.obs_names)).astype(float)
    assert pa.shape == pb.shape == (N, 32, 32, 3)
    assert np.abs(pa - pb).mean() < 3.0 and np.corrcoef(pa.ravel(), pb.ravel())[0, 1] > 0.99


def test_bad_stores_get_one_clear_error(store, tmp_path, monkeypatch):
    from stguide.data.readers import read

    path = str(store[0])
    with pytest.raises(InputError, match="(?s)records no physical unit .* give um_per_unit"):
        read("spatialdata", path, coordinate_system="microns", patient="D1")
    with pytest.raises(InputError, match="not registered to the coordinate system 'global'"):
        read("spatialdata", path, um_per_unit=1.0, patient="D1")
    with pytest.raises(InputError, match="has no image element 'hne'"):
        read("spatialdata", path, image="hne", **OPTIONS)
    with pytest.raises(InputError, match="either as patient"):
        read("spatialdata", path, coordinate_system="microns", um_per_unit=1.0)
    with pytest.raises(InputError, match="does not exist"):
        read("spatialdata", str(tmp_path / "nope.zarr"), **OPTIONS)
    monkeypatch.setitem(sys.modules, "spatialdata", None)  # as if the extra were not installed
    with pytest.raises(InputError, match=r"stguide\[spatialdata\]"):
        read("spatialdata", path, **OPTIONS)


def test_what_stguide_writes_opens_in_squidpy_as_is(store, tmp_path):
    """The dataset file (and so the experiment's data/dataset.h5ad and `stguide train`'s embeddings.h5ad, written by
    the same write_dataset) is drawn by squidpy's spatial_scatter with the H&E under the spots, without arguments
    beyond the colour."""
    import matplotlib

    matplotlib.use("Agg")
    import squidpy as sq

    from stguide.data import write_dataset
    from stguide.data.readers import read

    write_dataset(read("spatialdata", str(store[0]), **OPTIONS), tmp_path / "d.h5ad")
    a = ad.read_h5ad(tmp_path / "d.h5ad")  # plain anndata
    lib = a.uns["spatial"]["spots"]
    assert set(lib["images"]) == {"hires", "lowres"} and max(lib["images"]["lowres"].shape[:2]) <= 600
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sq.pl.spatial_scatter(a, color="label")
    import matplotlib.pyplot as plt

    ax = plt.gcf().axes[0]
    assert ax.get_images() and ax.collections  # the H&E and the spots
    plt.close("all")
