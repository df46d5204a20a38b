"""What a user opens or reads: a dataset in scanpy's spatial layout, and logs that hold lines, not bar redraws."""
import warnings

import anndata as ad
import numpy as np
import pytest


def test_dataset_opens_in_scanpy_as_is(synthetic, tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc

    from stguide.data import write_dataset

    write_dataset(synthetic, tmp_path / "d.h5ad")
    a = ad.read_h5ad(tmp_path / "d.h5ad")  # plain anndata, no stguide reader
    np.testing.assert_array_equal(a.obsm["spatial"], a.obs[["x_px", "y_px"]].to_numpy())
    assert set(a.uns["spatial"]) == set(a.obs["section"].astype(str))
    for section, lib in a.uns["spatial"].items():
        img, sf = lib["images"]["lowres"], lib["scalefactors"]
        info = a.uns["sections"][section]
        assert img.dtype == np.uint8 and max(img.shape[:2]) <= max(info["image_width"], info["image_height"])
        assert sf["tissue_lowres_scalef"] == pytest.approx(img.shape[1] / info["image_width"], rel=0.01)  # the image, unpadded
        assert sf["tissue_hires_scalef"] == pytest.approx(lib["images"]["hires"].shape[0] / info["image_height"], rel=0.01)
        assert sf["spot_diameter_fullres"] == pytest.approx(info["spot_diameter_um"] / info["um_per_px"])
    sub = a[a.obs["section"] == "P1S1"].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = sc.pl.spatial(sub, library_id="P1S1", color="label", show=False)
    assert len(axes) == 1 and axes[0].get_images()  # the H&E is drawn under the spots


def test_training_logs_one_line_per_epoch_when_stdout_is_not_a_terminal(synthetic, capfd):
    """pytest's capture is not a terminal: scvi-tools and Lightning must not write their bars there, only lines."""
    from stguide.genes import get_encoder
    from stguide.progress import MAX_EPOCH_LINES

    get_encoder("scvi", scvi={"max_epochs": 45, "n_latent": 4}, n_top_genes=50).fit(synthetic, progress=True)
    out, err = capfd.readouterr()
    lines = [ln for ln in out.splitlines() if "epoch" in ln]
    assert "\r" not in out and "\r" not in err and "it/s" not in out + err  # no progress-bar redraws anywhere
    assert 1 < len(lines) <= MAX_EPOCH_LINES and lines[-1].startswith("scvi (192 spots): epoch 45/45 · train_loss")
    get_encoder("scvi", scvi={"max_epochs": 3, "n_latent": 4}, n_top_genes=50).fit(synthetic, progress=False)
    out, err = capfd.readouterr()
    assert "epoch" not in out + err  # progress=False: silent
