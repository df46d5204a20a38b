"""Scaling (issue 16, benchmark 4): time and peak memory of each part of an experiment from 1k to 64k synthetic
spots, doubling each step. Goal: linear — a fitted log-log slope near 1 with its R², and no doubling costing more
than 2.4× the step before.

The data grow the way real collections do, by more sections: 4 patients, sections of 256 spots (16 × 16 grid,
100 µm pitch), rendered at 2 µm/px, from 4 sections (1,024 spots) to 256 (65,536). They are generated once (setup,
not timed; every size is the first sections of each patient of the largest set, so a smaller set is part of every
larger one) and read back through the product's ``h5ad`` reader, so ``read`` times the reader, not the generator.

Each size runs ``stguide experiment`` (``run_experiment``) in a fresh process with one fold (P1 held out) and two
methods on a frozen random-init resnet10t trunk with cached features (``random``: the trunk alone; ``ours-scvi``:
scVI targets, CLIP loss, a head trained for 3 epochs and probed on that head); scVI trains a fixed 5 epochs (the
step rule would train a fixed number of steps above 20,000 spots, which hides the per-spot cost) and probes,
audits, UMAP and report run at their defaults. Time per part is the run's own ``results.json: timings`` (each part counted once); memory per part
is the largest resident set (VmRSS, which counts the memory-mapped patch and feature caches' pages, and RssAnon,
which does not) sampled every 50 ms while the part was the innermost one running; ``peak`` is the process's
``ru_maxrss`` (the import of torch included).

Each size's row is kept in its run folder (``row.json``); ``--resume`` reuses them, so a study can grow a size at a
time.

Usage: python benchmarks/scaling.py [--sizes 1024 2048 4096 8192 16384 32768 65536] [--work runs/bench/scaling] [--resume]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

import numpy as np

from stguide.io import write_json_atomic

PATIENTS, SPOTS_PER_SECTION = 4, 256
SIZES = [1024 * 2 ** k for k in range(7)]
CONFIG = """data: {{format: h5ad, path: {path}}}
patches: {{size_um: 100, out_px: 32}}
genes: {{n_top_genes: 200, seed: 0, scvi: {{n_latent: 10, max_epochs: 5}}}}
contrastive: {{backbone: resnet10t, init: none, trunk: frozen, views: 1, epochs: 3, batch_size: 256, seed: 0}}
probe: {{tol: 1.0e-4, warm_start: false, knn_exact_max: 50000}}
lopo: {{folds: [P1]}}
methods:
  - {{name: random}}
  - {{name: ours-scvi, gene_encoder: scvi, loss: clip}}
