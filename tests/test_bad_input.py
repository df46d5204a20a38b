"""Bad input: one clear InputError naming the file, the problem and the fix; the CLI prints it without a traceback."""
import numpy as np
import pytest

from her2st_fake import make
from stguide.cli import main
from stguide.data import read_anndata, read_her2st
from stguide.errors import InputError


def test_fake_layout_reads(tmp_path):
    a = read_her2st(make(tmp_path / "h", labels=["invasive cancer"] * 5), progress=False)
    assert a.n_obs == 5 and a.obs["label"].notna().all()
    assert a.uns["sections"]["A1"]["um_per_px"] == pytest.approx(2.0)


def test_count_file_missing_for_spot_file(tmp_path):
    root = make(tmp_path / "h")
    (root / "ST-cnts" / "A1.tsv.gz").unlink()
    with pytest.raises(InputError) as e:
        read_her2st(root, progress=False)
    assert "A1.tsv.gz" in e.value.file and "has no count file" in e.value.problem and e.value.fix


def test_spot_file_missing_for_count_file(tmp_path):
    root = make(tmp_path / "h")
    (root / "ST-spotfiles" / "A1_selection.tsv").unlink()
    with pytest.raises(InputError, match="has no spot file"):
        read_her2st(root, progress=False)


def test_missing_image(tmp_path, synthetic):
    h5 = tmp_path / "x.h5ad"
    a = synthetic.copy()
    a.obsm["spatial"] = a.obs[["x_px", "y_px"]].to_numpy()
    a.uns = {}
    a.write_h5ad(h5)
    with pytest.raises(InputError) as e:
        read_anndata(h5, tmp_path / "nope.tif", 0.5, patient_key="patient", section_key="section")
    assert "nope.tif" in str(e.value) and "does not exist" in e.value.problem


def test_truncated_image(tmp_path):
    root = make(tmp_path / "h")
    jpg = root / "ST-imgs" / "A" / "A1" / "HE.jpg"
    jpg.write_bytes(jpg.read_bytes()[:200])
    with pytest.raises(InputError, match="cannot be read"):
        read_her2st(root, progress=False)


def test_spots_outside_image(tmp_path):
    root = make(tmp_path / "h", pixel_offset=250.0)  # spot (3,3) lands at 550 px in a 500 px image
    with pytest.raises(InputError) as e:
        read_her2st(root, progress=False)
    assert "outside the 500×500 px image" in e.value.problem and "A1_3x3" not in e.value.problem


def test_duplicate_spot_ids(tmp_path):
    root = make(tmp_path / "h", spots=[(1, 1), (2, 1), (1, 2), (2, 2), (1, 1)], counts=np.ones((5, 3), int))
    with pytest.raises(InputError, match="duplicate spot ids"):
        read_her2st(root, progress=False)


def test_unknown_label_class(tmp_path):
    root = make(tmp_path / "h", labels=["invasive cancer", "tumour-ish", "adipose tissue", "adipose tissue", "undetermined"])
    with pytest.raises(InputError) as e:
        read_her2st(root, progress=False)
    assert "tumour-ish" in e.value.problem and "classes=" in e.value.fix


@pytest.mark.parametrize("bad,msg", [(-1, "negative"), (np.nan, "NaN"), (0.5, "not integers")])
def test_bad_counts(tmp_path, bad, msg):
    counts = np.ones((5, 3))
    counts[2, 1] = bad
    root = make(tmp_path / "h", counts=counts)
    with pytest.raises(InputError, match=msg) as e:
        read_her2st(root, progress=False)
    assert "A1.tsv.gz" in e.value.file


def test_h5ad_without_spatial(tmp_path, synthetic):
    h5 = tmp_path / "x.h5ad"
    a = synthetic.copy()
    a.uns = {}
    del a.obsm["spatial"]  # the data model writes it; a foreign AnnData may lack it
    a.write_h5ad(h5)
    with pytest.raises(InputError, match=r"obsm\['spatial'\]"):
        read_anndata(h5, None, None, patient="P")


