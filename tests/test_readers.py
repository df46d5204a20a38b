"""Visium outs/ (both tissue-positions formats), generic AnnData, and TIFF reading below full resolution."""
import gzip
import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import tifffile
from PIL import Image

from stguide.data import read_anndata, read_visium
from stguide.data.images import open_level
from stguide.errors import InputError

BARCODES = ["AAAC-1", "AAAG-1", "AAAT-1"]


def _outs(root, new_format: bool):
    outs = root / "outs"
    mtx = outs / "filtered_feature_bc_matrix"
    mtx.mkdir(parents=True)
    m = sp.coo_matrix(np.array([[1, 0], [2, 3], [0, 4]]).T)  # genes × barcodes
    with gzip.open(mtx / "matrix.mtx.gz", "wt") as f:
        f.write("%%MatrixMarket matrix coordinate integer general\n%\n")
        f.write(f"{m.shape[0]} {m.shape[1]} {m.nnz}\n")
        for r, c, v in zip(m.row, m.col, m.data, strict=True):
            f.write(f"{r + 1} {c + 1} {v}\n")
    with gzip.open(mtx / "barcodes.tsv.gz", "wt") as f:
        f.write("\n".join(BARCODES) + "\n")
    with gzip.open(mtx / "features.tsv.gz", "wt") as f:
        f.write("ENSG1\tGENE1\tGene Expression\nENSG2\tGENE2\tGene Expression\n")
    spatial = outs / "spatial"
    spatial.mkdir()
    rows = [[b, 1, i, i, 100 + 50 * i, 200 + 50 * i] for i, b in enumerate(BARCODES)]
    df = pd.DataFrame(rows, columns=["barcode", "in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"])
    if new_format:
        df.to_csv(spatial / "tissue_positions.csv", index=False)
    else:
        df.to_csv(spatial / "tissue_positions_list.csv", index=False, header=False)
    (spatial / "scalefactors_json.json").write_text(json.dumps({"spot_diameter_fullres": 110.0, "tissue_hires_scalef": 0.5}))
    Image.fromarray(np.full((300, 300, 3), 210, np.uint8)).save(spatial / "tissue_hires_image.png")
    Image.fromarray(np.full((600, 600, 3), 200, np.uint8)).save(root / "full.png")
    return outs


@pytest.mark.parametrize("new_format", [True, False])
def test_visium_both_position_formats(tmp_path, new_format):
    outs = _outs(tmp_path, new_format)
    a = read_visium(outs, image=tmp_path / "full.png", patient="P1", section="S1")
    assert a.n_obs == 3 and list(a.var_names) == ["GENE1", "GENE2"]
    assert a.uns["sections"]["S1"]["um_per_px"] == pytest.approx(0.5)  # 55 µm / 110 px
    np.testing.assert_allclose(a.obs["x_px"], [200, 250, 300])  # column → x
    np.testing.assert_allclose(a.obs["y_px"], [100, 150, 200])
    # without the full-resolution image: the hires PNG, positions and µm/px scaled
    h = read_visium(outs, patient="P1", section="S1")
    assert h.uns["sections"]["S1"]["um_per_px"] == pytest.approx(1.0)
    np.testing.assert_allclose(h.obs["x_px"], [100, 125, 150])


def test_visium_missing_scalefactors(tmp_path):
    outs = _outs(tmp_path, True)
    (outs / "spatial" / "scalefactors_json.json").unlink()
    with pytest.raises(InputError, match="scalefactors_json.json"):
        read_visium(outs, patient="P1")


