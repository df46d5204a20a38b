"""Stage-1 gene encoders: fit/transform, save/load, scANVI never sees held-out labels, bad input."""
import json

import numpy as np
import pytest

from stguide.errors import InputError
from stguide.genes import ENCODERS, GeneConfig, get_encoder, load_encoder

FAST = dict(scvi={"max_epochs": 15, "n_latent": 6}, scanvi={"max_epochs": 3}, n_top_genes=100)


@pytest.fixture(scope="module")
def split(synthetic):
    train = synthetic[synthetic.obs["patient"] != "P3"].copy()
    return train, synthetic


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_fit_transform_save_load(name, split, tmp_path):
    train, full = split
    enc = get_encoder(name, **FAST).fit(train, labels_key="label", progress=False)
    z = enc.transform(full)
    assert z.shape[0] == full.n_obs and np.isfinite(z).all()
    assert enc.fitted_on["patients"] == ["P1", "P2"]
    enc.save(tmp_path / name)
    z2 = load_encoder(tmp_path / name).transform(full)
    np.testing.assert_array_equal(z, z2)


def test_scvi_is_seeded(split):
    train, full = split
    a = get_encoder("scvi", **FAST).fit(train, progress=False).transform(full)
    b = get_encoder("scvi", **FAST).fit(train, progress=False).transform(full)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_scanvi_never_receives_held_out_labels(split, tmp_path):
    """Through the LOPO's own path (fold_gene_encoder): scrambling the held-out patient's labels leaves the fold's
    scANVI latent bit-identical, the model never registered a held-out spot, and the experiment's one
    ``exclude_labels`` setting reaches scANVI (an excluded class is never one of its labels)."""
    from stguide.data.folds import lopo_folds
    from stguide.evaluate.config import ExperimentConfig, Method
    from stguide.evaluate.lopo import fold_gene_encoder

    _, full = split
    excluded = "immune infiltrate"
    assert excluded in set(full.obs["label"][full.obs["patient"] != "P3"])
    cfg = ExperimentConfig(genes=GeneConfig.from_dict(FAST), exclude_labels=(excluded,), methods=(Method("random"),), ablation=False)
    scrambled = full.copy()
    held = (scrambled.obs["patient"] == "P3").to_numpy()
    lab = scrambled.obs["label"].astype(str).to_numpy()
    lab[held] = np.random.default_rng(0).permutation(np.where(lab[held] == "adipose tissue", "invasive cancer", "adipose tissue"))
    scrambled.obs["label"] = lab
    latents = []
    for i, data in enumerate((full, scrambled)):
        fold = next(f for f in lopo_folds(data) if f.held_out == "P3")
        enc = fold_gene_encoder(cfg, data, fold, "scanvi", tmp_path / f"genes{i}")
        assert set(enc.model.adata.obs_names).isdisjoint(set(data.obs_names[held]))
        assert set(enc.registered_labels()) == set(full.obs["label"][~held].astype(str)) - {excluded} | {"Unknown"}
        assert enc.fitted_on["patients"] == ["P1", "P2"] and enc.fitted_on["exclude_labels"] == [excluded]
        latents.append(enc.transform(full))
    np.testing.assert_array_equal(latents[0], latents[1])


def test_scanvi_needs_labels_and_two_classes(split):
    train, _ = split
    t = train.copy()
    t.obs["label"] = np.nan
    with pytest.raises(InputError, match="no training spot has a label"):
        get_encoder("scanvi", **FAST).fit(t, labels_key="label", progress=False)
    t.obs["label"] = "invasive cancer"
    with pytest.raises(InputError, match="single class"):
        get_encoder("scanvi", **FAST).fit(t, labels_key="label", progress=False)


def test_batch_with_one_spot(split):
    train, full = split
    t = full[(full.obs["patient"] != "P3") | (full.obs_names == full.obs_names[-1])].copy()
    with pytest.raises(InputError, match="fewer than 2 spots"):
        get_encoder("logexpr").fit(t)


def test_missing_genes_at_transform(split):
    train, full = split
    enc = get_encoder("pca", n_top_genes=50).fit(train)
    with pytest.raises(InputError, match="missing"):
        enc.transform(full[:, full.var_names[:-60]])


def test_unknown_encoder():
    with pytest.raises(InputError, match="unknown gene encoder"):
        get_encoder("scvvi")