ablation: false
"""
PARTS = ["read", "patches", "gene encoders", "gene-target audit", "trunk features", "stage 2", "probes", "image audit",
         "report", "other"]


def make_data(work: Path, sizes: list[int]) -> dict[int, Path]:
    """The largest dataset, generated once, and each size as the first sections of every patient (cached; the
    largest is not generated again when every size's file is already there)."""
    import anndata as ad

    from stguide.data.model import write_dataset
    from stguide.data.synthetic import make_synthetic

    per_patient = max(sizes) // (PATIENTS * SPOTS_PER_SECTION)
    full = work / "data" / f"all-{max(sizes)}.h5ad"
    paths = {n: work / "data" / f"spots-{n}.h5ad" for n in sizes}
    if not full.is_file() and not all(path.is_file() for path in paths.values()):
        t0 = time.perf_counter()
        a = make_synthetic(n_patients=PATIENTS, sections_per_patient=per_patient, spots_per_section=SPOTS_PER_SECTION,
                           seed=0, image_dir=work / "data" / "images", um_per_px_range=(2.0, 2.0))
        write_dataset(a, full)
        print(f"generated {a.n_obs} spots in {time.perf_counter() - t0:.0f} s (setup, not timed)", flush=True)
    adata = None
    for n, path in paths.items():
        if not path.is_file():
            adata = adata if adata is not None else ad.read_h5ad(full)
            k = n // (PATIENTS * SPOTS_PER_SECTION)
            keep = {f"P{p + 1}S{s + 1}" for p in range(PATIENTS) for s in range(k)}
            sub = adata[adata.obs["section"].astype(str).isin(keep)].copy()
            assert sub.n_obs == n, (n, sub.n_obs)
            write_dataset(sub, path)
    return paths


def rss_now() -> tuple[int, int]:
    """(VmRSS, RssAnon) of this process in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "RssAnon:")):
                k, v = line.split(":")
                out[k] = int(v.split()[0]) * 1024
    return out.get("VmRSS", 0), out.get("RssAnon", 0)


def one(n: int, data: Path, run_dir: Path) -> dict:
    """One size in this process: the experiment's timings and the memory of each part."""
    from stguide import timing
    from stguide.evaluate.config import load_config
    from stguide.evaluate.experiment import run_experiment

    run_dir.mkdir(parents=True, exist_ok=True)
    cfg_path = run_dir / "config.yaml"
    cfg_path.write_text(CONFIG.format(path=data.resolve()))
    mem: dict[str, list[int]] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            name = timing.current() or "other"
            rss, anon = rss_now()
            m = mem.setdefault(name, [0, 0])
            m[0], m[1] = max(m[0], rss), max(m[1], anon)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    res = run_experiment(load_config(cfg_path), run_dir, progress=False, command=f"benchmarks/scaling.py --one {n}")
    stop.set()
    t.join()
    return {"spots": n, "runtime_s": res["runtime_s"], "timings": res["timings"],
            "rss_gib": {k: round(v[0] / 2 ** 30, 3) for k, v in mem.items()},
            "anon_gib": {k: round(v[1] / 2 ** 30, 3) for k, v in mem.items()},
            "peak_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2 ** 30, 3),
            "bacc": {m: r["mean"]["bacc"] for m, r in res["methods"].items()}}


def loglog(ns: list[int], ys: list[float]) -> tuple[float, float]:
    """Slope and R² of log(y) on log(n)."""
    x, y = np.log(ns), np.log(np.maximum(ys, 1e-3))
    slope, icpt = np.polyfit(x, y, 1)
    pred = slope * x + icpt
    r2 = 1 - ((y - pred) ** 2).sum() / max(((y - y.mean()) ** 2).sum(), 1e-12)
    return float(slope), float(r2)


def summary(rows: list[dict]) -> dict:
    ns = [r["spots"] for r in rows]
    out = {}
    for p in [*PARTS, "total"]:
        ys = [r["runtime_s"] if p == "total" else r["timings"].get(p, 0.0) for r in rows]
        steps = [b / a if a > 0 else float("nan") for a, b in zip(ys, ys[1:], strict=False)]
        slope, r2 = loglog(ns, ys) if min(ys) > 0.5 else (float("nan"), float("nan"))
        out[p] = {"seconds": ys, "slope": slope, "r2": r2, "max_doubling": max(steps) if steps else float("nan")}
    return out


def table(rows: list[dict], fit: dict) -> str:
    ns = [r["spots"] for r in rows]
    md = "| part | " + " | ".join(f"{n:,}" for n in ns) + " | slope (R²) | largest doubling |\n|---|" + "---|" * (len(ns) + 2) + "\n"
    for p, f in fit.items():
        md += (f"| {p} | " + " | ".join(f"{s:.1f}" for s in f["seconds"])
               + (f" | {f['slope']:.2f} ({f['r2']:.2f})" if f["slope"] == f["slope"] else " | – (under 0.5 s)")
               + f" | {f['max_doubling']:.2f}× |\n")
    md += "| peak RSS GiB | " + " | ".join(f"{r['peak_gib']:.2f}" for r in rows) + " | | |\n"
    for p in PARTS:
        if any(p in r["anon_gib"] for r in rows):
            md += f"| anon GiB, {p} | " + " | ".join(f"{r['anon_gib'].get(p, 0):.2f}" for r in rows) + " | | |\n"
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=SIZES, help="spots per run (multiples of 1,024)")
    ap.add_argument("--work", default="runs/bench/scaling", help="data and run folders")
    ap.add_argument("--results", default="benchmarks/results/scaling", help="where table.md and results.json go")
    ap.add_argument("--resume", action="store_true", help="keep the sizes an earlier run of this command measured")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.work)
    if args.one:
        row = one(args.one, work / "data" / f"spots-{args.one}.h5ad", work / f"run-{args.one}")
        write_json_atomic(work / f"run-{args.one}" / "row.json", row)
        print("ROW " + json.dumps(row), flush=True)
        return
    if any(n % (PATIENTS * SPOTS_PER_SECTION) for n in args.sizes):
        ap.error(f"every size must be a multiple of {PATIENTS * SPOTS_PER_SECTION}")
    make_data(work, sorted(args.sizes))
    rows = []
    for n in sorted(args.sizes):
        run_dir = work / f"run-{n}"
        if args.resume and (run_dir / "row.json").is_file():
            rows.append(json.loads((run_dir / "row.json").read_text()))
            print(f"{n:>6} spots: measured before (--resume), {rows[-1]['runtime_s']:.0f} s", flush=True)
            continue
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)  # a fresh run each time: a cached cell would cost nothing
        p = subprocess.run([sys.executable, __file__, "--one", str(n), "--work", str(work)], capture_output=True, text=True,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = [x for x in p.stdout.splitlines() if x.startswith("ROW ")]
        if p.returncode or not line:
            sys.exit(f"size {n} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        rows.append(json.loads(line[0][4:]))
        r = rows[-1]
        print(f"{n:>6} spots: {r['runtime_s']:.0f} s, peak {r['peak_gib']:.2f} GiB — "
              + ", ".join(f"{k} {v:.0f}" for k, v in r["timings"].items()), flush=True)
    fit = summary(rows)
    md = table(rows, fit)
    print(md)
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    cmd = "python benchmarks/scaling.py" + (f" --sizes {' '.join(map(str, args.sizes))}" if args.sizes != SIZES else "")
    (res / "table.md").write_text(f"Produced by: `{cmd}` ({date.today()}, {platform.node()}, {os.cpu_count()} CPUs)\n\n" + md)
    write_json_atomic(res / "results.json", {"command": cmd, "date": str(date.today()), "machine": platform.platform(),
                                             "cpus": os.cpu_count(), "rows": rows, "fit": fit})


if __name__ == "__main__":
    main()
