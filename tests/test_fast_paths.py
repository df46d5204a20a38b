"""What keeps a run fast and says where its time went: stguide.timing (seconds per part, nested parts counted once,
parts that add up), the read-ahead generator, the audit's JAX compilation cache, the UMAP sample."""
import time

import pytest

from stguide import timing


def test_nested_parts_are_exclusive_and_add_up():
    t0 = time.perf_counter()
    with timing.recording() as seconds:
        with timing.part("outer"):
            time.sleep(0.05)
            with timing.part("inner"):
                time.sleep(0.1)
            with timing.part("inner"):  # a part entered twice adds up
                time.sleep(0.05)

        @timing.part("decorated")
        def work():
            time.sleep(0.02)
        work()
        work()
    total = time.perf_counter() - t0
    assert 0.14 <= seconds["inner"] < 0.3
    assert 0.04 <= seconds["outer"] < 0.1  # the inner 0.15 s is not counted twice
    assert 0.035 <= seconds["decorated"] < 0.1
    parts = timing.rounded(seconds, total)
    assert list(parts)[0] == "inner" and parts["other"] >= 0
    assert abs(sum(parts.values()) - total) <= 0.05 * len(parts) + 0.01  # each part rounded to 0.1 s


def test_parts_outside_a_recording_are_not_kept():
    with timing.part("nothing"):
        pass
    with timing.recording() as seconds:
        pass
    assert seconds == {}


def test_current_names_the_innermost_open_part():
    assert timing.current() is None
    with timing.part("a"):
        with timing.part("b"):
            assert timing.current() == "b"
        assert timing.current() == "a"
    assert timing.current() is None


def test_the_audit_keeps_its_jax_compilations_for_the_next_process(tmp_path):
    """A fresh process compiles scib-metrics' JAX code once into stguide's user cache; a user's own JAX cache wins."""
    import os
    import subprocess
    import sys

    code = ("import numpy as np; from stguide.evaluate.audit import audit; r = np.random.default_rng(0); "
            "audit({'x': r.normal(size=(80, 4))}, np.repeat(['a', 'b'], 40), np.tile(['u', 'v'], 40).astype(object))")
    env = {**os.environ, "STGUIDE_CACHE_DIR": str(tmp_path / "stg"), "JAX_PLATFORMS": "cpu"}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    assert any((tmp_path / "stg" / "jax").iterdir())
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path / "own")
    env["STGUIDE_CACHE_DIR"] = str(tmp_path / "stg2")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True)
    assert not (tmp_path / "stg2").exists()


def test_read_ahead_loads_the_next_item_while_this_one_is_used_and_discards_on_early_stop():
    import threading
    from contextlib import closing

    from stguide.progress import read_ahead

    loaded, discarded, gate = [], [], threading.Event()

    def load(k):
        loaded.append(k)
        if k == 1:
            gate.set()
        return k * 10

    with closing(read_ahead([0, 1, 2, 3], load, discard=discarded.append)) as items:
        for k, v in items:
            assert v == k * 10
            if k == 0:
                assert gate.wait(5)  # item 1 loads while item 0 is in use
            if k == 1:
                break
    assert loaded == [0, 1, 2] and discarded == [20]  # 2 was read ahead, then handed back; 3 never loaded
    assert list(read_ahead([], load)) == []


def test_the_umap_of_a_large_cell_is_drawn_from_a_seeded_sample(tmp_path):
    import numpy as np

    from stguide.evaluate.image_audit import describe_features

    r = np.random.default_rng(0)
    n = 90
    np.savez(tmp_path / "features.npz", obs_names=np.array([f"s{i}" for i in range(n)]), x=r.normal(size=(n, 6)).astype(np.float16),
             patient=np.repeat(["a", "b", "c"], 30), label=np.tile(["u", "v", "w"], 30), test=np.zeros(n, bool))
    describe_features(tmp_path, audit_on=False, umap=True, seed=3, umap_max_spots=40)
    z = np.load(tmp_path / "umap.npz")
    assert z["xy"].shape == (40, 2) and len(set(z["rows"])) == 40 and z["rows"].max() < n
    assert (z["patient"] == np.repeat(["a", "b", "c"], 30)[z["rows"]]).all()
    first = z["rows"].copy()
    describe_features(tmp_path, audit_on=False, umap=True, seed=3, umap_max_spots=40)
    assert (np.load(tmp_path / "umap.npz")["rows"] == first).all()  # seeded


