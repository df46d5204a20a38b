"""Where a scaling run's time goes (issue 16, benchmark 4's follow-up): one size of ``benchmarks/scaling.py`` run
again under cProfile, and the two side-by-side comparisons behind its fixes.

1. The run folder's cells are done again (``folds/`` removed; the patch cache and the trunk features are reused, the
   image audit and UMAP are off) under cProfile: seconds per part (the run's own ``timings``) and the functions that
   took the most time of their own.
2. Spot lookups on the run's patch store: ``np.isin(obs_names, store.obs_names)`` (numpy compares every pair when
   one side is an object array) against ``store.has(obs_names)`` (one dict), the same mask.
3. The kNN probe on the ``random`` cell's features: scikit-learn's ``metric="cosine"`` against ``fit_knn_probe``
   (Euclidean on L2-normalised features), the agreement of their predictions.

Usage: python benchmarks/scaling_profile.py --run runs/bench/scaling/run-32768 [--results DIR] [--top 25]
(run ``benchmarks/scaling.py`` for that size first; run on quiet cores).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import platform
import pstats
import shutil
import time
from datetime import date
from pathlib import Path

import numpy as np

from stguide.io import write_json_atomic


def profiled_run(run: Path, top: int) -> tuple[dict, str]:
    from stguide.evaluate.config import load_config
    from stguide.evaluate.experiment import run_experiment

    if (run / "folds").exists():
        shutil.rmtree(run / "folds")
    cfg = load_config(run / "config.yaml", {"report": {"image_audit": False, "umap": False}})
    prof = cProfile.Profile()
    prof.enable()
    res = run_experiment(cfg, run, progress=False, command="benchmarks/scaling_profile.py")
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).strip_dirs().sort_stats("tottime").print_stats(top)
    return {"runtime_s": res["runtime_s"], "timings": res["timings"]}, out.getvalue()


def best_of(f, repeat: int = 2) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = f()
        best = min(best, time.perf_counter() - t0)
    return best, value


def lookups(run: Path) -> dict:
    import anndata as ad

    from stguide.data.patches import PatchStore

    store = PatchStore(next((run / "patches").glob("patches-*")))
    names = np.asarray(ad.read_h5ad(run / "data" / "dataset.h5ad", backed="r").obs_names)
    t_isin, a = best_of(lambda: np.isin(names, store.obs_names), repeat=1)
    t_has, b = best_of(lambda: store.has(names))
    return {"spots": len(names), "np_isin_s": t_isin, "store_has_s": t_has, "ratio": t_isin / t_has,
            "same_mask": bool(np.array_equal(a, b))}


def knn(run: Path) -> dict:
    from sklearn.neighbors import KNeighborsClassifier

    from stguide.evaluate.probes import ProbeConfig, fit_knn_probe

    z = np.load(run / "folds" / "P1" / "random" / "features.npz", allow_pickle=True)
    x, y, te = z["x"].astype(np.float32), z["label"], z["test"]
    k = ProbeConfig().k
    t_cos, a = best_of(lambda: KNeighborsClassifier(k, metric="cosine").fit(x[~te], y[~te]).predict(x[te]))
    exact = ProbeConfig(knn_exact_max=int((~te).sum()))  # this compares exact searches
    t_ours, b = best_of(lambda: fit_knn_probe(x[~te], y[~te], exact).predict(x[te]))
    return {"train": int((~te).sum()), "test": int(te.sum()), "dim": int(x.shape[1]), "sklearn_cosine_s": t_cos,
            "ours_s": t_ours, "ratio": t_cos / t_ours, "agreement": float(np.mean(np.asarray(a) == np.asarray(b)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="a run folder of benchmarks/scaling.py (run-<spots>)")
    ap.add_argument("--results", help="where profile.txt and results.json go (default benchmarks/results/scaling/profile-<spots>)")
    ap.add_argument("--top", type=int, default=25, help="functions listed, by their own time")
    args = ap.parse_args()
    run = Path(args.run)
    if not (run / "config.yaml").is_file():
        ap.error(f"{run} is not a scaling run folder (no config.yaml): run benchmarks/scaling.py for that size first")
    results = Path(args.results or f"benchmarks/results/scaling/profile-{run.name.removeprefix('run-')}")
    results.mkdir(parents=True, exist_ok=True)
    timings, table = profiled_run(run, args.top)
    print(f"run again under cProfile: {timings['runtime_s']:.0f} s — "
          + ", ".join(f"{k} {v:.1f}" for k, v in timings["timings"].items()), flush=True)
    look, near = lookups(run), knn(run)
    print(f"lookups of {look['spots']} spots: np.isin {look['np_isin_s']:.2f} s, store.has {look['store_has_s']:.4f} s "
          f"({look['ratio']:.0f}×, same mask: {look['same_mask']})")
    print(f"kNN probe, {near['train']} × {near['test']} spots, {near['dim']} dims: scikit-learn cosine {near['sklearn_cosine_s']:.2f} s, "
          f"ours {near['ours_s']:.2f} s ({near['ratio']:.2f}×), predictions agree on {near['agreement']:.5f}")
    head = f"Produced by: `python benchmarks/scaling_profile.py --run {run}` ({date.today()}, {platform.node()}, cProfile on)\n\n"
    (results / "profile.txt").write_text(head + table)
    write_json_atomic(results / "results.json", {"run": str(run), "date": str(date.today()), "profiled": timings,
                                                 "lookups": look, "knn_probe": near})
    print(f"wrote {results}/profile.txt and results.json")


if __name__ == "__main__":
    main()
