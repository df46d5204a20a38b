"""`stguide experiment`: a tiny end-to-end run, its cache/resume, the leakage refusal, the metrics by hand."""
import json
import shutil

import numpy as np
import pytest

from stguide.cli import main
from stguide.errors import InputError, LeakageError
from stguide.evaluate.config import ExperimentConfig, load_config
from stguide.evaluate.experiment import run_experiment
from stguide.evaluate.metrics import classification_metrics, summarise

TINY = """
data: {format: synthetic, options: {n_patients: 3, sections_per_patient: 1, spots_per_section: 64, seed: 0}}
patches: {size_um: 100, out_px: 32}
genes: {n_top_genes: 200, scvi: {n_latent: 8, max_epochs: 5}, scanvi: {max_epochs: 2}}
contrastive: {backbone: resnet10t, epochs: 1, batch_size: 32}
methods:
  - {name: random}
  - {name: ours-scanvi, gene_encoder: scanvi, loss: inter-soft}
ablation: false
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp")
    (root / "tiny.yaml").write_text(TINY)
    assert main([
        "experiment", str(root / "tiny.yaml"), "--out", str(root / "run"), "--no-progress"]) == 0
    return root


def test_tiny_experiment_writes_results_report_and_audits(tiny):
    run = tiny / "run"
    res = json.loads((run / "results.json").read_text())
    assert sorted(res["methods"]) == ["ours-scanvi", "random"]
    for m in res["methods"].values():  # the foundation schema
        assert sorted(m["folds"]) == ["P1", "P2", "P3"] and set(m) == {"folds", "mean", "sd", "recall", "knn_recall"}
        assert set(m["recall"]) <= set(res["dataset"]["classes"]) and all(0 <= r <= 1 for r in m["recall"].values())
        for k in ("acc", "bacc", "macro_f1", "weighted_f1", "kappa", "knn_bacc", "n_test"):
            assert k in m["mean"] and all(k in f for f in m["folds"].values())
    assert {"dataset", "config", "command", "kind", "ablation", "methods_paragraph"} <= set(res)
    assert res["config"]["genes"]["scvi"]["max_epochs"] == 5  # the whole resolved config, every default written out
    for fold in ("P1", "P2", "P3"):
        audit = json.loads((run / "folds" / fold / "ours-scanvi" / "leakage_audit.json").read_text())
        assert {"gene_selection", "gene_encoder", "contrastive", "probe"} <= set(audit)
        assert all(fold not in audit[w]["patients"] for w in ("gene_selection", "gene_encoder", "contrastive", "probe"))
        assert json.loads((run / "folds" / fold / "random" / "image_audit.json").read_text())["ilisi"] >= 0
    md, html = (run / "report.md").read_text(), (run / "report.html").read_text()
    for fig in ("confusion.png", "umap.png", "training.png"):
        assert (run / "figures" / fig).is_file() and f"figures/{fig}" in md and f"figures/{fig}" in html
    assert list((run / "figures").glob("spots_*.png")) and "Batch audit of the image embeddings" in md
    assert "<table>" in html and "leakage_audit.json" in md
    # where the time went: every part that ran is there, and the parts add up to the run's wall-clock time
    t = res["timings"]
    assert {"read", "patches", "gene encoders", "stage 2", "trunk features", "probes", "image audit", "report", "other"} <= set(t)
    assert all(v >= 0 for v in t.values()) and abs(sum(t.values()) - res["runtime_s"]) <= 0.1 * len(t) + 1
    assert t["stage 2"] > 0 and t["gene encoders"] > 0 and "Where the time went" in md


def test_resumed_run_gives_the_same_results_and_reuses_cells(tiny):
    run = tiny / "run"
    before = json.loads((run / "results.json").read_text())
    kept = (run / "folds" / "P1" / "random" / "metrics.json").stat().st_mtime_ns
    shutil.rmtree(run / "folds" / "P2" / "ours-scanvi")  # as if the run had stopped before this cell
    (run / "results.json").unlink()
    cfg = load_config(tiny / "tiny.yaml")
    after = run_experiment(cfg, run, progress=False)
    assert after["methods"] == before["methods"]
    assert (run / "folds" / "P1" / "random" / "metrics.json").stat().st_mtime_ns == kept
    # the report is rebuilt from the run folder alone
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0 and (run / "report.html").is_file()


def test_leaky_configuration_is_refused(tmp_path, capsys):
    cfg = tmp_path / "leaky.yaml"
    cfg.write_text("""
data: {format: synthetic, options: {n_patients: 2, sections_per_patient: 2, spots_per_section: 16}}
patches: {size_um: 100, out_px: 16}
methods: [{name: random}]
ablation: false
lopo: {fold_by: section}
report: {umap: false, image_audit: false}
""")
    with pytest.raises(LeakageError, match="held-out patient"):
        run_experiment(load_config(cfg), tmp_path / "run", progress=False)
    refused = json.loads((tmp_path / "run" / "folds" / "P1S1" / "random" / "leakage_audit.json").read_text())
    assert "refused" in refused and "P1" in refused["probe"]
    assert not (tmp_path / "run" / "folds" / "P1S1" / "random" / "metrics.json").exists()
    assert main(["experiment", str(cfg), "--out", str(tmp_path / "run2"), "--no-progress"]) == 2
    assert "leakage" in capsys.readouterr().err


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("contrastive: {epochs: many}\n")
    with pytest.raises(InputError, match="contrastive.epochs"):
        load_config(bad)
    bad.write_text("methods: [{name: x, gene_encoder: scvi, loss: clip}, {name: x}]\n")
    with pytest.raises(InputError, match="share this name"):
        load_config(bad)
    bad.write_text("lopo: {fold_by: spot}\n")
    with pytest.raises(InputError, match="lopo.fold_by"):
        load_config(bad)


def test_default_methods_and_ablation():
    names = [m.name for m in ExperimentConfig().all_methods()]
    assert names[:6] == ["random", "imagenet", "clip", "bleep", "ours-scvi", "ours-scanvi"]
    assert {"scanvi+clip", "scanvi+gene-soft", "scanvi+supcon"} <= set(names)


def test_metrics_agree_with_hand_computation_and_sklearn():
    from sklearn import metrics as skm

    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", "c", "c"]
    m = classification_metrics(y_true, y_pred)
    # by hand: recalls a 2/3, b 1/2, c 1/1; precisions a 1, b 1/2, c 1/2; F1 a 0.8, b 0.5, c 2/3;
    # κ: p_o = 4/6, p_e = (3·2 + 2·2 + 1·2)/36 = 1/3 → (2/3 − 1/3)/(2/3) = 0.5
    hand = {"acc": 4 / 6, "bacc": (2 / 3 + 1 / 2 + 1) / 3, "macro_f1": (0.8 + 0.5 + 2 / 3) / 3,
            "weighted_f1": (3 * 0.8 + 2 * 0.5 + 2 / 3) / 6, "kappa": 0.5}
    for k, v in hand.items():
        assert m[k] == pytest.approx(v)
    assert m["bacc"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y_true, y_pred, average="macro"))
    assert m["kappa"] == pytest.approx(skm.cohen_kappa_score(y_true, y_pred))
    mean, sd = summarise({"A": {"bacc": 0.5}, "B": {"bacc": 0.7}})
    assert mean["bacc"] == pytest.approx(0.6) and sd["bacc"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