def _audit_data(n: int, d: int, k: int, seed: int):
    import numpy as np

    rng = np.random.default_rng(seed)
    lab = rng.integers(0, k, n)
    batch = rng.integers(0, 3, n)
    lab[(batch == 2) & (lab == 0)] = 1  # label "0" lives in two batches only: an isolated label
    x = rng.normal(size=(n, d)) + (lab[:, None] == np.arange(d)[None, :] % k) * 1.5 + batch[:, None] * 0.3
    return x.astype(np.float32), lab.astype(str), batch.astype(str)


def test_the_fast_silhouettes_and_kmeans_give_scib_metrics_values():
    import warnings

    import numpy as np
    import scib_metrics as sm

    from stguide.evaluate import fast_metrics as fm

    for n, d, k, seed in [(300, 5, 3, 0), (900, 40, 7, 1)]:
        x, lab, batch = _audit_data(n, d, k, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sil = fm.silhouette_samples(x, lab)
            np.testing.assert_allclose(sil, sm.utils.silhouette_samples(x, lab), atol=1e-5)
            assert abs(fm.silhouette_label(sil) - sm.silhouette_label(x, lab)) < 1e-6
            assert abs(fm.isolated_labels(sil, lab, batch) - sm.isolated_labels(x, lab, batch)) < 1e-6
            assert np.array_equal(fm.kmeans_labels(x, k), sm.utils.KMeans(k).fit(x).labels_)
            assert fm.nmi_ari_kmeans(x, lab) == pytest.approx(sm.nmi_ari_cluster_labels_kmeans(x, lab))
    one = fm.silhouette_samples(np.eye(3, dtype=np.float32), np.array(["a", "b", "b"]))
    assert one[0] == 0.0  # a spot alone in its label scores 0, as in scib-metrics and scikit-learn


def test_the_audit_builds_one_knn_graph_when_every_spot_is_labelled(monkeypatch):
    from stguide.evaluate import audit as audit_mod

    x, lab, batch = _audit_data(400, 8, 4, 3)
    calls = []
    real = audit_mod.knn
    monkeypatch.setattr(audit_mod, "knn", lambda x, k: calls.append(len(x)) or real(x, k))
    row = audit_mod.audit({"x": x}, batch, lab.astype(object), cfg=audit_mod.AuditConfig(n_neighbors=15)).iloc[0]
    assert calls == [400] and {"graph_connectivity", "clisi", "isolated_labels", "nmi"} <= set(row.index)
    calls.clear()
    lab = lab.astype(object)
    lab[:100] = None
    audit_mod.audit({"x": x}, batch, lab, cfg=audit_mod.AuditConfig(n_neighbors=15))
    assert calls == [400, 300]  # every spot (iLISI, kBET), then the labelled ones (connectivity and cLISI share it)


def test_the_knn_probe_finds_the_cosine_neighbours():
    """Euclidean kNN on L2-normalised features is cosine kNN: the same predictions as scikit-learn's metric="cosine",
    on features of mixed norms. (A zero vector, which has no direction, sits at distance 0.5 in cosine terms from
    every spot here and at 1 in scikit-learn's: a convention either way.)"""
    import numpy as np
    from sklearn.neighbors import KNeighborsClassifier

    from stguide.evaluate.probes import ProbeConfig, fit_knn_probe

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(400, 24)) * rng.uniform(0.1, 10, (400, 1))).astype(np.float32)
    y = np.array(list("abcd"))[(x[:, 0] > 0) + 2 * (x[:, 1] > 0)]
    y[rng.random(400) < 0.3] = "a"  # noise, so that the vote is not trivial
    tr, te = np.arange(300), np.arange(300, 400)
    want = KNeighborsClassifier(15, metric="cosine").fit(x[tr], y[tr]).predict(x[te])
    got = fit_knn_probe(x[tr], y[tr], ProbeConfig(k=15)).predict(x[te])
    assert (got == want).all()


