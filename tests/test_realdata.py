"""The readers on the real HER2ST copy (skipped when ../shared/realdata is absent)."""
import numpy as np
import pytest

from stguide.data import read_hest
from stguide.data.images import open_level
from stguide.data.patches import PatchConfig, extract_patches

pytestmark = pytest.mark.realdata

EXPECTED_LABELLED = {"B1": 295, "C1": 176, "D1": 306, "E1": 587, "F1": 691}


def test_her2st_sections_and_patients(her2st):
    a, _ = her2st
    assert a.obs["section"].nunique() == 36
    assert sorted(a.obs["patient"].unique()) == list("ABCDEFGH")
    assert a.uns["genes"]["rule"] == "intersection"
    assert a.uns["genes"]["n_dropped"] == a.uns["genes"]["n_union"] - a.n_vars > 0
    assert a.X.dtype == np.int32


def test_her2st_label_join(her2st):
    a, _ = her2st
    per = a.obs.groupby("section", observed=True)["label"].count()
    assert {s: int(n) for s, n in per.items() if n} == EXPECTED_LABELLED
    assert int(a.obs["label"].notna().sum()) == 2055
    assert set(a.obs.loc[a.obs["label"].notna(), "label_source"]) == {"pathologist"}


def test_her2st_unmatched_label_rows_are_reported(her2st):
    a, messages = her2st
    join = a.uns["label_join"]
    assert len(join["C1"]["unmatched"]) == 1
    assert len(join["D1"]["unmatched"]) == 3
    assert len(join["F1"]["no_coordinates"]) == 1
    shown = " ".join(messages)
    assert "C1_labeled_coordinates.tsv: 1 label row(s) match no count spot" in shown
    assert "D1_labeled_coordinates.tsv: 3 label row(s) match no count spot" in shown
    assert "F1_labeled_coordinates.tsv: 1 label row(s) have no x/y coordinates" in shown


def test_her2st_resolution_is_measured(her2st):
    a, _ = her2st
    um = {s: v["um_per_px"] for s, v in a.uns["sections"].items()}
    assert all(0.90 < um[f"A{i}"] < 0.94 for i in range(1, 7))  # patient A was scanned coarser
    assert all(0.66 < v < 0.71 for s, v in um.items() if not s.startswith("A"))
    with_image = sorted(s for s, v in a.uns["sections"].items() if v["has_image"])
    assert with_image == ["B4", "C2", "C3", "C4", "C5", "C6"]


def test_hest_reads_seven_sections_with_proxy_labels(realdata):
    h = read_hest(realdata / "hest", labels_dir=realdata / "hest" / "labels", progress=False)
    assert sorted(h.obs["section"].unique()) == ["A2", "B4", "C2", "C3", "C4", "C5", "C6"]
    assert all(v["has_image"] for v in h.uns["sections"].values())
    assert sorted(h.obs["patient"].unique()) == ["A", "B", "C"]
    assert set(h.obs["label_source"].dropna()) == {"proxy"}
    assert h.uns["sections"]["A2"]["um_per_px"] == pytest.approx(3.1917)


def _tissue_fraction(p: np.ndarray) -> np.ndarray:
    p = p.astype(float)
    mx, mn = p.max(-1), p.min(-1)
    sat = (mx - mn) / np.maximum(mx, 1)
    return ((sat > 0.15) & (mx < 235)).mean(axis=(-1, -2))


def test_b4_patches_land_on_tissue(her2st, tmp_path):
    a, _ = her2st
    b4 = a[a.obs["section"] == "B4"].copy()
    store = extract_patches(b4, PatchConfig(200, 64), tmp_path, progress=False)
    assert len(store) == b4.n_obs == 283
    assert store.meta["sections"]["B4"]["read_scale"] >= 2  # decoded below full resolution (JPEG draft)
    t = _tissue_fraction(store.take(b4.obs_names))
    assert np.median(t) > 0.5 and np.mean(t > 0.2) > 0.9
    info = a.uns["sections"]["B4"]
    lv = open_level(info["image"], 4)
    half = 200 / info["um_per_px"] / 2
    w, h = lv.full_size
    corners = np.array([lv.cut(x, y, half, 64)[0] for x, y in [(half, half), (w - half, h - half)]])
    assert _tissue_fraction(corners).max() < 0.1