def test_cli_prints_one_clear_error(tmp_path, capsys):
    root = make(tmp_path / "h")
    (root / "ST-cnts" / "A1.tsv.gz").unlink()
    code = main(["data", "her2st", str(root), "--out", str(tmp_path / "d.h5ad")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and "fix:" in err and "Traceback" not in err
    assert not (tmp_path / "d.h5ad").exists()


def test_label_rows_matching_no_spot(tmp_path):
    root = make(tmp_path / "h", labels=["invasive cancer"] * 5)
    lbl = root / "ST-pat" / "lbl" / "A1_labeled_coordinates.tsv"
    lbl.write_text(lbl.read_text() + "r9\t9.0\t9.0\t0\t0\tadipose tissue\n")
    with pytest.warns(UserWarning, match="1 label row.*match no count spot"):
        a = read_her2st(root, progress=False)
    assert a.uns["label_join"]["A1"]["unmatched"] == ["9x9 (adipose tissue)"]
    with pytest.raises(InputError) as e:
        read_her2st(root, unmatched_labels="error", progress=False)
    assert "A1_labeled_coordinates.tsv" in e.value.file and "match no count spot" in e.value.problem


def test_empty_section(tmp_path):
    from stguide.data.model import SectionInfo, make_section

    with pytest.raises(InputError, match="0 spots"):
        make_section(np.zeros((0, 2)), ["a", "b"], [], info=SectionInfo("S", "P", None, None, 100.0),
                     x_px=[], y_px=[], file=tmp_path / "s.tsv")


def test_genes_do_not_overlap(tmp_path):
    from stguide.data.model import SectionInfo, combine_sections, make_section

    parts = [make_section(np.ones((2, 2)), genes, ["s1", "s2"], info=SectionInfo(n, "P", None, None, 100.0),
                          x_px=[0, 1], y_px=[0, 1], file=tmp_path / n) for n, genes in (("S1", ["A", "B"]), ("S2", ["ENSG1", "ENSG2"]))]
    with pytest.raises(InputError) as e:
        combine_sections(parts, source=tmp_path)
    assert "empty intersection" in e.value.problem and "Ensembl" in e.value.fix


def test_probe_with_a_single_training_class():
    from stguide.evaluate.probes import fit_linear_probe

    with pytest.raises(InputError, match="single class"):
        fit_linear_probe(np.zeros((4, 2)), np.array(["a"] * 4), np.array([1, 1, 2, 2]))


def test_probe_settings_out_of_range_are_refused_by_name(tmp_path, capsys):
    """A probe setting the solvers cannot take (a tolerance of 0, a negative projection) is one error naming the key,
    from the config and from stguide genes lopo's --config before the data is read."""
    from stguide.evaluate.probes import ProbeConfig

    for doc, key in (({"tol": 0.0}, "tol"), ({"knn_dims": -1}, "knn_dims"), ({"Cs": []}, "Cs"), ({"k": 0}, "k")):
        with pytest.raises(InputError) as e:
            ProbeConfig.from_dict(doc)
        assert e.value.file == f"config:probe.{key}", e.value.file
    cfg = tmp_path / "c.yaml"
    cfg.write_text("probe: {tol: -1.0}\n")
    assert main(["genes", "lopo", "--data", str(tmp_path / "missing.h5ad"), "--config", str(cfg), "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert "config:probe.tol" in err and "positive" in err and not (tmp_path / "g").exists()


def test_config_unknown_key_and_wrong_type():
    from stguide.contrastive import ContrastiveConfig
    from stguide.genes import GeneConfig

    with pytest.raises(InputError) as e:
        GeneConfig.from_dict({"scvi": {"n_latnet": 10}})
    assert e.value.file == "config:genes.scvi.n_latnet" and "n_latent" in e.value.fix
    with pytest.raises(InputError) as e:
        ContrastiveConfig.from_dict({"epochs": "ten"})
    assert e.value.file == "config:contrastive.epochs" and "integer" in e.value.problem
    with pytest.raises(InputError, match="true/false"):
        ContrastiveConfig.from_dict({"augment": "yes"})


def test_cli_config_file_is_validated_before_any_work(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("genes:\n  max_epoch: 3\n")
    assert main(["genes", "fit", "--data", str(tmp_path / "missing.h5ad"), "--config", str(cfg), "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert "config:genes.max_epoch" in err and "unknown key" in err and not (tmp_path / "g").exists()


def test_cli_bad_loss_kwargs_json(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "d.h5ad"), "--genes", str(tmp_path / "g"), "--loss-kwargs", "{alpha: 0.5",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "--loss-kwargs" in err and "not valid JSON" in err and "Traceback" not in err
