"""Applying a trained model without ST: bundles (export, load, checksums) and whole-slide prediction."""
import json

import anndata as ad
import numpy as np
import pytest

from stguide.errors import InputError

RUN_YAML = """
data: {format: synthetic, options: {n_patients: 3, sections_per_patient: 1, spots_per_section: 64, seed: 0}}
patches: {size_um: 100, out_px: 32}
genes: {n_top_genes: 200, pca: {n_pcs: 8}}
contrastive: {backbone: resnet10t, init: none, trunk: frozen, views: 2, epochs: 5, batch_size: 32, embed_dim: 16}
probe: {features: head}
methods:
  - {name: trunk, probe: {features: backbone}}
  - {name: centred, probe: {features: backbone, centre: patient}}
  - {name: guided, gene_encoder: pca, loss: clip}
ablation: false
report: {umap: false, image_audit: false, target_audit: false}
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from stguide.evaluate.config import load_config
    from stguide.evaluate.experiment import run_experiment

    d = tmp_path_factory.mktemp("apply")
    (d / "c.yaml").write_text(RUN_YAML)
    run_experiment(load_config(d / "c.yaml"), d / "run", progress=False)
    return d / "run"


@pytest.mark.parametrize("method", ["trunk", "guided"])
def test_a_bundle_gives_the_runs_probabilities(run, method, tmp_path):
    """Exported, loaded (safetensors and plain arrays, no pickle) and applied to the held-out patient's patches, a
    bundle reproduces the class probabilities the run's probe gave them."""
    from stguide.apply.bundle import export_bundle, load_bundle
    from stguide.data.patches import PatchStore

    out = export_bundle(run, method, tmp_path / "bundle", fold="P2")
    b = load_bundle(out)
    assert b.manifest["fold"] == "P2" and b.manifest["trained_on"]["patients"] == ["P1", "P3"]
    assert "P2 was held out" in (out / "MODEL_CARD.md").read_text()
    assert b.manifest["trunk_source"]["copied"] is True  # a random trunk exists nowhere else
    assert b.manifest["patch"]["size_um"] == 100 and b.manifest["patch"]["out_px"] == 32 and b.manifest["stguide"]
    cell = next((run / "folds" / "P2").glob(f"{method}/**/predictions.npz"))
    pred = np.load(cell, allow_pickle=False)
    store = PatchStore(next((run / "patches").iterdir()))
    patches = store.take(list(pred["obs_names"]))
    proba = b.proba(b.features(patches))
    assert b.classes == list(pred["classes"])
    from stguide.data.model import read_dataset
    from stguide.evaluate.cache import data_key

    adata = read_dataset(run / "data" / "dataset.h5ad")
    fp = b.manifest["trained_on"]["fingerprint"]  # the training spots' content key and the patches' key
    assert fp == {"spots": data_key(adata[adata.obs["patient"].isin(["P1", "P3"]).to_numpy()]), "patches": store.meta["fingerprint"]}
    np.testing.assert_allclose(proba, pred["proba"], atol=2e-3)
    assert (np.array(b.classes)[proba.argmax(1)] == pred["y_pred"]).mean() > 0.97


