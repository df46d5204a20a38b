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

    from stguide.data.images import Level

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
