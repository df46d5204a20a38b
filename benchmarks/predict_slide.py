"""``stguide predict`` against its floor (issue 15): tiles per second beside the bare forward pass of the same model on
in-memory tensors of the same shape and batch, and the peak memory of predicting a large synthetic pyramidal slide.

The slide (``--size`` px square, JPEG-tiled pyramid, tissue on about a third of it; ``stguide.data.synthetic_slide``)
is written once under ``--work``. ``stguide predict`` runs in a fresh process, so its peak RSS (``ru_maxrss``, the
import of torch included) is its own. The floor is the bundle's image tower (trunk, trained part, head) run in another
fresh process on normalised float tensors already in memory, batch for batch as predict runs it, timed before and
after the predict run (the mean of both; a change in the machine's load between them shows as their spread).
The ratio is predict's tile throughput (its tile loop, and end to end) over the floor's. Goals: ≥ 0.8× and < 2 GiB.

Usage: python benchmarks/predict_slide.py [--model runs/models/clip-partial-B] [--size 40000] [--um-per-px 0.25]
(the default model comes from ``bash experiments/apply-her2st.sh``; any bundle of ``stguide export`` works)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from stguide.io import write_json_atomic


def floor_tiles_per_s(model: Path, n: int, batch: int) -> float:
    """The bundle's tower forward on ``n`` in-memory normalised tiles, ``batch`` at a time (tiles per second)."""
    import torch

    from stguide.apply.bundle import load_bundle

    b = load_bundle(model)
    px = int(b.manifest["patch"]["out_px"])
    x = torch.randn(batch, 3, px, px).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        b.tower.embed(x)  # warm-up
        t = time.perf_counter()
        for _ in range(-(-n // batch)):
            b.tower.embed(x)
    return -(-n // batch) * batch / (time.perf_counter() - t)


def _child(*argv: str) -> str:
    """Run this script or the CLI in a fresh process (so that each one's peak RSS is its own: a forked child's
    ``ru_maxrss`` starts at its parent's size, so the parent here never imports torch)."""
    return subprocess.run([sys.executable, *argv], check=True, capture_output=True, text=True).stdout


def _floor(model: Path, n: int, batch: int) -> float:
    return float(_child(__file__, "--floor-only", "--model", str(model), "--floor-tiles", str(n), "--batch-size", str(batch)).split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/models/clip-partial-B", help="a bundle folder (stguide export)")
    ap.add_argument("--size", type=int, default=40_000, help="the synthetic slide's side in px (default 40,000)")
    ap.add_argument("--um-per-px", type=float, default=0.25, help="its resolution (default 0.25, a 40x scan)")
    ap.add_argument("--batch-size", type=int, default=64, help="tiles per forward pass, predict's default (64)")
    ap.add_argument("--floor-tiles", type=int, default=512, help="tiles timed for the floor, each time (default 512)")
    ap.add_argument("--work", default="runs/bench/predict", help="where the slide and predict's output go")
    ap.add_argument("--results", default="benchmarks/results/predict_slide", help="where results.json goes")
    ap.add_argument("--floor-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.floor_only:
        print(floor_tiles_per_s(Path(args.model), args.floor_tiles, args.batch_size))
        return

    from stguide.data.synthetic_slide import write_synthetic_slide

    model = Path(args.model)
    if not (model / "manifest.json").is_file():
        sys.exit(f"{model}: not a model bundle; make one with `bash experiments/apply-her2st.sh` or give --model")
    man = json.loads((model / "manifest.json").read_text())
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    slide = work / f"slide-{args.size}-{args.um_per_px:g}.tif"
    write_s = None
    if not slide.is_file():
        t = time.perf_counter()
        write_synthetic_slide(slide.with_suffix(".part"), size=args.size, um_per_px=args.um_per_px)
        slide.with_suffix(".part").rename(slide)
        write_s = round(time.perf_counter() - t, 1)
        print(f"wrote {slide} ({slide.stat().st_size / 2**20:.0f} MiB) in {write_s} s", flush=True)

    before = _floor(model, args.floor_tiles, args.batch_size)
    print(f"floor (before): {before:.1f} tiles/s", flush=True)
    out = work / "out"
    t = time.perf_counter()
    said = _child("-c", "import resource, sys; from stguide.cli import main; main(sys.argv[1:]); "
                  "print('peak', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)", "predict", str(slide),
                  "--model", str(model), "--out", str(out), "--batch-size", str(args.batch_size), "--no-progress")
    wall = time.perf_counter() - t
    peak = int(said.split()[-1]) * 1024  # kB on Linux
    after = _floor(model, args.floor_tiles, args.batch_size)
    print(f"floor (after): {after:.1f} tiles/s", flush=True)
    s = json.loads((out / "summary.json").read_text())
    n = s["n_tiles"]
    floor = float(np.mean([before, after]))
    loop = n / s["seconds"]["tiles"]
    rec = {
        "command": "python benchmarks/predict_slide.py " + " ".join(sys.argv[1:]), "date": str(date.today()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "model": str(model),
        "slide": {"size_px": args.size, "um_per_px": args.um_per_px, "file_mib": round(slide.stat().st_size / 2**20, 1),
                  "write_s": write_s},
        "n_tiles": n, "tile_px": round(s["tile_px"], 1), "out_px": int(man["patch"]["out_px"]), "predict": {"wall_s": round(wall, 1), **s["seconds"]},
        "tiles_per_s": {"floor_before": round(before, 1), "floor_after": round(after, 1), "predict_loop": round(loop, 1),
                        "predict_end_to_end": round(n / wall, 1)},
        "ratio_loop": round(loop / floor, 3), "ratio_end_to_end": round(n / wall / floor, 3),
        "peak_rss_gib": round(peak / 2**30, 3),
    }
    write_json_atomic(Path(args.results) / "results.json", rec)
    print(json.dumps(rec, indent=2))
    print(f"predict/floor: {rec['ratio_loop']:.2f}x (tile loop), {rec['ratio_end_to_end']:.2f}x (end to end); "
          f"peak RSS {rec['peak_rss_gib']:.2f} GiB on a {args.size:,} px slide")


if __name__ == "__main__":
    main()