def test_harmony_corrects_fitted_spots_and_maps_new_ones(split):
    train, full = split
    enc = get_encoder("harmony", pca={"n_pcs": 10}, n_top_genes=100).fit(train)
    plain = get_encoder("harmony", pca={"n_pcs": 10}, n_top_genes=100, harmony={"query": "pca"}).fit(train)
    pca = get_encoder("pca", pca={"n_pcs": 10}, n_top_genes=100).fit(train)
    held = full[full.obs["patient"] == "P3"]
    np.testing.assert_allclose(plain.transform(held), pca.transform(held), atol=1e-5)  # "pca": no correction
    np.testing.assert_array_equal(enc.transform(train[::-1]), enc.corrected_[::-1])  # fitted spots: Harmony's output, by id
    # "symphony": a new batch's own offset is estimated and removed. A copy of the reference shifted by a constant
    # is mapped back onto the reference.
    shift = 0.3 * enc.corrected_.std(0)
    back = enc.map_query(enc.corrected_ + shift, np.zeros(train.n_obs, dtype=int))
    assert np.abs(back - enc.corrected_).mean() < 0.25 * np.abs(shift).mean()
    mapped = enc.transform(held)
    assert not np.allclose(mapped, pca.transform(held))
    # one offset per batch: mapping a patient alone or together with another patient gives the same coordinates
    both = full[full.obs["patient"].isin(["P3", "P1"]).to_numpy()]
    np.testing.assert_allclose(enc.transform(both)[(both.obs["patient"] == "P3").to_numpy()], mapped, atol=1e-4)


def test_audit_table_and_figure(split, tmp_path):
    from stguide.evaluate.audit import BATCH_METRICS, audit, umap_coords
    from stguide.report.figures import plot_umaps
    from stguide.report.markdown import write_audit

    _, full = split
    reps = {n: get_encoder(n, pca={"n_pcs": 10}, n_top_genes=100).fit(full).transform(full) for n in ("logexpr", "pca")}
    table = audit(reps, full.obs["patient"].to_numpy(), full.obs["label"].to_numpy(), x_pre=reps["pca"])
    assert list(table.index) == ["logexpr", "pca"] and set(BATCH_METRICS) <= set(table.columns)
    assert ((table >= 0) & (table <= 1)).all().all()
    write_audit(table, tmp_path, "test")
    assert (tmp_path / "audit.md").read_text().startswith("Produced by: `test`")
    plot_umaps({n: (umap_coords(x), full.obs["patient"].to_numpy(), full.obs["label"].to_numpy()) for n, x in reps.items()},
               tmp_path / "umap.png")
    assert (tmp_path / "umap.png").stat().st_size > 10_000


def test_gene_side_lopo(split, tmp_path):
    from stguide.evaluate.genes_lopo import run_gene_lopo

    _, full = split
    res = run_gene_lopo(full, ["logexpr", "pca"], tmp_path, progress=False)
    assert sorted(res["methods"]) == ["logexpr", "pca"]
    for m in res["methods"].values():
        assert sorted(m["folds"]) == ["P1", "P2", "P3"] and 0 <= m["mean"]["bacc"] <= 1
        # which classes transfer: recall per class (over the folds where a class is present) and the 3-class view
        assert set(m["recall"]) == set(full.obs["label"].dropna().astype(str)) - {"undetermined"}
        assert 0 <= m["mean"]["bacc3"] <= 1
    assert json.loads((tmp_path / "folds" / "P2" / "pca" / "fit.json").read_text())["fitted_on"]["patients"] == ["P1", "P3"]
    audit = (tmp_path / "folds" / "P2" / "pca" / "leakage_audit.json").read_text()
    assert '"P2"' not in audit
    # an interrupted run continues: cached cells are reused (same numbers), a changed setting refits
    (tmp_path / "folds" / "P3" / "pca" / "metrics.json").unlink()
    again = run_gene_lopo(full, ["logexpr", "pca"], tmp_path, progress=False)
    assert again["methods"] == res["methods"]
    stamp = (tmp_path / "folds" / "P1" / "pca" / "key.txt").read_text()
    run_gene_lopo(full, ["pca"], tmp_path, genes=GeneConfig.from_dict({"pca": {"n_pcs": 5}}), progress=False)
    assert (tmp_path / "folds" / "P1" / "pca" / "key.txt").read_text() != stamp


def test_scvi_mixes_patients_that_logexpr_keeps_apart(tmp_path):
    """The synthetic patient effect (per-gene factors, a patient-only program, library size) separates patients
    completely in log-expression; scVI at its default (no hand-set epochs: scvi-tools' rule, here 400 epochs ×
    4 minibatches of 128) mixes them. The fit records the steps it took."""
    import torch

    from stguide.data import make_synthetic
    from stguide.evaluate.audit import AuditConfig, batch_metrics

    a = make_synthetic(3, 1, 144, seed=0, image_dir=tmp_path)
    batch = a.obs["patient"].astype(str).to_numpy()
    ilisi = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 300-gene model trains faster on one thread than on two competing ones
    try:
        for name in ("logexpr", "scvi"):
            enc = get_encoder(name, scvi={"n_latent": 10}).fit(a, progress=False)
            ilisi[name] = batch_metrics(enc.transform(a), batch, cfg=AuditConfig(n_neighbors=30))["ilisi"]
    finally:
        torch.set_num_threads(threads)
    assert enc.fitted_on["training"]["scvi"] == {"epochs_asked": 400, "epochs": 400, "steps": 1600, "batch_size": 128,
                                                 "spots": 432, "rule": "auto"}
    assert ilisi["logexpr"] < 0.05
    assert ilisi["scvi"] > ilisi["logexpr"] + 0.15, ilisi  # measured: 0.00 vs 0.25


