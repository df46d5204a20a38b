"""The probes' growth in a scaling study (issue 16, benchmark 4's follow-up): which probe is superlinear, and why.

For each size's run folder of ``benchmarks/scaling.py`` (``runs/bench/scaling/run-<n>``), the two probes of
``stguide.evaluate.probes`` are fitted again on the saved features of each cell (``folds/P1/<method>/features.npz``:
the ``random`` trunk's 512-d features and ``ours-scvi``'s head), as the run fitted them, one after the other:

- the linear probe (``fit_linear_probe``: the inner group cross-validation over the C grid, then the fit at the
  chosen C; every ``LogisticRegression`` fit's L-BFGS iterations are counted), and its prediction of the test spots;
- the kNN probe (``fit_knn_probe``: exact search), its prediction of the test spots.

Prints seconds per probe and size, each doubling's ratio, the linear probe's iterations and its seconds per iteration
per training spot; writes ``results.json`` and ``table.md`` to ``--results``. Run on quiet cores.

Usage: python benchmarks/probe_scaling.py [--work runs/bench/scaling] [--results benchmarks/results/probe_scaling]
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

from stguide.evaluate.probes import ProbeConfig, fit_knn_probe, fit_linear_probe
from stguide.io import write_json_atomic

_ITERATIONS: list[int] = []
_fit = LogisticRegression.fit


def _counted_fit(self, *args, **kwargs):
    out = _fit(self, *args, **kwargs)
    _ITERATIONS.append(int(np.max(self.n_iter_)))
    return out


def probes(path: Path) -> dict:
    z = np.load(path, allow_pickle=True)
    x, y, te, g = z["x"].astype(np.float32), z["label"], z["test"], z["patient"]
    cfg = ProbeConfig()
    _ITERATIONS.clear()
    t = time.perf_counter()
    lin, c, _ = fit_linear_probe(x[~te], y[~te], g[~te], cfg)
    lin.predict(x[te])
    linear = time.perf_counter() - t
    t = time.perf_counter()
    fit_knn_probe(x[~te], y[~te], cfg).predict(x[te])
    knn = time.perf_counter() - t
    return {"train": int((~te).sum()), "test": int(te.sum()), "dim": int(x.shape[1]), "linear_s": linear, "knn_s": knn,
            "C": float(c), "fits": len(_ITERATIONS), "iterations": int(sum(_ITERATIONS))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/bench/scaling", help="the scaling study's run folders (run-<n>)")
    ap.add_argument("--methods", nargs="+", default=["random", "ours-scvi"])
    ap.add_argument("--results", default="benchmarks/results/probe_scaling")
    args = ap.parse_args()
    LogisticRegression.fit = _counted_fit  # type: ignore[method-assign]  # counts each fit's iterations
    runs = sorted(Path(args.work).glob("run-*"), key=lambda p: int(p.name.split("-")[1]))
    if not runs:
        sys.exit(f"no run-<n> folders under {args.work}: run benchmarks/scaling.py first")
    rows: dict[str, dict[int, dict]] = {m: {} for m in args.methods}
    for run in runs:
        n = int(run.name.split("-")[1])
        for m in args.methods:
            f = run / "folds" / "P1" / m / "features.npz"
            if f.exists():
                rows[m][n] = probes(f)
                r = rows[m][n]
                print(f"{n:>6} {m:<10} train {r['train']:>6} test {r['test']:>6} d {r['dim']:>4}: linear {r['linear_s']:7.2f} s "
                      f"({r['fits']} fits, {r['iterations']} iterations, C {r['C']:g}), kNN {r['knn_s']:6.2f} s", flush=True)
    lines = ["| method | spots | train × test | d | linear probe s | its doubling | iterations | µs per iteration and training spot | kNN s | its doubling |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m, by in rows.items():
        prev = None
        for n, r in sorted(by.items()):
            r["us_per_iteration_spot"] = r["linear_s"] / r["iterations"] / r["train"] * 1e6
            lin_x = f"{r['linear_s'] / prev['linear_s']:.2f}×" if prev else ""
            knn_x = f"{r['knn_s'] / prev['knn_s']:.2f}×" if prev else ""
            lines.append(f"| {m} | {n:,} | {r['train']:,} × {r['test']:,} | {r['dim']} | {r['linear_s']:.2f} | {lin_x} | {r['iterations']:,} | "
                         f"{r['us_per_iteration_spot']:.3f} | {r['knn_s']:.2f} | {knn_x} |")
            prev = r
    table = "\n".join(lines)
    print(table)
    out = Path(args.results)
    write_json_atomic(out / "results.json", {"command": "python benchmarks/probe_scaling.py " + " ".join(sys.argv[1:]),
                                             "date": str(date.today()), "machine": f"{platform.machine()}", "rows": rows})
    (out / "table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
