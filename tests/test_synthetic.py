"""The embedded default: determinism, the data model, and a patient effect as strong as on real data."""
import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from stguide.data import make_synthetic, validate_dataset
from stguide.genes.expression import log_normalise


def test_same_seed_same_dataset(tmp_path):
    a = make_synthetic(2, 1, 36, seed=3, image_dir=tmp_path / "a")
    b = make_synthetic(2, 1, 36, seed=3, image_dir=tmp_path / "b")
    c = make_synthetic(2, 1, 36, seed=4, image_dir=tmp_path / "c")
    assert (a.X != b.X).nnz == 0
    assert a.obs[["label", "x_px", "y_px"]].equals(b.obs[["label", "x_px", "y_px"]])
    for s in a.uns["sections"]:
        ia = np.asarray(Image.open(a.uns["sections"][s]["image"]))
        ib = np.asarray(Image.open(b.uns["sections"][s]["image"]))
        assert np.array_equal(ia, ib)
    assert (a.X != c.X).nnz > 0


def test_data_model(synthetic):
    a = validate_dataset(synthetic)
    assert a.X.dtype == np.int32 and a.X.format == "csr"
    assert set(a.obs["label_source"]) == {"synthetic"}
    assert a.obs["label"].notna().all()
    ums = {v["um_per_px"] for v in a.uns["sections"].values()}
    assert len(ums) == 3  # each patient has its own scanner resolution


def test_classes_form_contiguous_regions(synthetic):
    """Grid neighbours share a class far more often than chance."""
    a = synthetic[synthetic.obs["section"] == synthetic.obs["section"].iloc[0]]
    xy = np.array([list(map(int, s.split("x"))) for s in a.obs["spot"]])
    lab = a.obs["label"].astype(str).to_numpy()
    pos = {tuple(p): c for p, c in zip(xy, lab, strict=True)}
    same = [pos[(x + 1, y)] == c for (x, y), c in pos.items() if (x + 1, y) in pos]
    chance = sum((lab == c).mean() ** 2 for c in set(lab))
    assert np.mean(same) > chance + 0.2


def test_patient_effect_dominates_raw_expression(synthetic):
    """As on real HER2ST: raw expression identifies the patient almost perfectly, better than it identifies the class."""
    x = log_normalise(synthetic.X)
    pat = synthetic.obs["patient"].astype(str).to_numpy()
    acc_patient = cross_val_score(LogisticRegression(max_iter=2000), x, pat, cv=3).mean()
    assert acc_patient > 0.95
    # nearest neighbours in expression space come from the same patient, whatever their class
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=6).fit(x)
    idx = nn.kneighbors(x, return_distance=False)[:, 1:]
    assert (pat[idx] == pat[:, None]).mean() > 0.9
