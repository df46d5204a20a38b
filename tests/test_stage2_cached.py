"""Stage 2 on cached trunk features (issue 13): the cache, the trunk modes, the controls, per-patient batching, the
paired bootstrap, and bad input."""
import warnings

import numpy as np
import pytest
import torch

from stguide.contrastive import ContrastiveConfig, build_image_encoder, fit_image_encoder
from stguide.contrastive.cached import batches
from stguide.contrastive.features import feature_cache, view_of
from stguide.contrastive.trunk import split_trunk
from stguide.data.patches import PatchConfig, extract_patches
from stguide.errors import DataWarning, InputError
from stguide.evaluate.stats import bootstrap_ci, paired_differences
from stguide.genes import get_encoder

TRUNK = dict(backbone="resnet10t", epochs=4, batch_size=32, embed_dim=16, views=3)


@pytest.fixture(scope="module")
def data(synthetic, tmp_path_factory):
    store = extract_patches(synthetic, PatchConfig(100, 32), tmp_path_factory.mktemp("p"), progress=False)
    train = (synthetic.obs["patient"] != "P3").to_numpy()
    enc = get_encoder("pca", pca={"n_pcs": 8}).fit(synthetic[train])
    return synthetic, store, train, enc


def _weights(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_cache_is_written_once_and_keyed_by_trunk_init_and_view_seed(data, tmp_path, monkeypatch):
    _, store, _, _ = data
    first = feature_cache(store, "resnet10t", "none", tmp_path, views=2, progress=False)
    assert first.built and first.features.shape[:2] == (2, len(store)) and first.features.dtype == np.float16
    import stguide.contrastive.features as features

    def no_forward(*a, **k):
        raise AssertionError("the trunk ran again")

    monkeypatch.setattr(features, "build_image_encoder", no_forward)
    again = feature_cache(store, "resnet10t", "none", tmp_path, views=2, progress=False)
    assert not again.built and again.path == first.path
    monkeypatch.undo()
    others = [feature_cache(store, "resnet18", "none", tmp_path, views=2, progress=False),
              feature_cache(store, "resnet10t", "none", tmp_path, views=2, view_seed=1, progress=False),
              feature_cache(store, "resnet10t", "none", tmp_path, views=3, progress=False)]
    assert len({first.path, *(c.path for c in others)}) == 4
    torch.save(build_image_encoder("resnet10t")[0].state_dict(), tmp_path / "w.pt")
    assert feature_cache(store, "resnet10t", f"file:{tmp_path / 'w.pt'}", tmp_path, views=2, progress=False).path != first.path
    # view 0 is the plain patch; other views differ, and are seeded
    assert np.array_equal(view_of(store, 0, 0, 0), store[0]) and not np.array_equal(view_of(store, 0, 1, 0), store[0])
    assert np.array_equal(view_of(store, 0, 1, 0), view_of(store, 0, 1, 0))


def test_a_damaged_cache_is_rebuilt_never_read(data, tmp_path):
    _, store, _, _ = data
    cache = feature_cache(store, "resnet10t", "none", tmp_path, views=2, progress=False)
    good = np.asarray(cache.features).copy()
    f = cache.path / "features.npy"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # cut short, as by a full disk or a killed copy
    with pytest.warns(DataWarning, match="features.npy"):
        rebuilt = feature_cache(store, "resnet10t", "none", tmp_path, views=2, progress=False)
    assert rebuilt.built and np.array_equal(np.asarray(rebuilt.features), good)
    (rebuilt.path / "meta.json").write_text("{not json")
    with pytest.warns(DataWarning, match="meta.json"):
        assert feature_cache(store, "resnet10t", "none", tmp_path, views=2, progress=False).built


def test_frozen_trunk_features_are_the_pretrained_trunks_and_only_heads_train(data, tmp_path):
    """`frozen`: the trunk is not part of what trains (the module's backbone is an identity over the cache, with no
    parameter), and the cached features are the pretrained trunk's own output, so every trunk weight that produced
    them is the pretrained one."""
    full, store, train, enc = data
    cfg = ContrastiveConfig(**TRUNK, trunk="frozen")
    module, _, emb = fit_image_encoder(cfg, full, store, enc, tmp_path / "run", train_mask=train, progress=False,
                                       features_dir=tmp_path / "features")
    torch.manual_seed(0)  # the seed the cache builds its (here random-init) trunk with
    trunk, transform = build_image_encoder("resnet10t")
    trunk.eval()
    with torch.no_grad():
        ref = trunk(torch.stack([transform(store[i]) for i in range(8)])).numpy()
    cache = feature_cache(store, "resnet10t", "none", tmp_path / "features", views=3, progress=False)
    np.testing.assert_allclose(np.asarray(cache.features[0, :8], np.float32), ref, rtol=2e-3, atol=2e-3)
    assert isinstance(module.backbone, torch.nn.Identity) and not any(True for _ in module.backbone.parameters())
    np.testing.assert_allclose(emb.obsm["X_image_backbone"][:8], np.asarray(cache.features[0, :8], np.float32))


def test_partial_trains_only_the_last_k_blocks(data, tmp_path):
    full, store, train, enc = data
    cfg = ContrastiveConfig(**TRUNK, trunk="partial", trunk_blocks=1, lr=1e-2)
    torch.manual_seed(0)
    model, _ = build_image_encoder("resnet10t")
    prefix, tail = split_trunk(model, 1, "resnet10t")
    before = _weights(tail)
    module, _, _ = fit_image_encoder(cfg, full, store, enc, tmp_path / "run", train_mask=train, progress=False,
                                     features_dir=tmp_path / "features")
    after = _weights(module.backbone)
    assert before.keys() == after.keys() and all(k.startswith(("blocks.", "pool.")) for k in after)
    trainable = [k for k in before if before[k].is_floating_point() and "running" not in k]
    assert any(not torch.equal(before[k], after[k]) for k in trainable)  # the last block learnt
    assert all(torch.equal(before[k], after[k]) for k in before if "running" in k)  # BatchNorm statistics stay pretrained
    cache = feature_cache(store, "resnet10t", "none", tmp_path / "features", blocks=1, views=3, progress=False)
    with torch.no_grad():  # the cached activations are the untouched prefix's
        _, transform = build_image_encoder("resnet10t")
        ref = prefix.eval()(torch.stack([transform(store[i]) for i in range(4)])).numpy()
    np.testing.assert_allclose(np.asarray(cache.features[0, :4], np.float32), ref, rtol=2e-3, atol=2e-3)


def test_supervised_beats_shuffled_on_synthetic_data(tmp_path):
    """The two controls run; on the frozen ImageNet trunk the issue's protocol uses, the head trained on labels
    separates the held-out patient's classes at least as well as the head trained against targets shuffled across
    spots (measured: 0.85 vs 0.80; on a random-init trunk the order flips, because instance discrimination against
    fixed random targets teaches stain invariance across the augmented views, which is what the control is for)."""
    import json

    from stguide.evaluate.config import load_config
    from stguide.evaluate.experiment import run_experiment

    (tmp_path / "c.yaml").write_text("""
data: {format: synthetic, options: {n_patients: 3, sections_per_patient: 1, spots_per_section: 81, seed: 0}}
patches: {size_um: 100, out_px: 64}
genes: {n_top_genes: 200, pca: {n_pcs: 10}}
contrastive: {backbone: tf_efficientnet_lite0, init: effnet-lite0, trunk: frozen, views: 4, epochs: 30, batch_size: 32, embed_dim: 32}
probe: {features: head}
lopo: {seeds: 2, baseline: trunk}
methods:
  - {name: trunk, probe: {features: backbone}}
  - {name: shuffled, gene_encoder: pca, loss: clip, contrastive: {shuffle_targets: true}, probe: {features: backbone}}
  - {name: supervised, contrastive: {objective: supervised}}
ablation: false
report: {umap: false, image_audit: false, target_audit: false}
""")
    res = run_experiment(load_config(tmp_path / "c.yaml"), tmp_path / "run", progress=False)
    m = res["methods"]
    # a trained method asking for the backbone on a frozen trunk is probed on its head (embed_dim 32), not on the
    # untrained trunk's features (1280), which would score the trunk under its name
    width = {name: np.load(tmp_path / "run" / "folds" / "P1" / name / sub / "features.npz")["x"].shape[1]
             for name, sub in (("trunk", ""), ("shuffled", "seed0"))}
    assert width == {"trunk": 1280, "shuffled": 32}, width
    assert m["supervised"]["mean"]["bacc"] >= m["shuffled"]["mean"]["bacc"], (m["supervised"]["mean"], m["shuffled"]["mean"])
    assert set(m["shuffled"]["seeds"]["P1"]) == {"0", "1"} and (tmp_path / "run" / "folds" / "P1" / "shuffled" / "seed1" / "metrics.json").is_file()
    comp = res["comparisons"]["methods"]["supervised"]["bacc"]
    assert comp["n_folds"] == 3 and comp["n_seeds"] == 2 and comp["ci95"][0] <= comp["diff"] <= comp["ci95"][1]
    assert json.loads((tmp_path / "run" / "results.json").read_text())["config"]["contrastive"]["trunk"] == "frozen"
    assert "Against the baseline (trunk)" in (tmp_path / "run" / "report.md").read_text()


def test_per_patient_batching_holds_one_patient_per_minibatch():
    patients = np.repeat([0, 1, 2], [50, 37, 3])
    rng = np.random.default_rng(0)
    bs = batches(len(patients), 16, rng, patients)
    assert all(len(set(patients[b])) == 1 for b in bs)
    assert sorted(np.concatenate(bs).tolist()) == list(range(90))  # every spot, once
    mixed = batches(len(patients), 16, np.random.default_rng(0))
    assert any(len(set(patients[b])) > 1 for b in mixed)


def test_paired_bootstrap_ci_on_a_hand_made_example():
    # two folds, one seed each: differences 1 and 3. Resampling two folds with replacement gives the means
    # 1 (p = 1/4), 2 (p = 1/2) and 3 (p = 1/4): the 95 % interval runs from 1 to 3 and the estimate is 2.
    d = paired_differences({"A": {0: 0.7}, "B": {0: 0.9}}, {"A": {0: -0.3}, "B": {0: -2.1}})
    assert d.keys() == {"A", "B"} and d["A"] == pytest.approx([1.0]) and d["B"] == pytest.approx([3.0])
    mean, lo, hi = bootstrap_ci(d, n_boot=4000, seed=1)
    assert (mean, lo, hi) == pytest.approx((2.0, 1.0, 3.0))
    # a constant difference has a zero-width interval; a seed-free baseline pairs with every seed
    d = paired_differences({"A": {0: 0.5, 1: 0.6}, "B": {0: 0.7, 1: 0.8}}, {"A": {0: 0.4}, "B": {0: 0.6}})
    assert d["A"] == pytest.approx([0.1, 0.2]) and d["B"] == pytest.approx([0.1, 0.2])
    mean, lo, hi = bootstrap_ci(d, n_boot=2000)
    assert mean == pytest.approx(0.15) and 0.1 - 1e-9 <= lo <= mean <= hi <= 0.2 + 1e-9
    # two seed-dependent methods pair seed with seed; a seed only one of them ran is left out
    d = paired_differences({"A": {0: 0.5, 1: 0.6, 2: 0.9}}, {"A": {0: 0.4, 1: 0.4}})
    assert d["A"] == pytest.approx([0.1, 0.2])


def test_bad_trunk_settings_are_one_line_errors():
    with pytest.raises(InputError, match="trunk_blocks") as e:
        ContrastiveConfig(backbone="resnet10t", trunk="partial", trunk_blocks=5)
    assert "1..4" in e.value.problem
    with pytest.raises(InputError, match="views"):
        ContrastiveConfig(views=0)
    with pytest.raises(InputError, match="freeze_backbone"):  # partial trains the trunk's tail: a contradiction
        ContrastiveConfig(backbone="resnet10t", trunk="partial", freeze_backbone=True)
    with pytest.raises(InputError, match="trunk"):
        ContrastiveConfig(backbone="vit_tiny_patch16_224", trunk="partial")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ContrastiveConfig(backbone="tf_efficientnet_lite0", trunk="partial", trunk_blocks=7)


def test_c_tolerance_takes_the_most_regularised_c_near_the_best():
    from stguide.evaluate.probes import choose_c

    # measured on real HER2ST (fold B, ImageNet trunk): three inner scores within 0.005; a 0.0004 change of the best
    # flipped the choice from C = 0.01 to C = 1.0 and moved the held-out balanced accuracy by 0.06
    scores = {0.01: 0.2429, 0.1: 0.2381, 1.0: 0.2431}
    assert choose_c(scores) == 1.0 and choose_c(scores, 0.01) == 0.01
    assert choose_c({0.01: 0.5, 0.1: 0.5, 1.0: 0.4}) == 0.01  # exact tie: the smaller C, as before
    assert choose_c({0.01: float("nan"), 0.1: 0.3, 1.0: 0.31}, 0.005) == 1.0
