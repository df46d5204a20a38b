"""``--executor local --workers 2`` against ``--executor serial`` on a real-HER2ST matrix (issue 30), in one run.

The matrix is ``benchmarks/executor_speedup.yaml`` (3 folds × 6 methods × 3 seeds, the plain view on the frozen ImageNet trunk's
cached features; PROXY labels). Its shared steps (the dataset, the patches, the trunk-feature cache, every fold's gene
encoders) are built once into ``WORK/prepared`` through the stage functions the executors run
(:mod:`stguide.evaluate.scaleout`); each timed run starts from a copy of that folder, so both time the same work:
the cells (head training on cached features, probes) and the report. Each run is a fresh ``stguide experiment``
process: serial (one process, torch and BLAS on every core) then local (2 spawned workers, one thread each). Prints
and writes both wall times, their ratio (target ≥ 1.7× on 2 cores) and the largest difference of any fold's
balanced accuracy between the two results.json (the same seeds: 0 unless thread counts change the sums' order).

Usage: python benchmarks/executor_speedup.py [--work runs/bench/executors] [--results benchmarks/results/executor_speedup]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "benchmarks" / "executor_speedup.yaml"
REAL = ROOT.parent / "shared" / "realdata" / "hest"


def prepare(work: Path) -> float:
    from stguide.data.folds import lopo_folds
    from stguide.data.model import write_dataset
    from stguide.evaluate.config import load_config
    from stguide.evaluate.experiment import load_data
    from stguide.evaluate.lopo import gene_steps
    from stguide.evaluate.scaleout import _dataset, genes_job, prepare_job

    out = (work / "prepared").resolve()
    t = time.perf_counter()
    cfg = load_config(CONFIG)
    adata = load_data(cfg.data, out)
    write_dataset(adata, _dataset(out))
    prepare_job(cfg, out, True)
    for fold, enc in gene_steps(cfg, lopo_folds(adata, cfg.lopo.folds, cfg.exclude_labels, by=cfg.lopo.fold_by)):
        genes_job(cfg, out, fold.held_out, enc)
    (out / "prepared.ok").write_text("")
    return time.perf_counter() - t


def timed(work: Path, mode: str) -> tuple[float, dict]:
    run = work / mode
    if run.exists():
        shutil.rmtree(run)
    shutil.copytree(work / "prepared", run, symlinks=True)
    args = ["--executor", mode] + (["--workers", "2"] if mode == "local" else [])
    cmd = [sys.executable, "-m", "stguide", "experiment", str(CONFIG), "--out", str(run), *args]
    t = time.perf_counter()
    p = subprocess.run(cmd, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t
    print(p.stdout[-600:], flush=True)
    res = json.loads((run / "results.json").read_text())
    if mode == "local":  # the cells stage's own seconds, as the executor printed them
        res["cells_stage_s"] = float(re.findall(r"cells: (\d+)/\1 jobs done · (\d+) s", p.stdout)[-1][1])
    else:  # the serial run's timings: the cells are its stage 2 and probes
        res["cells_stage_s"] = res["timings"].get("stage 2", 0.0) + res["timings"].get("probes", 0.0)
    return wall, res


def largest_difference(a: dict, b: dict) -> float:
    d = 0.0
    for m, r in a["methods"].items():
        for fold, s in r["folds"].items():
            d = max(d, abs(float(s["bacc"]) - float(b["methods"][m]["folds"][fold]["bacc"])))
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/bench/executors")
    ap.add_argument("--results", default="benchmarks/results/executor_speedup")
    args = ap.parse_args()
    if not REAL.is_dir():
        sys.exit(f"the real HER2ST data is not at {REAL}: this benchmark needs it")
    work = Path(args.work)
    prep_s = prepare(work) if not (work / "prepared" / "prepared.ok").is_file() else None
    if prep_s is not None:
        print(f"shared steps built in {prep_s:.0f} s", flush=True)
    serial_s, serial = timed(work, "serial")
    print(f"serial: {serial_s:.1f} s", flush=True)
    local_s, local = timed(work, "local")
    print(f"local, 2 workers: {local_s:.1f} s", flush=True)
    res = {"date": date.today().isoformat(), "machine": platform.platform(), "cores": os.cpu_count(),
           "command": "python benchmarks/executor_speedup.py " + " ".join(sys.argv[1:]), "config": str(CONFIG.relative_to(ROOT)),
           "shared_steps_s": prep_s, "serial_s": serial_s, "local_2_workers_s": local_s, "speedup": serial_s / local_s,
           "cells_serial_s": serial["cells_stage_s"], "cells_local_s": local["cells_stage_s"],
           "cells_speedup": serial["cells_stage_s"] / local["cells_stage_s"],
           "largest_bacc_difference": largest_difference(serial, local), "methods": sorted(serial["methods"])}
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=1))
    table = ("| run | wall s | ratio |\n|---|---|---|\n"
             f"| `--executor serial` | {serial_s:.1f} | 1.00× |\n"
             f"| `--executor local --workers 2` | {local_s:.1f} | {serial_s / local_s:.2f}× |\n\n"
             f"\nThe cells alone (serial: its timings' stage 2 + probes; local: the cells stage as the executor printed it): "
             f"{res['cells_serial_s']:.1f} vs {res['cells_local_s']:.1f} s, {res['cells_speedup']:.2f}×.\n"
             f"Largest |Δ bacc| of any method's fold between the two results.json: {res['largest_bacc_difference']:.4f}.\n")
    (out / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