def test_generic_anndata(tmp_path):
    img = tmp_path / "he.png"
    Image.fromarray(np.full((400, 400, 3), 200, np.uint8)).save(img)
    a = ad.AnnData(X=sp.csr_matrix(np.array([[1.0, 2.0], [0.0, 5.0]])), obs=pd.DataFrame({"cls": ["adipose tissue", None]}, index=["s1", "s2"]),
                   var=pd.DataFrame(index=["g1", "g2"]))
    a.obsm["spatial"] = np.array([[100.0, 100.0], [200.0, 300.0]])
    a.write_h5ad(tmp_path / "x.h5ad")
    d = read_anndata(tmp_path / "x.h5ad", img, 0.5, patient="P", section="S", label_key="cls")
    assert d.X.dtype == np.int32 and d.obs["label"].notna().sum() == 1
    assert d.uns["sections"]["S"]["um_per_px"] == 0.5
    with pytest.raises(InputError, match="outside the plausible range"):
        read_anndata(tmp_path / "x.h5ad", img, 25.0, patient="P")
    with pytest.raises(InputError, match="missing"):
        read_anndata(tmp_path / "x.h5ad", img, None, patient="P")


def _gradient(n):
    y, x = np.mgrid[0:n, 0:n]
    return np.stack([(x * 255 // n), (y * 255 // n), np.full_like(x, 128)], -1).astype(np.uint8)


def test_tiled_tiff_is_streamed_below_full_resolution(tmp_path):
    img = _gradient(1024)
    p = tmp_path / "tiled.tif"
    tifffile.imwrite(p, img, tile=(128, 128), photometric="rgb")
    lv = open_level(p, downsample=4.0)
    assert lv.scale == 4.0 and lv.array.shape == (256, 256, 3)
    full = open_level(p, downsample=1.0)
    a, _ = lv.cut(512, 512, 100, 32)
    b, _ = full.cut(512, 512, 100, 32)
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 3


def test_pyramid_tiff_uses_a_coarser_level(tmp_path):
    img = _gradient(1024)
    p = tmp_path / "pyr.tif"
    with tifffile.TiffWriter(p) as tw:
        tw.write(img, tile=(128, 128), photometric="rgb", subifds=1)
        tw.write(img[::2, ::2], tile=(128, 128), photometric="rgb", subfiletype=1)
    lv = open_level(p, downsample=2.5)
    assert lv.scale == 2.0


@pytest.mark.parametrize("layout", ["tiles", "strips"])
def test_a_lazy_level_reads_what_a_decoded_one_does(tmp_path, layout):
    """Read region by region from a bounded cache of decoded tiles (or strips), a lazily opened level gives the
    very patches of the level decoded whole, at the image's edges too, and keeps no more than its cache's cap."""
    img = np.random.default_rng(0).integers(0, 256, (700, 900, 3), dtype=np.uint8)
    p = tmp_path / "lazy.tif"
    tifffile.imwrite(p, img, photometric="rgb", **({"tile": (128, 128)} if layout == "tiles" else {"rowsperstrip": 64}))
    lazy, whole = open_level(p, lazy=True), open_level(p)
    assert lazy.array is None and whole.array is not None
    rng = np.random.default_rng(1)
    for cx, cy in [(0, 0), (900, 700), *rng.uniform(0, 900, (40, 2))]:
        a, fa = lazy.cut(cx, cy, 70, 32)
        b, fb = whole.cut(cx, cy, 70, 32)
        assert np.array_equal(a, b) and fa == fb
    assert 0 < len(lazy.chunk_cache) <= lazy.chunk_cache_cap
    lazy.close()


@pytest.mark.parametrize("layout", ["tiles", "strips"])
def test_a_tiff_level_decoded_on_all_cores_is_the_whole_level(tmp_path, layout):
    """The level decoded with its tiles spread over the cores is the very image tifffile decodes on one."""
    img = np.random.default_rng(2).integers(0, 256, (1000, 600, 3), dtype=np.uint8)
    p = tmp_path / "level.tif"
    tifffile.imwrite(p, img, photometric="rgb", **({"tile": (128, 128)} if layout == "tiles" else {"rowsperstrip": 100}))
    lv = open_level(p)
    assert np.array_equal(lv.array, tifffile.imread(p, maxworkers=1))
    assert np.array_equal(lv.cut(300, 60, 50, 16)[0], open_level(p, lazy=True).cut(300, 60, 50, 16)[0])
    lv.close()


@pytest.mark.parametrize(("compression", "pyramid"), [(None, False), ("jpeg", False), ("jpeg", True)])
def test_a_level_opened_for_its_fields_decodes_only_their_tiles(tmp_path, compression, pyramid):
    """Given the boxes it will cut, a tiled level (full resolution, or a pyramid's coarser level) decodes just the
    tiles they touch: its patches are the very patches of the level decoded whole (at the edges too), the tiles no
    box touches are never decoded, and a read outside the boxes is refused rather than returning blank pixels."""
    img = np.random.default_rng(4).integers(0, 256, (1000, 1300, 3), dtype=np.uint8)
    p = tmp_path / "fields.tif"
    with tifffile.TiffWriter(p) as tw:
        tw.write(img, tile=(128, 128), photometric="rgb", compression=compression, subifds=int(pyramid))
        if pyramid:
            tw.write(img[::2, ::2], tile=(128, 128), photometric="rgb", compression=compression, subfiletype=1)
    centres = np.array([[200.5, 150.25], [1290.0, 990.0], [640.0, 700.0], [3.0, 990.0]])
    half, ds = 60.0, 2.0 if pyramid else 1.0
    part = open_level(p, downsample=ds, fields=np.hstack([centres - half, centres + half]))
    whole = open_level(p, downsample=ds)
    assert part.scale == whole.scale == ds
    assert part.tiles is not None and 0 < part.tiles.sum() < part.tiles.size
    for cx, cy in centres:
        a, fa = part.cut(cx, cy, half, 32)
        b, fb = whole.cut(cx, cy, half, 32)
        assert np.array_equal(a, b) and fa == fb
    assert not part.array[:128, 512 // int(ds) : 640 // int(ds)].any()  # far from every box: never decoded
    with pytest.raises(RuntimeError, match="outside the fields"):
        part.cut(600, 60, half, 32)


def test_shared_patches_of_a_level_decoded_in_part_are_those_of_the_whole_level(tmp_path):
    """Spots in an L at the edge of the tissue share one resample whose box reaches a tile no field touches (never
    decoded): the group is cut from its fields alone and its patches are those of the level decoded whole."""
    img = np.random.default_rng(5).integers(0, 256, (1000, 1300, 3), dtype=np.uint8)
    p = tmp_path / "l.tif"
    tifffile.imwrite(p, img, tile=(128, 128), photometric="rgb")
    row = [(x, y) for x in range(400, 720, 20) for y in (400, 430)]
    col = [(x, y) for x in (400, 430) for y in range(460, 720, 20)]
    centres = np.array(row + col, dtype=float) + 0.3
    half = 60.0  # 120 level px → 96 px
    part = open_level(p, fields=np.hstack([centres - half, centres + half]))
    whole = open_level(p)
    assert not part.tiles[4, 4]  # inside the L's box, under no field
    groups = part.sharing_groups(centres[:, 0], centres[:, 1], half, 96)
    assert [list(g) for g in groups] == [list(g) for g in whole.sharing_groups(centres[:, 0], centres[:, 1], half, 96)]
    assert max(map(len, groups)) > 20
    for g in groups:
        a, fa = part.cut_group(centres[g, 0], centres[g, 1], half, 96)
        b, fb = whole.cut_group(centres[g, 0], centres[g, 1], half, 96)
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(fa, fb)


def test_a_corrupt_tile_names_the_file(tmp_path):
    img = np.random.default_rng(3).integers(0, 256, (1024, 256, 3), dtype=np.uint8)
    p = tmp_path / "cut.tif"
    tifffile.imwrite(p, img, photometric="rgb", tile=(128, 128), compression="zlib")
    with tifffile.TiffFile(p) as tf:
        page = tf.pages[0]
        offset, count = page.dataoffsets[-1], page.databytecounts[-1]
    with open(p, "r+b") as f:  # the last tile's compressed bytes overwritten with garbage
        f.seek(offset)
        f.write(b"\xff" * count)
    with pytest.raises(InputError, match="cut.tif"):
        open_level(p)
    with pytest.raises(InputError, match="cut.tif"):  # decoding only the tiles some fields touch, the bad one among them
        open_level(p, fields=np.array([[200.0, 950.0, 250.0, 1000.0]]))
