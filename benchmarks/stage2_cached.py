"""Time of each part of the cached-feature experiment, and head training against one trunk forward pass.

Runs an experiment YAML (default: experiments/her2st-frozen.yaml, the real-data matrix of issue 13) part by part in
one fresh output folder, so that each part's time is measured alone and the next part reuses what the previous one
cached: reading the data, cutting the patches, the trunk's forward passes (every patch × view), the per-fold gene
encoders, then `run_experiment` itself (every method × fold × seed cell on cached features, the probes, the audits
and the report). It also times, in the same process, one cell's head training against the trunk's forward pass
over the same training spots (one view) — the ratio the issue asks for.

Usage: python benchmarks/stage2_cached.py [--config experiments/her2st-frozen.yaml] [--only METHOD ...]
       [--run runs/stage2-cached] [--out benchmarks/results/stage2_cached]
--only (default: the issue's matrix: the controls imagenet, shuffled, supervised and the targets clip, bleep,
ours-scvi, ours-scanvi, plus the config's loss ablation) keeps those methods of the config; the other arms of
experiments/her2st-frozen.yaml (trunk ‖ head probes, per-patient batching, adversary, centring) are not timed.
Writes results.json and table.md in --out. The run folder --run must not exist (each part is timed from scratch);
it holds the experiment's full output afterwards (results.json, report.md, ...).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from stguide.contrastive.cached import train_on_features
    from stguide.contrastive.encoders import build_image_encoder
    from stguide.contrastive.features import feature_cache
    from stguide.data.folds import lopo_folds
    from stguide.data.patches import extract_patches
    from stguide.evaluate.config import load_config
    from stguide.evaluate.experiment import load_data, run_experiment
    from stguide.evaluate.lopo import fold_gene_encoder

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="experiments/her2st-frozen.yaml")
    ap.add_argument("--only", nargs="*", default=["imagenet", "shuffled", "supervised", "clip", "bleep", "ours-scvi", "ours-scanvi"],
                    help="the methods to time (the loss ablation is added by the config); default: the issue's matrix")
    ap.add_argument("--run", default="runs/stage2-cached")
    ap.add_argument("--out", default="benchmarks/results/stage2_cached")
    args = ap.parse_args()
    cfg = load_config(args.config)
    if args.only:
        from dataclasses import replace

        cfg = replace(cfg, methods=tuple(m for m in cfg.methods if m.name in args.only))
    out, run = Path(args.out), Path(args.run)
    if run.exists():
        raise SystemExit(f"{run} exists: give a new --run folder, so that every part is timed from scratch")
    times: dict[str, float] = {}

    def timed(name: str, fn):
        t0 = time.perf_counter()
        value = fn()
        times[name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {times[name]} s", flush=True)
        return value

    adata = timed("read", lambda: load_data(cfg.data, run))
    store = timed("patches", lambda: extract_patches(adata, cfg.patches, run / "patches", progress=False))
    c = cfg.contrastive
    blocks = c.trunk_blocks if c.trunk == "partial" else 0
    cache = timed("trunk forward passes (all patches × views)", lambda: feature_cache(store, c.backbone, c.init, run / "features", blocks=blocks,
                                                                                     views=c.views, view_seed=c.view_seed, progress=False))
    folds = lopo_folds(adata, cfg.lopo.folds, cfg.exclude_labels, by=cfg.lopo.fold_by)
    encoders = sorted({m.gene_encoder for m in cfg.all_methods() if m.gene_encoder})
    timed("gene encoders (all folds)", lambda: [fold_gene_encoder(cfg, adata, f, e, run / "folds" / f.held_out / "genes" / e)
                                                for f in folds for e in encoders])
    command = f"python benchmarks/stage2_cached.py --config {args.config} --run {args.run} --out {args.out}" + \
        (f" --only {' '.join(args.only)}" if args.only else "")
    results = timed("matrix: cells, probes, audits, report", lambda: run_experiment(cfg, run, progress=False, command=command))

    # one cell's head training against the trunk's forward pass over the same spots
    f0 = folds[0]
    names = [n for n in np.asarray(adata.obs_names)[f0.train] if n in set(store.obs_names)]
    torch.manual_seed(0)
    model, transform = build_image_encoder(c.backbone, c.init)
    model.eval()
    t0 = time.perf_counter()
    with torch.no_grad():
        rows = store.indices(names)
        for s in range(0, len(rows), 64):
            model(torch.stack([transform(store[int(r)]) for r in rows[s:s + 64]]))
    forward = time.perf_counter() - t0
    z = np.random.default_rng(0).normal(size=(len(names), 16)).astype(np.float32)
    pid = np.unique(adata[names].obs["patient"].astype(str), return_inverse=True)[1]
    t0 = time.perf_counter()
    train_on_features(c, cache, names, z, np.full(len(names), -1), pid, run / "one-cell", progress=False)
    head = time.perf_counter() - t0
    record = {
        "command": command,
        "date": str(date.today()), "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "config": args.config, "n_spots": int(adata.n_obs), "n_patches": len(store), "views": c.views, "seeds": cfg.lopo.seeds,
        "n_cells": sum(sum(len(v) for v in m["seeds"].values()) if "seeds" in m else len(m["folds"]) for m in results["methods"].values()),
        "times_s": times, "total_s": round(sum(times.values()), 1),
        "one_cell": {"spots": len(names), "epochs": c.epochs, "head_training_s": round(head, 2),
                     "trunk_forward_same_spots_s": round(forward, 2), "ratio_head_over_forward": round(head / forward, 3)},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(record, indent=1))
    md = "| part | seconds |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in times.items())
    md += f"| **total** | **{record['total_s']}** |\n\n"
    oc = record["one_cell"]
    md += (f"One cell ({oc['spots']} training spots, {oc['epochs']} epochs): head training {oc['head_training_s']} s, the trunk's "
           f"forward pass over the same spots (one view) {oc['trunk_forward_same_spots_s']} s: ratio {oc['ratio_head_over_forward']}.\n")
    (out / "table.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
