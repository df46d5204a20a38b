"""Run-to-run spread across training seeds on the quick synthetic demo (data fixed at seed 0).

Usage: python benchmarks/seed_spread.py [--seeds 0 1 2] [--out benchmarks/results/seed_spread]
Writes seed_spread.json and seed_spread.md (the table quoted in docs/reproducibility.md). Seed 0 is run twice to
show that the same seed gives identical results.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from stguide.data.patches import extract_patches
from stguide.data.readers import read
from stguide.evaluate.config import load_config, preset_path
from stguide.evaluate.lopo import run_lopo


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="benchmarks/results/seed_spread")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        base = load_config(preset_path("demo-quick"))  # the quick demo; its data stay at seed 0
        adata = read("synthetic", **base.data.options, image_dir=Path(tmp) / "images")
        store = extract_patches(adata, base.patches, Path(tmp) / "patches", progress=False)
        runs = {}
        for i, seed in enumerate([args.seeds[0], *args.seeds]):
            cfg = load_config(preset_path("demo-quick"), {"genes": {"seed": seed}, "contrastive": {"seed": seed}})
            res = run_lopo(cfg, adata, store, Path(tmp) / f"run{i}", progress=False)
            runs[f"seed {seed}" + (" (again)" if i == 1 else "")] = {m: r["mean"] for m, r in res["methods"].items()}
    first, again = list(runs.values())[:2]
    identical = first == again
    rows = ["| run | " + " | ".join(f"{m} bacc (linear) | {m} bacc (kNN)" for m in first) + " |",
            "|---|" + "---|---|" * len(first)]
    for name, r in runs.items():
        rows.append(f"| {name} | " + " | ".join(f"{v['bacc']:.3f} | {v['knn_bacc']:.3f}" for v in r.values()) + " |")
    spread = []
    for m in first:
        distinct = [r[m] for k, r in runs.items() if "(again)" not in k]
        for key in ("bacc", "knn_bacc"):
            v = np.array([d[key] for d in distinct])
            spread.append(f"- {m}, {key}: mean {v.mean():.3f}, sd across seeds {v.std(ddof=1):.3f}, range {v.max() - v.min():.3f}")
    md = "\n".join(rows) + "\n\n" + "\n".join(spread) + f"\n\nSame seed twice gives identical results: {identical}\n"
    (out / "seed_spread.md").write_text(md)
    (out / "seed_spread.json").write_text(json.dumps({"runs": runs, "identical_rerun": identical}, indent=2))
    print(md)


if __name__ == "__main__":
    main()
