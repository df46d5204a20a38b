"""Leave-one-patient-out: folds, the leakage audit, and the quick demo end to end."""
import json

import numpy as np
import pytest

from stguide.data.folds import assert_no_leak, lopo_folds
from stguide.errors import InputError


def test_folds_hold_out_whole_patients(synthetic):
    folds = lopo_folds(synthetic)
    pat = synthetic.obs["patient"].astype(str).to_numpy()
    assert [f.held_out for f in folds] == ["P1", "P2", "P3"]
    for f in folds:
        assert set(pat[f.test]) == {f.held_out}
        assert f.held_out not in set(pat[f.train])
        assert not (f.train & f.test).any() and (f.train | f.test).all()


def test_unlabelled_patient_trains_but_is_never_held_out(synthetic):
    a = synthetic.copy()
    a.obs.loc[a.obs["patient"] == "P2", "label"] = np.nan
    folds = lopo_folds(a)
    assert [f.held_out for f in folds] == ["P1", "P3"]
    assert all((a.obs["patient"].to_numpy()[f.train] == "P2").any() for f in folds)
    with pytest.raises(InputError, match="has no labelled spot"):
        lopo_folds(a, patients=["P2"])


def test_leaky_fit_is_caught(synthetic):
    fold = lopo_folds(synthetic)[0]
    assert assert_no_leak(synthetic, fold, fold.train, "probe")["patients"] == ["P2", "P3"]
    with pytest.raises(RuntimeError, match="leakage"):
        assert_no_leak(synthetic, fold, np.ones(synthetic.n_obs, bool), "gene encoder")


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path):
    from stguide.evaluate.config import load_config, preset_path
    from stguide.evaluate.experiment import run_experiment

    out = tmp_path / "demo"
    res = run_experiment(load_config(preset_path("demo-quick")), out, progress=False)
    saved = json.loads((out / "results.json").read_text())
    assert set(saved) >= {"methods", "config", "dataset"}
    assert set(saved["methods"]) == {"random-init", "ours-scvi-clip"}
    for name, m in saved["methods"].items():
        assert set(m) >= {"folds", "mean", "sd"}
        assert sorted(m["folds"]) == ["P1", "P2", "P3"]
        for p, f in m["folds"].items():
            for k in ("acc", "bacc", "macro_f1", "weighted_f1", "knn_bacc"):
                assert np.isfinite(f[k]) and 0 <= f[k] <= 1, (k, f[k])
            assert np.isfinite(f["kappa"]) and -1 <= f["kappa"] <= 1, f["kappa"]  # κ may be negative, never NaN
            audit = json.loads((out / "folds" / p / name / "leakage_audit.json").read_text())
            for comp, rec in audit.items():
                if comp != "held_out":
                    assert p not in rec["patients"]
            assert audit["held_out"]["patients"] == [p]
        assert np.isfinite(m["mean"]["bacc"])
    assert "ours-scvi-clip" in (out / "report.md").read_text()
    assert res["methods"]["ours-scvi-clip"]["mean"]["bacc"] == saved["methods"]["ours-scvi-clip"]["mean"]["bacc"]


def test_same_seed_same_results(synthetic, tmp_path):
    """Re-running gives identical metrics, whatever ran before in the process."""
    import torch

    from stguide.contrastive import ContrastiveConfig
    from stguide.data.patches import PatchConfig, extract_patches
    from stguide.evaluate.config import ExperimentConfig, Method
    from stguide.evaluate.lopo import run_lopo

    store = extract_patches(synthetic, PatchConfig(100, 32), tmp_path / "p", progress=False)
    cfg = ExperimentConfig(methods=(Method("random-init"),), contrastive=ContrastiveConfig(backbone="resnet10t"), ablation=False)
    a = run_lopo(cfg, synthetic, store, tmp_path / "a", progress=False)
    torch.rand(1000)  # disturb the global generator
    b = run_lopo(cfg, synthetic, store, tmp_path / "b", progress=False)
    assert a["methods"] == b["methods"]
