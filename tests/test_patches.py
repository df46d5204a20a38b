"""Patches are cut by physical size, cached by fingerprint, and never pad silently."""
import numpy as np
import pytest
from PIL import Image

from stguide.data.model import SectionInfo, combine_sections, make_section
from stguide.data.patches import PatchConfig, PatchStore, extract_patches
from stguide.errors import InputError


def _stripes(path, um_per_px, size_um=400.0, period_um=40.0):
    n = int(size_um / um_per_px)
    x = np.arange(n) * um_per_px
    row = ((x // (period_um / 2)) % 2 * 200 + 30).astype(np.uint8)
    img = np.repeat(np.repeat(row[None, :, None], n, 0), 3, 2)
    Image.fromarray(img).save(path)
    return n


def _dataset(tmp_path, ums=(0.5, 1.0), at_um=(200.0, 200.0)):
    parts = []
    for i, um in enumerate(ums):
        p = tmp_path / f"s{i}.png"
        n = _stripes(p, um)
        info = SectionInfo(f"S{i}", f"P{i}", str(p), um, 100.0, n, n)
        parts.append(make_section(np.ones((1, 2)), ["a", "b"], ["s1"], info=info,
                                  x_px=[at_um[0] / um], y_px=[at_um[1] / um], labels=["invasive cancer"],
                                  label_source="pathologist", file=p))
    return combine_sections(parts)


def test_same_physical_field_at_different_resolutions(tmp_path):
    a = _dataset(tmp_path)
    store = extract_patches(a, PatchConfig(160, 32), tmp_path / "c", progress=False)
    p0, p1 = store[0].astype(float), store[1].astype(float)
    assert np.abs(p0 - p1).mean() < 10  # the same stripes, though pixel sizes differ 2×
    # a pixel-count crop would show twice as many stripes in the 0.5 µm/px image: check the period is physical
    profile = (p0[16, :, 0] > 115).astype(int)
    assert 7 <= np.abs(np.diff(profile)).sum() <= 9  # 160 µm / 20 µm half-period = 8 transitions


def test_a_patch_is_pillows_antialiased_resize_of_its_field(tmp_path):
    """The cut uses torch's uint8 kernel of Pillow's antialiased bilinear filter: away from the patch's border
    (where Pillow reads past the field's edge and the cut does not) it is Pillow's resize to within one grey level."""
    from pathlib import Path

    from stguide.data.level import Level

    img = np.random.default_rng(0).integers(0, 256, (600, 600, 3), dtype=np.uint8)
    level = Level(Path("x"), 2.0, (1200, 1200), array=img)  # level pixels are 2 full-resolution pixels
    patch, outside = level.cut(600.4, 599.8, 400.0, 224)  # corner 100.2, 99.9 level px: rounds to 100, 100
    want = np.asarray(Image.fromarray(img).resize((224, 224), Image.Resampling.BILINEAR, box=(100, 100, 500, 500)))
    assert outside == 0.0 and patch.shape == (224, 224, 3) and patch.dtype == np.uint8
    assert np.abs(patch.astype(int) - want)[1:-1, 1:-1].max() <= 1


def test_cache_reused_and_invalidated(tmp_path):
    a = _dataset(tmp_path)
    s1 = extract_patches(a, PatchConfig(160, 32), tmp_path / "c", progress=False)
    first = s1.take(s1.obs_names).copy()
    mtime = (s1.path / "patches.npy").stat().st_mtime_ns
    s2 = extract_patches(a, PatchConfig(160, 32), tmp_path / "c", progress=False)
    assert s2.path == s1.path and (s2.path / "patches.npy").stat().st_mtime_ns == mtime
    s3 = extract_patches(a, PatchConfig(120, 32), tmp_path / "c", progress=False)
    assert s3.path != s1.path
    s4 = extract_patches(a, PatchConfig(160, 32, stain_norm="macenko"), tmp_path / "c", progress=False)
    assert s4.path != s1.path
    # the image's content (not its timestamp) is in the fingerprint
    _stripes(tmp_path / "s0.png", 0.5, period_um=60.0)
    s5 = extract_patches(a, PatchConfig(160, 32), tmp_path / "c", progress=False)
    assert s5.path != s1.path
    assert not np.array_equal(s5[0], first[0]) and np.array_equal(s5[1], first[1])  # only section 0 changed
    # the earlier cache is left as it was: reopened, it still holds the patches of the old image
    old = PatchStore(s1.path)
    assert old.obs_names == s1.obs_names and np.array_equal(old.take(old.obs_names), first)
    # 160 and 160.0 µm are one setting and one cache
    assert extract_patches(a, PatchConfig(160.0, 32), tmp_path / "c", progress=False).path == s5.path


def test_a_store_finds_spots_by_name_and_names_the_one_it_lacks(tmp_path):
    import pandas as pd

    a = _dataset(tmp_path)
    store = extract_patches(a, PatchConfig(160, 32), tmp_path / "c", progress=False)
    asked = np.asarray(pd.Index([store.obs_names[1], "no-such-spot", store.obs_names[0]]))  # object dtype, as obs_names
    assert store.has(asked).tolist() == [True, False, True]
    assert store.indices(asked[[2, 0]]).tolist() == [0, 1]
    with pytest.raises(InputError, match="no-such-spot") as e:
        store.indices(asked)
    assert e.value.file == str(store.path) and "extract patches" in e.value.fix


def test_border_spot_is_padded_and_flagged_or_raises(tmp_path):
    a = _dataset(tmp_path, at_um=(30.0, 200.0))
    store = extract_patches(a, PatchConfig(160, 32, outside="pad"), tmp_path / "c", progress=False)
    assert (store.outside > 0.2).all() and store.meta["n_padded"] == 2
    assert (store[0][:, :4] == 255).all()  # the padded part is white
    with pytest.raises(InputError, match="leaves the image"):
        extract_patches(a, PatchConfig(160, 32, outside="raise"), tmp_path / "d", progress=False)
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())  # nothing left behind


def test_jpeg_decoded_below_full_resolution(tmp_path):
    p = tmp_path / "big.jpg"
    Image.fromarray(np.full((2000, 2000, 3), 180, np.uint8)).save(p, quality=80)
    info = SectionInfo("S", "P", str(p), 0.5, 100.0, 2000, 2000)
    a = combine_sections([make_section(np.ones((1, 1)), ["g"], ["s"], info=info, x_px=[1000], y_px=[1000], file=p)])
    store = extract_patches(a, PatchConfig(200, 50), tmp_path / "c", progress=False)  # 400 px → 50 px: 8× coarser
    assert store.meta["sections"]["S"]["read_scale"] == 8.0


def test_a_damaged_patch_cache_is_rebuilt_never_read(tmp_path):
    from stguide.errors import DataWarning

    a = _dataset(tmp_path)
    s1 = extract_patches(a, PatchConfig(160, 32), tmp_path / "c", progress=False)
    first = s1.take(s1.obs_names).copy()
    f = s1.path / "patches.npy"
    f.write_bytes(f.read_bytes()[:200])  # cut short
    with pytest.warns(DataWarning, match="patches.npy"):
        s2 = extract_patches(a, PatchConfig(160, 32), tmp_path / "c", progress=False)
    assert s2.path == s1.path and np.array_equal(s2.take(s2.obs_names), first)


def test_a_sharded_store_holds_the_same_patches_and_trains_the_same_model(tmp_path):
    """``shards: section`` writes one file per section and reads them lazily; its patches, and a model trained from
    it, are those of the one-file store (a different cache, so the two never mix)."""
    import torch

    from stguide.contrastive.config import ContrastiveConfig
    from stguide.contrastive.train import train_contrastive
    from stguide.data import make_synthetic

    a = make_synthetic(3, 2, 24, seed=0, image_dir=str(tmp_path / "img"))
    one = extract_patches(a, PatchConfig(size_um=100, out_px=32), tmp_path / "c", progress=False)
    sharded = extract_patches(a, PatchConfig(size_um=100, out_px=32, shards="section"), tmp_path / "c", progress=False)
    assert sharded.path != one.path and sorted(p.name for p in sharded.path.glob("patches-*.npy")) == [
        f"patches-{k:05d}.npy" for k in range(6)]
    assert not (sharded.path / "patches.npy").exists()
    names = list(np.random.default_rng(0).permutation(one.obs_names))
    np.testing.assert_array_equal(sharded.take(names), one.take(names))
    np.testing.assert_array_equal(sharded[len(sharded) - 1], one.take([sharded.obs_names[-1]])[0])
    reopened = PatchStore(sharded.path)  # shards open only when read
    assert all(s is None for s in reopened.images._shards)
    z = np.random.default_rng(1).normal(size=(len(names), 4)).astype(np.float32)
    cfg = ContrastiveConfig(backbone="resnet10t", init="none", epochs=1, batch_size=16, embed_dim=8)
    m1, _ = train_contrastive(cfg, one, names, z, None, tmp_path / "t1", progress=False)
    m2, _ = train_contrastive(cfg, reopened, names, z, None, tmp_path / "t2", progress=False)
    for (k, v), w in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        torch.testing.assert_close(v, w, msg=k)


def _edges_level():
    """A level (2 full-res px per level px) with edges at known level coordinates: red falls at x = 613, green at
    y = 587."""
    from pathlib import Path

    from stguide.data.level import Level

    img = np.full((1200, 1200, 3), 230, np.uint8)
    img[:, 613:, 0] = 40
    img[587:, :, 1] = 40
    return Level(Path("x"), 2.0, (2400, 2400), array=img)


def _crossing(profile: np.ndarray) -> float:
    """Where a falling profile crosses the middle grey, in pixels from the patch's edge (linear between pixels)."""
    i = int(np.flatnonzero(profile < 135)[0])
    return i - 1 + (profile[i - 1] - 135) / (profile[i - 1] - profile[i]) + 0.5


def test_overlapping_patches_share_one_resample_and_keep_their_place():
    """Spots on a pitch of half a patch share one resample per cell; each patch still shows its own field: an edge
    lands where the spot's exact corner puts it, at most half an output pixel off (the cut alone: half a level px)."""
    level = _edges_level()
    half, out = 200.0, 128  # 400 full-res px = 200 level px → 128 px: 0.64 output px per level px
    rng = np.random.default_rng(0)
    cx, cy = np.meshgrid(np.arange(900.0, 1600.0, 100.0), np.arange(900.0, 1600.0, 100.0))
    cx, cy = cx.ravel() + rng.uniform(-7, 7, cx.size), cy.ravel() + rng.uniform(-7, 7, cy.size)
    groups = level.sharing_groups(cx, cy, half, out)
    assert sorted(np.concatenate(groups)) == list(range(cx.size)) and max(map(len, groups)) > 4
    f = out / (2 * half / level.scale)
    for g in groups:
        patches, outside = level.cut_group(cx[g], cy[g], half, out)
        assert patches.shape == (len(g), out, out, 3) and patches.dtype == np.uint8 and not outside.any()
        for k, p in zip(g, patches, strict=True):
            want_x, want_y = (613 - (cx[k] - half) / 2) * f, (587 - (cy[k] - half) / 2) * f
            if 2 < want_x < out - 2:
                assert abs(_crossing(p[out // 4, :, 0].astype(float)) - want_x) <= 0.5 + 0.05
            if 2 < want_y < out - 2:
                assert abs(_crossing(p[:, out // 8, 1].astype(float)) - want_y) <= 0.5 + 0.05
            alone, _ = level.cut(cx[k], cy[k], half, out)
            assert np.abs(alone.astype(int) - p)[2:-2, 2:-2].mean() < 8  # the same field, up to the sub-pixel shift


def test_patches_that_barely_overlap_are_cut_one_by_one(tmp_path):
    """On a grid as coarse as the patches (HER2ST's), nothing is shared: each patch is :meth:`Level.cut`'s."""
    level = _edges_level()
    cx, cy = np.meshgrid(np.arange(500.0, 2000.0, 400.0), np.arange(500.0, 2000.0, 400.0))
    groups = level.sharing_groups(cx.ravel(), cy.ravel(), 200.0, 64)
    assert all(len(g) == 1 for g in groups) and len(groups) == cx.size


def test_a_shared_box_stays_small_however_large_the_patches():
    """Large patches share in smaller cells (a box at most SHARE_MAX_PX a side); very large ones are cut alone."""
    from stguide.data.level import SHARE_MARGIN, SHARE_MAX_PX

    level = _edges_level()
    cx, cy = np.meshgrid(np.arange(0.0, 2400.0, 60.0), np.arange(0.0, 2400.0, 60.0))
    cx, cy = cx.ravel(), cy.ravel()
    for half, shared in [(600.0, True), (1100.0, False)]:  # fields of 600 and 1,100 level px
        groups = level.sharing_groups(cx, cy, half, int(half))
        n = int(2 * half / level.scale) + 1
        assert (max(map(len, groups)) > 1) == shared
        for g in groups:
            for c in (cx[g], cy[g]):
                assert np.ptp(np.floor((c - half) / level.scale + 0.5)) + n + 2 * SHARE_MARGIN <= SHARE_MAX_PX


def test_a_dense_spot_grid_is_extracted_as_its_groups_cut_it(tmp_path):
    """extract_patches writes each spot's patch of its sharing group to that spot's row (rows written by several
    threads at once), also through the memory-map writer used where os.pwrite is missing."""
    from stguide.data.images import open_level

    p = tmp_path / "s.png"
    img = np.random.default_rng(0).integers(0, 256, (600, 600, 3), dtype=np.uint8)
    Image.fromarray(img).save(p)
    xs, ys = np.meshgrid(np.arange(100.0, 500.0, 16.0), np.arange(100.0, 500.0, 16.0))
    xs, ys = xs.ravel(), ys.ravel()
    info = SectionInfo("S", "P", str(p), 1.0, 100.0, 600, 600)
    a = combine_sections([make_section(np.ones((xs.size, 1)), ["g"], [f"s{i}" for i in range(xs.size)], info=info,
                                       x_px=xs, y_px=ys, file=p)])
    store = extract_patches(a, PatchConfig(40, 24), tmp_path / "c", progress=False)
    level = open_level(p)
    want = np.empty((xs.size, 24, 24, 3), np.uint8)
    groups = level.sharing_groups(xs, ys, 20.0, 24)
    assert max(map(len, groups)) > 1
    for g in groups:
        want[g] = level.cut_group(xs[g], ys[g], 20.0, 24)[0]
    np.testing.assert_array_equal(store.take(a.obs_names), want)
    import os

    pwrite = os.pwrite
    try:
        del os.pwrite
        again = extract_patches(a, PatchConfig(40, 24), tmp_path / "d", progress=False)
    finally:
        os.pwrite = pwrite
    np.testing.assert_array_equal(again.take(a.obs_names), want)