def test_the_approximate_knn_probe_votes_like_the_exact_one_above_its_threshold():
    """Above probe.knn_exact_max training spots the kNN probe finds candidates among projected features (brute force,
    or a pynndescent index above probe.knn_index_min) and re-ranks them in the full dimension: on clustered features
    (what trained features look like) its predictions are the exact probe's on nearly every spot, the same on a
    second fit (fixed seeds, one index thread), and at or below the threshold the probe stays exact. Without a
    projection (knn_dims at or above the dimension) the brute-force candidates are the exact neighbours."""
    import numpy as np
    from sklearn.pipeline import Pipeline

    from stguide.evaluate.knn import ApproximateKNN
    from stguide.evaluate.probes import ProbeConfig, fit_knn_probe

    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 32)) * 3
    lab = rng.integers(0, 6, 1200)
    x = (centres[lab] + rng.normal(size=(1200, 32))).astype(np.float32)
    y = np.array(list("abcdef"))[lab]
    y[rng.random(1200) < 0.2] = "a"
    tr, te = np.arange(900), np.arange(900, 1200)
    exact = fit_knn_probe(x[tr], y[tr], ProbeConfig(knn_exact_max=900))
    assert isinstance(exact, Pipeline)
    want = exact.predict(x[te])
    for cfg in (ProbeConfig(knn_exact_max=899, knn_dims=8), ProbeConfig(knn_exact_max=0, knn_dims=8, knn_index_min=0)):
        approx = fit_knn_probe(x[tr], y[tr], cfg)
        assert isinstance(approx, ApproximateKNN) and approx.indexed == (cfg.knn_index_min == 0)
        got = approx.predict(x[te])
        assert (got == want).mean() >= 0.98, (cfg, (got == want).mean())
        assert (fit_knn_probe(x[tr], y[tr], cfg).predict(x[te]) == got).all()
    unprojected = fit_knn_probe(x[tr], y[tr], ProbeConfig(knn_exact_max=0, knn_dims=32))
    assert (unprojected.predict(x[te]) == want).all()


def test_the_warm_started_c_grid_reaches_the_cold_fits_choice():
    """probe.warm_start (the default) fits each inner fold's C grid in ascending order from the previous solution:
    at the default tolerance, the cold fits' optimum, so the same inner scores within 1e-3 and the same chosen C;
    warm_start false is the cold fits exactly (the scaler is fitted once per fold either way, as the pipeline
    fitted it)."""
    from dataclasses import replace

    import numpy as np
    from sklearn.model_selection import GroupKFold

    from stguide.evaluate.metrics import classification_metrics
    from stguide.evaluate.probes import ProbeConfig, _linear, fit_linear_probe

    rng = np.random.default_rng(2)
    lab = rng.integers(0, 4, 900)
    x = (rng.normal(size=(4, 40))[lab] + 2 * rng.normal(size=(900, 40))).astype(np.float32)
    y, groups = np.array(list("wxyz"))[lab], np.repeat([1, 2, 3], 300)
    cfg = ProbeConfig(Cs=(1.0, 0.01, 0.1))
    assert cfg.warm_start
    cold = {}
    for C in cfg.Cs:  # what the probe computed before warm starts: one pipeline per fold and C
        cold[C] = float(np.mean([classification_metrics(y[va], _linear(C, cfg).fit(x[tr], y[tr]).predict(x[va]))["bacc"]
                                 for tr, va in GroupKFold(n_splits=3).split(x, y, groups)]))
    _, c_cold, s_cold = fit_linear_probe(x, y, groups, replace(cfg, warm_start=False))
    _, c_warm, s_warm = fit_linear_probe(x, y, groups, cfg)
    assert s_cold == cold and list(s_warm) == list(cfg.Cs)
    assert c_warm == c_cold and max(abs(s_warm[C] - cold[C]) for C in cfg.Cs) <= 1e-3, (s_warm, cold)
