"""Does docs/results.md's headline change with converged linear probes? (issue 30)

The results of ``experiments/her2st-frozen.yaml`` were probed with scikit-learn's default L-BFGS tolerance
(``probe.tol: 1.0e-4``, cold fits; the YAML pins it), which stops the fits short of their optimum on 1,280-d trunk
features (benchmarks/probe_scaling.py). Its headline is that the partial arms (the trunk's last block trained against
expression, probed on the 1,280-d backbone output) gain over the ImageNet trunk and over the shuffled control. This
runs the arms of that comparison (``--only``; default: ``imagenet``, ``shuffled/partial``, ``clip/partial``,
``ours-scvi/partial``) with the YAML's settings (no loss ablation, no audits) into ``--run`` (skipped when its
``results.json`` exists), then probes every cell's saved features (``features.npz``, stored as float16) twice: with
the pinned probe and with the converged default (``tol`` 1e-6, warm start), both at the YAML's other probe settings.
For each: every method's mean held-out balanced accuracy, its difference from ``imagenet`` and the YAML's contrasts
among these arms, with the two-level bootstrap CI of docs/results.md (``stguide.evaluate.stats``); and, as a check
on the float16 copy, the run's own balanced accuracy (probed on float32) against the pinned re-probe.

Real HER2ST, HEST-1k layout: **PROXY labels**. Writes ``results.json`` and ``table.md`` to ``--results``.

Usage: python benchmarks/probe_convergence.py [--run runs/bench/probe-convergence] [--results benchmarks/results/probe_convergence]
           [--only imagenet shuffled/partial clip/partial ours-scvi/partial]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np

from stguide.evaluate.config import load_config
from stguide.evaluate.experiment import run_experiment
from stguide.evaluate.metrics import classification_metrics
from stguide.evaluate.probes import ProbeConfig, fit_linear_probe
from stguide.evaluate.stats import bootstrap_ci, paired_differences
from stguide.io import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments" / "her2st-frozen.yaml"
REAL = ROOT.parent / "shared" / "realdata" / "hest"
ARMS = ["imagenet", "shuffled/partial", "clip/partial", "ours-scvi/partial"]


def _cells(run: Path, method: str) -> dict[str, dict[int, Path]]:
    """{fold: {seed: cell folder}} of one method's finished cells."""
    out: dict[str, dict[int, Path]] = {}
    for fold in sorted((run / "folds").iterdir()):
        cell = fold / method
        seeds = sorted(cell.glob("seed*/features.npz"))
        if seeds:
            out[fold.name] = {int(f.parent.name[4:]): f.parent for f in seeds}
        elif (cell / "features.npz").is_file():
            out[fold.name] = {0: cell}
    return out


def _probe(cell: Path, cfg: ProbeConfig) -> float:
    with np.load(cell / "features.npz", allow_pickle=False) as z:
        x, y, te, g = z["x"].astype(np.float32), z["label"].astype(str), z["test"].astype(bool), z["patient"].astype(str)
    model, _, _ = fit_linear_probe(x[~te], y[~te], g[~te], cfg)
    return classification_metrics(y[te], model.predict(x[te]))["bacc"]


def _ci(a: dict[str, dict[int, float]], b: dict[str, dict[int, float]]) -> list[float]:
    return [round(v, 4) for v in bootstrap_ci(paired_differences(a, b))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default="runs/bench/probe-convergence")
    ap.add_argument("--results", default="benchmarks/results/probe_convergence")
    ap.add_argument("--only", nargs="+", default=ARMS, help="the arms run and compared (imagenet is the baseline)")
    args = ap.parse_args()
    if not REAL.is_dir():
        sys.exit(f"the real HER2ST data is not at {REAL}: this benchmark needs it")
    cfg = load_config(CONFIG)
    keep = set(args.only) | {"imagenet"}
    cfg = replace(cfg, methods=tuple(m for m in cfg.methods if m.name in keep), ablation=False,
                  lopo=replace(cfg.lopo, contrasts=tuple((a, b) for a, b in cfg.lopo.contrasts if a in keep and b in keep)),
                  report=replace(cfg.report, image_audit=False, target_audit=False, umap=False))
    run = Path(args.run)
    if not (run / "results.json").is_file():
        run_experiment(cfg, run, progress=False, command="python benchmarks/probe_convergence.py " + " ".join(sys.argv[1:]))
    defaults = ProbeConfig()
    scores: dict[str, dict[str, dict[str, dict[int, float]]]] = {"pinned": {}, "converged": {}, "run": {}}
    for m in cfg.methods:
        pinned = m.probe_config(cfg.probe)
        converged = replace(pinned, tol=defaults.tol, warm_start=defaults.warm_start)
        for fold, seeds in _cells(run, m.name).items():
            for seed, cell in seeds.items():
                scores["pinned"].setdefault(m.name, {}).setdefault(fold, {})[seed] = _probe(cell, pinned)
                scores["converged"].setdefault(m.name, {}).setdefault(fold, {})[seed] = _probe(cell, converged)
                scores["run"].setdefault(m.name, {}).setdefault(fold, {})[seed] = json.loads((cell / "metrics.json").read_text())["bacc"]
        print(f"{m.name}: probed {sum(len(s) for s in scores['pinned'][m.name].values())} cells twice", flush=True)
    names = [m.name for m in cfg.methods]
    pairs = [(n, "imagenet") for n in names if n != "imagenet"] + list(cfg.lopo.contrasts)
    rows = []
    for a, b in pairs:
        rows.append({"a": a, "b": b, "pinned": _ci(scores["pinned"][a], scores["pinned"][b]),
                     "converged": _ci(scores["converged"][a], scores["converged"][b]), "run": _ci(scores["run"][a], scores["run"][b])})
    means = {w: {n: float(np.mean([v for f in scores[w][n].values() for v in f.values()])) for n in names} for w in scores}
    worst16 = max(abs(scores["pinned"][n][f][s] - scores["run"][n][f][s]) for n in names for f in scores["run"][n] for s in scores["run"][n][f])
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", {"date": date.today().isoformat(), "machine": platform.platform(),
                                             "command": "python benchmarks/probe_convergence.py " + " ".join(sys.argv[1:]),
                                             "config": str(CONFIG.relative_to(ROOT)), "methods": names, "scores": scores,
                                             "means": means, "differences": rows, "float16_check_largest": worst16})
    fmt = "{:+.3f} [{:+.3f}, {:+.3f}]".format
    lines = ["Linear-probe balanced accuracy on real HER2ST (HEST-1k layout, PROXY labels), experiments/her2st-frozen.yaml's arms "
             f"{', '.join(names)}. pinned: tol 1e-4, cold fits (the YAML's); converged: tol {defaults.tol:g}, warm start; both re-probe "
             "each cell's saved float16 features.", "",
             "| method | mean bacc pinned | mean bacc converged | the run's own (float32 features, pinned) |", "|---|---|---|---|"]
    lines += [f"| {n} | {means['pinned'][n]:.4f} | {means['converged'][n]:.4f} | {means['run'][n]:.4f} |" for n in names]
    lines += ["", "| difference | pinned: Δ [95 % CI] | converged: Δ [95 % CI] | the run's own |", "|---|---|---|---|"]
    lines += [f"| {r['a']} − {r['b']} | {fmt(*r['pinned'])} | {fmt(*r['converged'])} | {fmt(*r['run'])} |" for r in rows]
    lines += ["", f"Largest difference of one cell's balanced accuracy between the run (float32 features) and the pinned re-probe "
              f"(float16): {worst16:.4f}."]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print((out / "table.md").read_text())


if __name__ == "__main__":
    main()