def test_a_pretrained_trunk_is_referenced_by_hash_not_copied(tmp_path):
    """A bundle whose frozen trunk came from outside (here a weight file) holds the trunk's name, init and tensors'
    sha256 instead of its weights; it loads with the same weights and is refused with others. A random trunk, which
    exists nowhere else, is copied."""
    import timm
    import torch
    from safetensors import safe_open

    from stguide.apply.bundle import export_bundle, load_bundle
    from stguide.evaluate.config import load_config
    from stguide.evaluate.experiment import run_experiment

    torch.manual_seed(1)
    weights = tmp_path / "trunk.pt"
    torch.save(timm.create_model("resnet10t", num_classes=0).state_dict(), weights)
    yaml = RUN_YAML.replace("init: none", f"init: 'file:{weights}'").replace("epochs: 5", "epochs: 2")
    (tmp_path / "c.yaml").write_text(yaml.split("methods:")[0] + "methods:\n  - {name: guided, gene_encoder: pca, loss: clip}\nablation: false\n"
                                     "report: {umap: false, image_audit: false, target_audit: false}\n")
    run_experiment(load_config(tmp_path / "c.yaml"), tmp_path / "run", progress=False)
    out = export_bundle(tmp_path / "run", "guided", tmp_path / "bundle", fold="P2")
    src = json.loads((out / "manifest.json").read_text())["trunk_source"]
    assert src["copied"] is False and src["backbone"] == "resnet10t" and src["file"]["path"] == str(weights.resolve())
    with safe_open(str(out / "image_model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any(k.startswith("prefix.") for k in keys)  # the head only
    b = load_bundle(out)
    pred = np.load(next((tmp_path / "run" / "folds" / "P2").glob("guided/**/predictions.npz")), allow_pickle=False)
    from stguide.data.patches import PatchStore

    patches = PatchStore(next((tmp_path / "run" / "patches").iterdir())).take(list(pred["obs_names"]))
    np.testing.assert_allclose(b.proba(b.features(patches)), pred["proba"], atol=2e-3)
    torch.manual_seed(2)
    torch.save(timm.create_model("resnet10t", num_classes=0).state_dict(), weights)  # other weights at the same path
    with pytest.raises(InputError, match="references the trunk resnet10t .*weights found here hash to"):
        load_bundle(out)


def test_a_damaged_bundle_is_refused(run, tmp_path):
    from stguide.apply.bundle import export_bundle, load_bundle

    out = export_bundle(run, "guided", tmp_path / "b")
    (out / "probe.npz").write_bytes((out / "probe.npz").read_bytes()[:-10] + b"0123456789")
    with pytest.raises(InputError, match="(?s)probe.npz.*checksum"):
        load_bundle(out)
    (out / "probe.npz").unlink()
    with pytest.raises(InputError, match="(?s)probe.npz.*missing"):
        load_bundle(out)
    with pytest.raises(InputError, match="no method 'guidedd'"):
        export_bundle(run, "guidedd", tmp_path / "c")
    from stguide.apply.refit import refit_all

    for make in (lambda: export_bundle(run, "centred", tmp_path / "d"), lambda: refit_all(run, "centred", progress=False)):
        with pytest.raises(InputError, match="centred features"):
            make()
    assert not (run / "refit" / "centred").exists()  # refused before anything was fitted


def _pyramid(path, um_per_px=0.5, size=1536, seed=0):
    """A pyramidal, tiled TIFF: H&E-like tissue discs (pink/purple) on white glass, with µm/px in its tags."""
    import tifffile

    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 242, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    tissue = ((xx - 500) ** 2 + (yy - 520) ** 2 < 330 ** 2) | ((xx - 1150) ** 2 + (yy - 1100) ** 2 < 260 ** 2)
    noise = rng.integers(-25, 25, (size, size, 1))
    img[tissue] = np.clip(np.array([200, 110, 170]) + noise[tissue], 0, 255).astype(np.uint8)
    with tifffile.TiffWriter(path) as tw:
        tw.write(img, tile=(256, 256), subifds=2, photometric="rgb", resolution=(1e4 / um_per_px, 1e4 / um_per_px),
                 resolutionunit="CENTIMETER")
        for k in (2, 4):
            tw.write(img[::k, ::k], tile=(256, 256), subfiletype=1, photometric="rgb")
    return tissue


def test_predict_tiles_only_tissue_and_its_outputs_agree(run, tmp_path):
    """On a synthetic pyramidal TIFF: only tissue tiles are embedded (µm/px read from the slide), and the AnnData,
    the GeoJSON and the area fractions of the map's legend describe the same tiles and classes."""
    import anndata as ad

    from stguide.apply.bundle import export_bundle
    from stguide.apply.predict import predict_slide

    tissue = _pyramid(tmp_path / "slide.tif")
    bundle = export_bundle(run, "guided", tmp_path / "bundle")
    summary = predict_slide(tmp_path / "slide.tif", bundle, tmp_path / "out", batch_size=16, progress=False)
    assert summary["um_per_px"] == pytest.approx(0.5) and summary["um_per_px_source"] == "slide metadata"
    a = ad.read_h5ad(tmp_path / "out" / summary["table"])
    side = 100 / 0.5
    assert a.n_obs == summary["n_tiles"] > 10
    for x, y in a.obsm["spatial"]:  # every tile's centre lies on tissue, and no tile is off the tissue discs
        assert tissue[int(y), int(x)]
    assert (a.obs["tissue_fraction"] >= 0.5).all()
    assert np.allclose(a.obsm["spatial"] % side, side / 2)
    probs = a.obs[[f"p_{c}" for c in a.obs["predicted"].cat.categories]].to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-6)
    gj = json.loads((tmp_path / "out" / "tiles.geojson").read_text())
    assert len(gj["features"]) == a.n_obs
    assert [f["properties"]["classification"]["name"] for f in gj["features"]] == list(a.obs["predicted"].astype(str))
    ring = np.array(gj["features"][0]["geometry"]["coordinates"][0])
    assert np.allclose(ring[:4].mean(0), a.obsm["spatial"][0]) and np.isclose(np.ptp(ring[:, 0]), side)
    fr = summary["area_fraction"]
    assert fr == pytest.approx({c: float((a.obs["predicted"] == c).mean()) for c in fr})
    assert (tmp_path / "out" / "map.png").stat().st_size > 5_000
    # predicted expression of genes from the bundle's reference, and a map of one of them
    genes = sorted(json.loads((bundle / "manifest.json").read_text())["reference"]["genes"])[:2]
    predict_slide(tmp_path / "slide.tif", bundle, tmp_path / "out2", batch_size=16, genes=genes[:1], map_gene=genes[1], progress=False)
    b = ad.read_h5ad(tmp_path / "out2" / "guided_tiles.h5ad")
    assert {f"expr_{g}" for g in genes} <= set(b.obs) and np.isfinite(b.obs[f"expr_{genes[0]}"]).all()
    assert (tmp_path / "out2" / f"map_{genes[1]}.png").is_file()
    with pytest.raises(InputError, match="not in the model's reference panel"):
        predict_slide(tmp_path / "slide.tif", bundle, tmp_path / "out3", genes=["NOPE1"], progress=False)


def test_predict_reads_an_aperio_svs_through_openslide(run, tmp_path):
    """The same slide as an Aperio SVS (OpenSlide reads it: µm/px from its description, its own pyramid level) gives
    the very tiles and probabilities of the TIFF read through tifffile."""
    import openslide
    import tifffile

    from stguide.apply.bundle import export_bundle
    from stguide.apply.predict import predict_slide

    _pyramid(tmp_path / "slide.tif")
    with tifffile.TiffFile(tmp_path / "slide.tif") as tf:
        levels = [lv.asarray() for lv in tf.series[0].levels]
    h, w = levels[0].shape[:2]
    with tifffile.TiffWriter(tmp_path / "slide.svs") as tw:
        for i, img in enumerate(levels):
            head = f"Aperio Image Library v12.0.0\r\n{w}x{h} [0,0 {w}x{h}] (256x256) RAW/RGB|AppMag = 20|MPP = 0.5"
            tw.write(img, tile=(256, 256), photometric="rgb", metadata=None,
                     description=head if i == 0 else f"Aperio Image Library v12.0.0\r\n{w}x{h} -> {img.shape[1]}x{img.shape[0]} - |")
    with openslide.OpenSlide(str(tmp_path / "slide.svs")) as s:
        assert s.properties["openslide.vendor"] == "aperio" and s.level_count == len(levels)
    bundle = export_bundle(run, "guided", tmp_path / "bundle")
    a = predict_slide(tmp_path / "slide.tif", bundle, tmp_path / "a", progress=False)
    assert a["n_tiles"] > 10
    b = predict_slide(tmp_path / "slide.svs", bundle, tmp_path / "b", progress=False)
    assert b["um_per_px"] == pytest.approx(0.5) and b["um_per_px_source"] == "slide metadata"
    ta, tb = ad.read_h5ad(tmp_path / "a" / a["table"]), ad.read_h5ad(tmp_path / "b" / b["table"])
    np.testing.assert_array_equal(ta.obsm["spatial"], tb.obsm["spatial"])
    cols = [c for c in ta.obs if c.startswith("p_")]
    np.testing.assert_allclose(ta.obs[cols].to_numpy(), tb.obs[cols].to_numpy(), atol=1e-5)


def test_predict_refuses_a_slide_without_a_scale_and_an_unreadable_one(run, tmp_path):
    from PIL import Image

    from stguide.apply.bundle import export_bundle
    from stguide.apply.predict import predict_slide

    bundle = export_bundle(run, "trunk", tmp_path / "bundle")
    Image.fromarray(np.full((300, 300, 3), 200, np.uint8)).save(tmp_path / "plain.png")
    with pytest.raises(InputError, match=r"(?s)plain.png.*no µm per pixel.*--um-per-px"):
        predict_slide(tmp_path / "plain.png", bundle, tmp_path / "o", progress=False)
    (tmp_path / "bad.svs").write_bytes(b"not a slide")
    with pytest.raises(InputError, match="(?s)bad.svs.*cannot be read"):
        predict_slide(tmp_path / "bad.svs", bundle, tmp_path / "o", um_per_px=0.5, progress=False)


def test_retrieved_expression_follows_the_class_markers(run):
    """Image → expression, leave-one-patient-out: on synthetic data, the expression retrieved from the training
    spots nearest in the joint space correlates positively with the measured expression of the class-marker genes
    (the generator's programs) in every held-out patient; so does the ridge baseline."""
    from stguide.apply.expression import expression_lopo, expression_table
    from stguide.data.model import read_dataset

    markers = sorted({g for v in read_dataset(run / "data" / "dataset.h5ad").uns["synthetic_markers"].values() for g in v})
    res = expression_lopo(run, "guided", n_hvg=20, markers=markers, k=20, progress=False)
    assert sorted(res["folds"]) == ["P1", "P2", "P3"]
    for r in res["folds"].values():
        for p in ("retrieval", "ridge"):
            assert np.nanmean([r[p]["pooled"][g] for g in markers]) > 0.02, (p, r[p]["hvg_mean_pooled"])
            assert set(r[p]["per_slide"]) == set(r["genes"])
    assert "retrieval" in expression_table(res)
    trunk = expression_lopo(run, "trunk", n_hvg=10, markers=markers[:3], progress=False)
    assert all("retrieval" not in r and "ridge" in r for r in trunk["folds"].values())  # no joint space without a head


def test_refit_all_trains_on_every_patient_and_is_cached(run, tmp_path):
    """``--refit-all``: the method retrained with the run's settings on all patients (gene encoder, head and probe),
    exported as a bundle whose manifest and card say nothing was held out; a second call reloads the cached refit."""
    from stguide.apply.bundle import load_bundle
    from stguide.cli import main
    from stguide.data.model import read_dataset
    from stguide.data.patches import PatchStore
    from stguide.evaluate.cache import data_key
    from stguide.evaluate.metrics import classification_metrics
    from stguide.genes import load_encoder

    main(["export", str(run), "--method", "guided", "--refit-all", "--out", str(tmp_path / "b"), "--no-progress"])
    b = load_bundle(tmp_path / "b")
    assert b.manifest["fold"] == "all" and b.manifest["trained_on"]["held_out"] is None
    assert b.manifest["trained_on"]["patients"] == ["P1", "P2", "P3"]
    assert "no patient was held out" in (tmp_path / "b" / "MODEL_CARD.md").read_text()
    assert b.manifest["trained_on"]["fingerprint"]["spots"] == data_key(read_dataset(run / "data" / "dataset.h5ad"))
    audit = json.loads((run / "refit" / "guided" / "leakage_audit.json").read_text())
    assert audit["gene_encoder"]["patients"] == audit["contrastive"]["patients"] == ["P1", "P2", "P3"]
    assert sorted(load_encoder(run / "refit" / "genes" / "pca").fitted_on["patients"]) == ["P1", "P2", "P3"]
    weights = next((run / "refit" / "guided").glob("*.safetensors"))
    stamp = weights.stat().st_mtime_ns
    main(["export", str(run), "--method", "guided", "--refit-all", "--out", str(tmp_path / "c"), "--no-progress"])
    assert weights.stat().st_mtime_ns == stamp  # reloaded, not retrained
    # its probe saw every labelled patch: in-sample it does better than the fold model does on its held-out patient
    adata = read_dataset(run / "data" / "dataset.h5ad")
    store = PatchStore(next((run / "patches").iterdir()))
    lab = adata.obs["label"].astype(str) != "undetermined"
    names = [n for n in adata.obs_names[lab.to_numpy()] if n in set(store.obs_names)]
    pred = np.array(b.classes)[b.proba(b.features(store.take(names))).argmax(1)]
    fold_bacc = json.loads((run / "results.json").read_text())["methods"]["guided"]["mean"]["bacc"]
    assert classification_metrics(adata.obs.loc[names, "label"].astype(str).to_numpy(), pred)["bacc"] > fold_bacc


def test_batched_normalisation_matches_the_per_patch_transform():
    """The batch path predict and the bundle use gives the very numbers of the per-patch transform the run trained
    with, already in the channels-last layout."""
    import torch

    from stguide.contrastive.encoders import make_transform

    t = make_transform((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    p = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    b = t.batch(p)
    assert torch.equal(b, torch.stack([t(x) for x in p])) and b.is_contiguous(memory_format=torch.channels_last)


def test_predict_tile_table_is_lazyslide_named_and_squidpy_ready(run, tmp_path):
    """The tile table is `{model}_tiles`: features in X, tile centres in obsm['spatial'], the tile size and µm/px in
    uns['tile_spec'], and the slide's thumbnail as squidpy's library, so spatial_scatter draws the classes on the slide."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import squidpy as sq

    from stguide.apply.bundle import export_bundle
    from stguide.apply.predict import predict_slide

    _pyramid(tmp_path / "slide.tif")
    bundle = export_bundle(run, "guided", tmp_path / "bundle")
    s = predict_slide(tmp_path / "slide.tif", bundle, tmp_path / "out", progress=False)
    assert s["table"] == "guided_tiles.h5ad"
    t = ad.read_h5ad(tmp_path / "out" / "guided_tiles.h5ad")
    assert t.X.shape == (s["n_tiles"], 16)  # the probed features (the 16-d head)
    assert t.uns["tile_spec"]["width"] == pytest.approx(200.0) and t.uns["tile_spec"]["mpp"] == pytest.approx(0.5)
    lib = t.uns["spatial"]["slide"]
    assert lib["scalefactors"]["spot_diameter_fullres"] == pytest.approx(200.0)
    assert lib["scalefactors"]["tissue_hires_scalef"] == pytest.approx(lib["images"]["hires"].shape[1] / 1536, rel=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sq.pl.spatial_scatter(t, color="predicted", shape="square")
    ax = plt.gcf().axes[0]
    assert ax.get_images() and ax.collections
    plt.close("all")


def test_predict_adds_tiles_and_their_table_to_a_spatialdata_store(run, tmp_path):
    """--spatialdata: into a new store (with the slide's thumbnail scaled onto the squares), and into the store a slide
    comes from (the squares take its image's transformations), as squares annotated by the `{model}_tiles` table."""
    pytest.importorskip("spatialdata")
    import spatialdata as sd
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Scale, get_transformation

    from stguide.apply.bundle import export_bundle
    from stguide.apply.predict import predict_slide

    _pyramid(tmp_path / "slide.tif")
    bundle = export_bundle(run, "guided", tmp_path / "bundle")
    s = predict_slide(tmp_path / "slide.tif", bundle, tmp_path / "out", spatialdata=tmp_path / "new.zarr", progress=False)
    new = sd.read_zarr(str(tmp_path / "new.zarr"))
    table, squares = new.tables["guided_tiles"], new.shapes["guided_tiles_squares"]
    assert table.uns["spatialdata_attrs"]["region"] == "guided_tiles_squares" and len(squares) == s["n_tiles"]
    c = squares.geometry.iloc[0].centroid
    np.testing.assert_allclose([c.x, c.y], table.obsm["spatial"][0])
    np.testing.assert_allclose(squares.geometry.iloc[0].bounds[2] - squares.geometry.iloc[0].bounds[0], 200.0)
    assert list(table.obs["predicted"]) == list(ad.read_h5ad(tmp_path / "out" / s["table"]).obs["predicted"])
    assert "guided_tiles_slide" in new.images
    # a slide that is an image element of a store, registered at 0.5 µm per pixel to a µm coordinate system
    import tifffile

    img = tifffile.imread(tmp_path / "slide.tif")
    to_um = Scale([0.5, 0.5], axes=("x", "y"))
    sd.SpatialData(images={"he": Image2DModel.parse(img.transpose(2, 0, 1), dims=("c", "y", "x"), scale_factors=[2],
                                                    transformations={"microns": to_um})}).write(str(tmp_path / "s.zarr"))
    element = tmp_path / "s.zarr" / "images" / "he"
    with pytest.raises(InputError, match="records no µm per pixel"):
        predict_slide(element, bundle, tmp_path / "o2", progress=False)
    s2 = predict_slide(element, bundle, tmp_path / "o2", um_per_px=0.5, spatialdata=tmp_path / "s.zarr", progress=False)
    assert s2["n_tiles"] == s["n_tiles"]  # the same tiles as from the TIFF
    back = sd.read_zarr(str(tmp_path / "s.zarr"))
    assert set(back.images) == {"he"} and "guided_tiles" in back.tables
    t = get_transformation(back.shapes["guided_tiles_squares"], get_all=True)
    assert list(t) == ["microns"] and np.allclose(t["microns"].to_affine_matrix(("x", "y"), ("x", "y")),
                                                  to_um.to_affine_matrix(("x", "y"), ("x", "y")))
    # predicting again replaces the elements
    predict_slide(element, bundle, tmp_path / "o3", um_per_px=0.5, spatialdata=tmp_path / "s.zarr", progress=False)
    assert len(sd.read_zarr(str(tmp_path / "s.zarr")).shapes["guided_tiles_squares"]) == s["n_tiles"]


def test_predict_many_slides_one_job_each_through_the_local_executor(run, tmp_path, capsys):
    """Two slides with --executor local --workers 2: each written to OUT/<slide name>/ by its own job, with the tiles
    and probabilities of a one-slide serial prediction; a second slide of the same name is refused before any work."""
    import shutil

    from stguide import cli
    from stguide.apply.bundle import export_bundle
    from stguide.apply.predict import predict_slide

    _pyramid(tmp_path / "a.tif")
    _pyramid(tmp_path / "b.tif", seed=1)
    bundle = export_bundle(run, "guided", tmp_path / "bundle")
    assert cli.main(["predict", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "--model", str(bundle), "--out", str(tmp_path / "many"),
                     "--executor", "local", "--workers", "2", "--no-progress"]) == 0
    assert "a.tif:" in capsys.readouterr().out
    listed = json.loads((tmp_path / "many" / "slides.json").read_text())
    assert sorted(listed) == [str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]
    one = predict_slide(tmp_path / "b.tif", bundle, tmp_path / "one", progress=False)
    x, y = ad.read_h5ad(tmp_path / "many" / "b" / one["table"]), ad.read_h5ad(tmp_path / "one" / one["table"])
    np.testing.assert_array_equal(x.obsm["spatial"], y.obsm["spatial"])
    cols = [c for c in x.obs if c.startswith("p_")]
    np.testing.assert_allclose(x.obs[cols].to_numpy(), y.obs[cols].to_numpy(), atol=1e-5)
    (tmp_path / "other").mkdir()
    shutil.copy(tmp_path / "a.tif", tmp_path / "other" / "a.tif")
    assert cli.main(["predict", str(tmp_path / "a.tif"), str(tmp_path / "other" / "a.tif"), "--model", str(bundle),
                     "--out", str(tmp_path / "twice")]) == 2
    assert "several slides would write to the folder 'a'" in capsys.readouterr().err
    assert not (tmp_path / "twice").exists()
    from PIL import Image  # a slide of unknown scale stops the whole run before any slide is predicted

    Image.new("RGB", (600, 600), (240, 200, 220)).save(tmp_path / "noscale.png")
    assert cli.main(["predict", str(tmp_path / "a.tif"), str(tmp_path / "noscale.png"), "--model", str(bundle),
                     "--out", str(tmp_path / "unscaled")]) == 2
    err = capsys.readouterr().err
    assert "noscale.png" in err and "records no µm per pixel" in err and "--um-per-px" in err
    assert not (tmp_path / "unscaled").exists()
