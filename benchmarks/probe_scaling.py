"""The probes' scaling, decided (issue 30): converged and warm-started linear fits, projected kNN, against the exact probes.

Three parts, all on real HER2ST image features (the HEST-1k layout's 7 sections of patients A, B, C; PROXY labels):

1. **Agreement on the real LOPO folds.** ``stguide experiment benchmarks/probe_scaling.yaml`` (run here when its
   folder lacks ``results.json``) gives each fold's features of the frozen tf_efficientnet_lite0 trunk at ImageNet
   and at random init (1280-d). On every fold × trunk: the linear probe as the earlier results fitted it (cold,
   ``tol`` 1e-4, scikit-learn's default), cold and warm-started at the default ``tol`` (1e-6), and cold at 1e-8 (the
   optimum, as a reference): the chosen C, held-out balanced accuracy, the largest distance of the inner scores from
   the reference's; the same at ``c_tolerance`` 0.01 (the frozen-trunk experiments' rule). The kNN probe: exact,
   projected on ``knn_dims`` principal axes and re-ranked (``knn_exact_max: 0``), and through the index
   (``knn_index_min: 0``): balanced accuracy, the share of test spots predicted alike, the share of the exact 15
   neighbours found, the projection's share of the variance. Target: |Δ bacc| ≤ 0.005 (warm vs cold at one ``tol``;
   approximate vs exact kNN).
2. **The earlier tolerance on a method comparison.** Every cell of ``benchmarks/executor_speedup.yaml``'s matrix
   (3 folds × 6 methods × 3 seeds of heads trained on the frozen trunk's features; run here into ``--matrix`` when it
   lacks ``results.json``) is probed again from its saved features, with the probes the matrix pins (``tol`` 1e-4,
   cold) and with the defaults (both at its ``c_tolerance`` 0.01): each method's mean held-out balanced accuracy
   under both, and each cell's change.
3. **Scaling from 8k to 64k spots.** New spots interpolated between pairs of real spots of one patient × class group
   (the ImageNet trunk's features of fold A; SMOTE's draw, the groups' sizes kept in proportion; :func:`drawn`),
   patient A held out as in fold A. Timed at each size (the best of two runs): cold and warm linear probes at the default ``tol``, exact,
   projected and indexed kNN, and the probes as configured by default: seconds, each doubling's ratio (target: none
   above 2.4×), L-BFGS iterations, the kNN's agreement with exact search. pynndescent's numba kernels are compiled
   once per process before the timings (a first fit on 2,000 spots); that one-time cost is reported on its own.

Writes ``results.json`` and ``table.md`` to ``--results``. Run on quiet cores.

Usage: python benchmarks/probe_scaling.py [--work runs/bench/probe-scaling] [--matrix runs/bench/executors/serial]
           [--results benchmarks/results/probe_scaling] [--sizes 8192 16384 32768 65536]
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from dataclasses import asdict, replace
from datetime import date
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import normalize

from stguide.config import load_yaml
from stguide.evaluate.knn import ApproximateKNN
from stguide.evaluate.metrics import classification_metrics
from stguide.evaluate.probes import ProbeConfig, fit_knn_probe, fit_linear_probe
from stguide.io import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "benchmarks" / "probe_scaling.yaml"
MATRIX = ROOT / "benchmarks" / "executor_speedup.yaml"
REAL = ROOT.parent / "shared" / "realdata" / "hest"
OLD = ProbeConfig(tol=1e-4, warm_start=False)  # the probes of every earlier result
_ITERATIONS: list[int] = []
_fit = LogisticRegression.fit


def _counted_fit(self, *args, **kwargs):
    out = _fit(self, *args, **kwargs)
    _ITERATIONS.append(int(np.max(self.n_iter_)))
    return out


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return z["x"].astype(np.float32), z["label"].astype(str), z["test"].astype(bool), z["patient"].astype(str)


def linear(x, y, g, te, cfg: ProbeConfig) -> dict:
    _ITERATIONS.clear()
    t = time.perf_counter()
    model, c, inner = fit_linear_probe(x[~te], y[~te], g[~te], cfg)
    pred = model.predict(x[te])
    return {"s": time.perf_counter() - t, "C": float(c), "iterations": int(sum(_ITERATIONS)), "pred": pred, "inner": inner,
            "bacc": classification_metrics(y[te], pred)["bacc"]}


def exact_neighbours(x, te, k: int) -> np.ndarray:
    return NearestNeighbors(n_neighbors=k).fit(normalize(x[~te])).kneighbors(normalize(x[te]), return_distance=False)


def knn(x, y, te, cfg: ProbeConfig, exact: np.ndarray | None = None) -> dict:
    t = time.perf_counter()
    model = fit_knn_probe(x[~te], y[~te], cfg)
    pred = model.predict(x[te])
    out = {"s": time.perf_counter() - t, "pred": pred, "bacc": classification_metrics(y[te], pred)["bacc"]}
    if exact is not None and isinstance(model, ApproximateKNN):  # the share of the exact neighbours it found
        nb = model.neighbours(x[te])
        out["recall"] = float((nb[:, :, None] == exact[:, None, :]).any(1).mean())
        out["variance_kept"] = float(model._pca.explained_variance_ratio_.sum()) if model._pca is not None else 1.0
    return out


def _inner_gap(a: dict, b: dict) -> float:
    return max(abs(a[c] - b[c]) for c in a)


def agreement(work: Path) -> list[dict]:
    rows = []
    base = ProbeConfig()
    for f in sorted(work.glob("folds/*/*/features.npz")):
        fold, method = f.parent.parent.name, f.parent.name
        x, y, te, g = _load(f)
        r: dict = {"fold": fold, "features": method, "train": int((~te).sum()), "test": int(te.sum()), "dim": int(x.shape[1])}
        for rule, ctol in (("", 0.0), ("tol001_", 0.01)):
            fits = {"old": linear(x, y, g, te, replace(OLD, c_tolerance=ctol)),
                    "cold": linear(x, y, g, te, replace(base, warm_start=False, c_tolerance=ctol)),
                    "warm": linear(x, y, g, te, replace(base, c_tolerance=ctol)),
                    "ref": linear(x, y, g, te, replace(base, warm_start=False, tol=1e-8, c_tolerance=ctol))}
            for name, fit in fits.items():
                r.update({f"{rule}{name}_bacc": fit["bacc"], f"{rule}{name}_C": fit["C"], f"{rule}{name}_iterations": fit["iterations"],
                          f"{rule}{name}_inner_gap": _inner_gap(fit["inner"], fits["ref"]["inner"])})
            r[f"{rule}warm_same_pred"] = float((fits["cold"]["pred"] == fits["warm"]["pred"]).mean())
        ex = exact_neighbours(x, te, base.k)
        exact = knn(x, y, te, replace(base, knn_exact_max=len(y)))
        proj = knn(x, y, te, replace(base, knn_exact_max=0), ex)
        index = knn(x, y, te, replace(base, knn_exact_max=0, knn_index_min=0), ex)
        r.update(knn_exact_bacc=exact["bacc"], knn_projected_bacc=proj["bacc"], knn_indexed_bacc=index["bacc"],
                 knn_projected_same_pred=float((exact["pred"] == proj["pred"]).mean()), knn_projected_recall=proj["recall"],
                 knn_indexed_same_pred=float((exact["pred"] == index["pred"]).mean()), knn_indexed_recall=index["recall"],
                 variance_kept=proj["variance_kept"])
        rows.append(r)
        print(f"fold {fold} {method:<9} linear old {r['old_bacc']:.4f} (C {r['old_C']:g}) cold {r['cold_bacc']:.4f} (C {r['cold_C']:g}) "
              f"warm {r['warm_bacc']:.4f} (C {r['warm_C']:g}) ref {r['ref_bacc']:.4f}; kNN exact {r['knn_exact_bacc']:.4f} "
              f"projected {r['knn_projected_bacc']:.4f} indexed {r['knn_indexed_bacc']:.4f}", flush=True)
    return rows


def matrix(folder: Path) -> list[dict]:
    """Each matrix cell probed again from its saved features: the pinned probes against the defaults."""
    pinned = load_yaml(MATRIX).get("probe") or {}
    old = ProbeConfig.from_dict(pinned)
    new = ProbeConfig.from_dict({k: v for k, v in pinned.items() if k not in ("tol", "warm_start")})
    rows = []
    for f in sorted(folder.glob("folds/*/*/**/features.npz")):
        rel = f.parent.relative_to(folder / "folds").parts
        x, y, te, g = _load(f)
        a, b = linear(x, y, g, te, old), linear(x, y, g, te, new)
        rows.append({"fold": rel[0], "method": rel[1], "seed": rel[2] if len(rel) > 2 else "", "old_bacc": a["bacc"], "new_bacc": b["bacc"],
                     "old_C": a["C"], "new_C": b["C"], "old_s": a["s"], "new_s": b["s"]})
    print(f"matrix: {len(rows)} cells probed again", flush=True)
    return rows


def drawn(x: np.ndarray, y: np.ndarray, g: np.ndarray, n: int, rng: np.random.Generator):
    """``n`` new spots, each a random point on the segment between two real spots of one patient × class group
    (SMOTE's interpolation), the groups' sizes kept in proportion. The new spots keep the real features' geometry
    (their local dimension, clusters, patient effect) and none repeats a real one. Two other draws were tried and
    dropped: copies of real spots with jitter form clusters of near-duplicates that no real collection has, which the
    approximate neighbour graph cannot cross (its balanced accuracy fell 0.06 below the exact probe's at 64k); a
    Gaussian per group with an isotropic rest of the variance spreads every spot over all 1,280 dimensions, where no
    index beats exact search (the approximate probe took 54 s at 32k spots against 6 s exact)."""
    xs, ys, gs = [], [], []
    groups = [(p, c) for p in np.unique(g) for c in np.unique(y[g == p]) if ((g == p) & (y == c)).sum() >= 2]
    total = sum(((g == p) & (y == c)).sum() for p, c in groups)
    for p, c in groups:
        own = x[(g == p) & (y == c)]
        m = int(round(n * len(own) / total))
        a, b = rng.integers(0, len(own), m), rng.integers(0, len(own), m)
        u = rng.random((m, 1)).astype(np.float32)
        xs.append(own[a] + u * (own[b] - own[a]))
        ys.append(np.full(m, c))
        gs.append(np.full(m, p))
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)


def best_of(probe, *args, repeat: int = 2) -> dict:
    """The probe's result with the smallest of ``repeat`` runs' seconds (the fits are deterministic; the timing is not)."""
    runs = [probe(*args) for _ in range(repeat)]
    return {**runs[0], "s": min(r["s"] for r in runs)}


def scaling(work: Path, sizes: list[int], held_out: str) -> tuple[list[dict], float]:
    x, y, te, g = _load(work / "folds" / held_out / "imagenet" / "features.npz")
    t = time.perf_counter()
    fit_knn_probe(x[:2000], y[:2000], ProbeConfig(knn_exact_max=0, knn_index_min=0)).predict(x[:100])  # compiles pynndescent's kernels
    compile_s = time.perf_counter() - t
    print(f"pynndescent's first fit (2,000 spots, numba compilation included): {compile_s:.1f} s", flush=True)
    rng = np.random.default_rng(0)
    base = ProbeConfig()
    rows = []
    for n in sizes:
        xs, ys, gs = drawn(x, y, g, n, rng)
        tes = gs == held_out
        cold, warm = best_of(linear, xs, ys, gs, tes, replace(base, warm_start=False)), best_of(linear, xs, ys, gs, tes, base)
        ex = exact_neighbours(xs, tes, base.k)
        exact = best_of(knn, xs, ys, tes, replace(base, knn_exact_max=len(ys)))
        proj = best_of(knn, xs, ys, tes, replace(base, knn_exact_max=0), ex)
        index = best_of(knn, xs, ys, tes, replace(base, knn_exact_max=0, knn_index_min=0), ex)
        ntr = int((~tes).sum())
        default, which = (exact, "exact") if ntr <= base.knn_exact_max else (index, "indexed") if ntr > base.knn_index_min else (proj, "projected")
        lin_default = warm if base.warm_start else cold
        r = {"spots": int(len(ys)), "train": ntr, "test": int(tes.sum()), "dim": int(xs.shape[1]),
             "linear_cold_s": cold["s"], "linear_warm_s": warm["s"], "iterations_cold": cold["iterations"],
             "iterations_warm": warm["iterations"], "C_cold": cold["C"], "C_warm": warm["C"],
             "linear_cold_bacc": cold["bacc"], "linear_warm_bacc": warm["bacc"],
             "knn_exact_s": exact["s"], "knn_projected_s": proj["s"], "knn_indexed_s": index["s"],
             "knn_exact_bacc": exact["bacc"], "knn_projected_bacc": proj["bacc"], "knn_indexed_bacc": index["bacc"],
             "knn_projected_same_pred": float((exact["pred"] == proj["pred"]).mean()), "knn_projected_recall": proj["recall"],
             "knn_indexed_same_pred": float((exact["pred"] == index["pred"]).mean()), "knn_indexed_recall": index["recall"],
             "variance_kept": proj["variance_kept"], "default_s": lin_default["s"] + default["s"], "knn_default": which}
        rows.append(r)
        print(f"{n:>6}: linear cold {r['linear_cold_s']:7.2f} s ({r['iterations_cold']} it) warm {r['linear_warm_s']:7.2f} s "
              f"({r['iterations_warm']} it); kNN exact {r['knn_exact_s']:6.2f} s projected {r['knn_projected_s']:6.2f} s "
              f"(recall {r['knn_projected_recall']:.3f}) indexed {r['knn_indexed_s']:6.2f} s (recall {r['knn_indexed_recall']:.3f}); "
              f"as configured {r['default_s']:7.2f} s", flush=True)
    return rows, compile_s


def _ratio(rows: list[dict], i: int, k: str) -> str:
    return f"{rows[i][k] / rows[i - 1][k]:.2f}×" if i else ""


def table(agree: list[dict], mat: list[dict], scale: list[dict], compile_s: float) -> str:
    d = ProbeConfig()
    lines = ["## Agreement on the real LOPO folds (HEST-1k layout, PROXY labels)", "",
             "Linear probe, c_tolerance 0 (the default). old: cold at tol 1e-4 (every earlier result); cold and warm: at tol "
             f"{d.tol:g} (the default); ref: cold at tol 1e-8. Inner gap: the largest distance of the inner CV scores from ref's.", "",
             "| fold | trunk | train × test | bacc old / cold / warm / ref | C old / cold / warm / ref | inner gap old / cold / warm "
             "| L-BFGS iterations old / cold / warm | warm = cold predictions |", "|---|---|---|---|---|---|---|---|"]
    for r in agree:
        lines.append(f"| {r['fold']} | {r['features']} | {r['train']:,} × {r['test']:,} | {r['old_bacc']:.4f} / {r['cold_bacc']:.4f} / "
                     f"{r['warm_bacc']:.4f} / {r['ref_bacc']:.4f} | {r['old_C']:g} / {r['cold_C']:g} / {r['warm_C']:g} / {r['ref_C']:g} | "
                     f"{r['old_inner_gap']:.4f} / {r['cold_inner_gap']:.4f} / {r['warm_inner_gap']:.4f} | "
                     f"{r['old_iterations']:,} / {r['cold_iterations']:,} / {r['warm_iterations']:,} | {100 * r['warm_same_pred']:.1f} % |")
    lines += ["", "The same at c_tolerance 0.01 (the frozen-trunk experiments' rule):", "",
              "| fold | trunk | bacc old / cold / warm / ref | C old / cold / warm / ref |", "|---|---|---|---|"]
    for r in agree:
        lines.append(f"| {r['fold']} | {r['features']} | {r['tol001_old_bacc']:.4f} / {r['tol001_cold_bacc']:.4f} / {r['tol001_warm_bacc']:.4f} / "
                     f"{r['tol001_ref_bacc']:.4f} | {r['tol001_old_C']:g} / {r['tol001_cold_C']:g} / {r['tol001_warm_C']:g} / {r['tol001_ref_C']:g} |")
    lines += ["", f"kNN probe (k {d.k}): exact; projected on {d.knn_dims} principal axes, candidates re-ranked (knn_exact_max 0); indexed "
              "(knn_index_min 0). Recall: the share of the exact neighbours found.", "",
              "| fold | trunk | bacc exact / projected / indexed | same predictions projected / indexed | recall projected / indexed | variance kept |",
              "|---|---|---|---|---|---|"]
    for r in agree:
        lines.append(f"| {r['fold']} | {r['features']} | {r['knn_exact_bacc']:.4f} / {r['knn_projected_bacc']:.4f} / {r['knn_indexed_bacc']:.4f} | "
                     f"{100 * r['knn_projected_same_pred']:.1f} % / {100 * r['knn_indexed_same_pred']:.1f} % | "
                     f"{r['knn_projected_recall']:.4f} / {r['knn_indexed_recall']:.4f} | {r['variance_kept']:.3f} |")
    if agree:
        def worst(a: str, b: str) -> float:
            return max(abs(r[a] - r[b]) for r in agree)
        lines += ["", f"Largest |Δ bacc| (target ≤ 0.005): warm vs cold {worst('warm_bacc', 'cold_bacc'):.4f} (c_tolerance 0), "
                  f"{worst('tol001_warm_bacc', 'tol001_cold_bacc'):.4f} (0.01); cold vs ref {worst('cold_bacc', 'ref_bacc'):.4f}; "
                  f"old vs ref {worst('old_bacc', 'ref_bacc'):.4f} (c_tolerance 0), {worst('tol001_old_bacc', 'tol001_ref_bacc'):.4f} (0.01); "
                  f"kNN projected vs exact {worst('knn_projected_bacc', 'knn_exact_bacc'):.4f}, indexed vs exact "
                  f"{worst('knn_indexed_bacc', 'knn_exact_bacc'):.4f}."]
    if mat:
        lines += ["", "## The earlier tolerance on a method comparison (benchmarks/executor_speedup.yaml's matrix, PROXY labels)", "",
                  "Each cell's saved features probed with the matrix's pinned probes (tol 1e-4, cold) and with the defaults "
                  f"(tol {d.tol:g}, warm), both at its c_tolerance 0.01: mean held-out balanced accuracy over folds × seeds.", "",
                  "| method | cells | bacc pinned | bacc defaults | change | largest cell change | cells whose C moved |", "|---|---|---|---|---|---|---|"]
        for m in sorted({r["method"] for r in mat}):
            rs = [r for r in mat if r["method"] == m]
            o, n = np.mean([r["old_bacc"] for r in rs]), np.mean([r["new_bacc"] for r in rs])
            big = max((r["new_bacc"] - r["old_bacc"] for r in rs), key=abs)
            lines.append(f"| {m} | {len(rs)} | {o:.4f} | {n:.4f} | {n - o:+.4f} | {big:+.4f} | {sum(r['old_C'] != r['new_C'] for r in rs)} |")
        lines += ["", f"Probe seconds, all cells: pinned {sum(r['old_s'] for r in mat):.1f}, defaults {sum(r['new_s'] for r in mat):.1f}."]
    lines += ["", "## Scaling (spots interpolated between real spots of one patient × class group; patient A held out; "
              f"pynndescent's first fit {compile_s:.1f} s once per process, not in the rows)", "",
              "| spots | train × test | linear cold s (doubling) | warm s (doubling) | iterations cold → warm | kNN exact s (doubling) "
              "| projected s (doubling) | indexed s (doubling) | recall projected / indexed | same kNN predictions projected / indexed "
              "| as configured s (doubling) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(scale):
        lines.append(f"| {r['spots']:,} | {r['train']:,} × {r['test']:,} | {r['linear_cold_s']:.2f} {_ratio(scale, i, 'linear_cold_s')} | "
                     f"{r['linear_warm_s']:.2f} {_ratio(scale, i, 'linear_warm_s')} | {r['iterations_cold']:,} → {r['iterations_warm']:,} | "
                     f"{r['knn_exact_s']:.2f} {_ratio(scale, i, 'knn_exact_s')} | {r['knn_projected_s']:.2f} {_ratio(scale, i, 'knn_projected_s')} | "
                     f"{r['knn_indexed_s']:.2f} {_ratio(scale, i, 'knn_indexed_s')} | {r['knn_projected_recall']:.3f} / {r['knn_indexed_recall']:.3f} | "
                     f"{100 * r['knn_projected_same_pred']:.1f} % / {100 * r['knn_indexed_same_pred']:.1f} % | "
                     f"{r['default_s']:.2f} {_ratio(scale, i, 'default_s')} ({r['knn_default']} kNN) |")
    lines += ["", f"As configured (the defaults): tol {d.tol:g}, warm_start {d.warm_start}, exact kNN up to knn_exact_max = "
              f"{d.knn_exact_max:,} training spots, projected on {d.knn_dims} axes above, indexed above knn_index_min = {d.knn_index_min:,}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/bench/probe-scaling", help="the feature run's folder")
    ap.add_argument("--matrix", default="runs/bench/executors/serial", help="a run folder of benchmarks/executor_speedup.yaml")
    ap.add_argument("--results", default="benchmarks/results/probe_scaling")
    ap.add_argument("--sizes", nargs="+", type=int, default=[8192, 16384, 32768, 65536])
    ap.add_argument("--held-out", default="A", help="the patient held out in the scaling part")
    args = ap.parse_args()
    if not REAL.is_dir():
        sys.exit(f"the real HER2ST data is not at {REAL}: this benchmark needs it")
    work, mat_dir = Path(args.work), Path(args.matrix)
    for cfg, folder in ((CONFIG, work), (MATRIX, mat_dir)):
        if not (folder / "results.json").is_file():
            subprocess.run([sys.executable, "-m", "stguide", "experiment", str(cfg), "--out", str(folder)], check=True)
    LogisticRegression.fit = _counted_fit  # type: ignore[method-assign]  # counts each fit's iterations
    agree = agreement(work)
    mat = matrix(mat_dir)
    scale, compile_s = scaling(work, args.sizes, args.held_out)
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", {
        "date": date.today().isoformat(), "machine": platform.platform(), "command": "python benchmarks/probe_scaling.py " + " ".join(sys.argv[1:]),
        "probe_defaults": asdict(ProbeConfig()), "agreement": agree, "matrix": mat, "scaling": scale, "pynndescent_first_fit_s": compile_s})
    (out / "table.md").write_text(table(agree, mat, scale, compile_s))
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