def test_auto_epochs_follow_scvi_tools_rule():
    """``auto``: more epochs for a small dataset than for a large one, capped at 400 as scvi-tools caps it (the
    same numbers as scvi-tools' own heuristic), and scANVI's third of it within 2–10."""
    from scvi.model._utils import get_max_epochs_heuristic

    from stguide.genes.config import auto_epochs, auto_scanvi_epochs

    sizes = [10, 500, 13_620, 20_000, 40_000, 160_000, 10**7]
    assert [auto_epochs(n) for n in sizes] == [get_max_epochs_heuristic(n) for n in sizes]
    assert auto_epochs(500) == 400 and auto_epochs(40_000) == 200 > auto_epochs(160_000) == 50 and auto_epochs(10**7) == 1
    assert auto_scanvi_epochs(500) == 10 and auto_scanvi_epochs(160_000) == 10 and auto_scanvi_epochs(10**7) == 2
    assert GeneConfig().scvi.max_epochs == "auto" and GeneConfig().scanvi.max_epochs == "auto"


@pytest.mark.parametrize(("change", "key"), [({"scvi": {"query": "scarches"}}, "genes.scvi.query"),
                                             ({"scvi": {"max_epochs": 0}}, "genes.scvi.max_epochs"),
                                             ({"scvi": {"max_epochs": "long"}}, "genes.scvi.max_epochs"),
                                             ({"sysvi": {"n_prior_components": 0}}, "genes.sysvi.n_prior_components")])
def test_bad_stage1_settings_name_the_key(change, key):
    with pytest.raises(InputError, match=key.replace(".", r"\.")):
        GeneConfig.from_dict(change)


def test_sysvi_declares_how_it_embeds_an_unseen_patient(split):
    """SysVI's encoder takes the patient and scvi-tools cannot scArches a new one into it: an unseen patient is
    the mean of its encodings under the training patients, the leakage audit says so, and asking for scArches
    warns instead of being dropped silently."""
    train, full = split
    cfg = dict(scvi={"max_epochs": 2, "n_latent": 4, "encode_covariates": True, "query": "scarches"}, n_top_genes=50)
    with pytest.warns(UserWarning, match="not available for SysVI"):
        enc = get_encoder("sysvi", **cfg).fit(train, progress=False)
    assert enc.query_mapping()["method"] == "mean-over-training-patients"
    held = (full.obs["patient"] == "P3").to_numpy()
    z = enc.transform(full)
    np.testing.assert_allclose(z[held], enc._mean_over_batches(full[held][:, enc.genes]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["scvi", "scanvi"])
def test_scarches_query_never_reads_the_held_out_labels(name, split):
    """scArches mapping of an unseen patient (encoder sees the patient, reference frozen, the new patient's
    covariate weights trained on its counts): scrambling that patient's labels gives the same latent; the reference
    latent of the training patients is untouched by the mapping; the mapping moves the unseen patient's latent
    (it is not a no-op); and it is declared for the leakage audit."""
    train, full = split
    cfg = dict(scvi={"max_epochs": 10, "n_latent": 6, "encode_covariates": True, "query": "scarches", "query_epochs": 5},
               scanvi={"max_epochs": 2}, n_top_genes=100)
    enc = get_encoder(name, **cfg).fit(train, labels_key="label", progress=False)
    held = (full.obs["patient"] == "P3").to_numpy()
    before = enc.transform(train)
    z = enc.transform(full)
    scrambled = full.copy()
    scrambled.obs["label"] = np.random.default_rng(1).permutation(scrambled.obs["label"].astype(str).to_numpy())
    np.testing.assert_array_equal(enc.transform(scrambled), z)
    np.testing.assert_array_equal(enc.transform(train), before)
    plain = get_encoder(name, **{**cfg, "scvi": {**cfg["scvi"], "query": "encode"}})
    plain.__dict__.update({k: v for k, v in enc.__dict__.items() if k != "config"})
    assert not np.allclose(plain.transform(full)[held], z[held], atol=1e-4)
    assert enc.query_mapping()["labels_used"] is False and plain.query_mapping() is None
