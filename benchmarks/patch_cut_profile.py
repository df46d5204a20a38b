"""Where patch extraction's time goes on the synthetic pyramidal slide (issue 16), in one process.

Measures, one after another on the slide of ``benchmarks/patch_extraction.py`` (written there first when absent):
the level's decode alone as extraction does it (the tiles the spots' fields touch, on all cores), cutting every
patch from the decoded level into a memory-mapped store on the cutting threads, writing the store to disk
(``flush``), and one core's cost per patch of the two resamplers: torch's uint8 antialiased bilinear kernel
(``images.resample``, what the cut uses) and Pillow's ``resize`` with the same filter (what it used before). Then
the alternative of resampling the fields' bounding box once to the patch scale (torch's same kernel, on all cores;
each pixel resampled once instead of once per patch that holds it), to compare with the cut. Prints the times and
the ratios; no file written.

Usage: python benchmarks/patch_cut_profile.py [--size-um 200] [--out-px 224]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import patch_extraction as pe  # noqa: E402 - the slide and its spots, shared with the extraction benchmark
from stguide.data.images import one_torch_thread, open_level, resample  # noqa: E402
from stguide.data.model import section_info  # noqa: E402
from stguide.data.patches import CUTTERS, _cut_all  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-um", type=float, default=200.0)
    ap.add_argument("--out-px", type=int, default=224)
    args = ap.parse_args()
    adata = pe._slide_dataset(Path(pe.SLIDE))
    um = section_info(adata, adata.obs["section"].cat.categories[0]).imaging()[1]  # the slide's µm/px
    xs, ys = adata.obs["x_px"].to_numpy(float), adata.obs["y_px"].to_numpy(float)
    half = args.size_um / um / 2
    fields = np.column_stack([xs - half, ys - half, xs + half, ys + half])
    t = time.perf_counter()
    level = open_level(pe.SLIDE, downsample=args.size_um / um / args.out_px, fields=fields)
    decode = time.perf_counter() - t
    outside = np.zeros(len(xs))
    with tempfile.TemporaryDirectory() as tmp, ThreadPoolExecutor(CUTTERS) as pool:
        arr = np.lib.format.open_memmap(Path(tmp) / "p.npy", mode="w+", dtype=np.uint8,
                                        shape=(len(xs), args.out_px, args.out_px, 3))
        t = time.perf_counter()
        _cut_all(level, np.arange(len(xs)), xs, ys, half, args.out_px, arr, outside, pool)
        cut = time.perf_counter() - t
        t = time.perf_counter()
        arr.flush()
        flush = time.perf_counter() - t
        del arr
    side = 2 * half / level.scale
    n = int(side) + 1
    regions = [np.ascontiguousarray(level.array[y:y + n, x:x + n]) for x, y in
               zip((xs[:500] / level.scale - side / 2).astype(int).clip(0), (ys[:500] / level.scale - side / 2).astype(int).clip(0),
                   strict=True)]
    regions = [r for r in regions if r.shape[:2] == (n, n)]
    with one_torch_thread():
        resample(regions[0], args.out_px / side, args.out_px)
        t = time.perf_counter()
        for r in regions:
            resample(r, args.out_px / side, args.out_px)
        ours = (time.perf_counter() - t) / len(regions)
    t = time.perf_counter()
    for r in regions:
        Image.fromarray(r).resize((args.out_px, args.out_px), Image.Resampling.BILINEAR, box=(0, 0, side, side))
    pil = (time.perf_counter() - t) / len(regions)
    x0, y0 = (np.floor(fields[:, :2].min(0) / level.scale).astype(int)).clip(0)
    x1, y1 = np.ceil(fields[:, 2:].max(0) / level.scale).astype(int)
    box = level.array[y0:y1, x0:x1]
    t = time.perf_counter()
    once = resample(box, args.out_px / side, max(box.shape[:2]))  # torch's threads: all cores
    whole = time.perf_counter() - t
    level.close()
    print(f"{len(xs)} patches of {n} level px → {args.out_px} px; torch {torch.__version__}")
    print(f"decode alone {decode:.2f} s; cut after it {cut:.2f} s; flush {flush:.2f} s; "
          f"decode + cut + flush over decode: {(decode + cut + flush) / decode:.2f}x")
    print(f"one core per patch: torch uint8 resample {ours * 1e3:.3f} ms, Pillow resize {pil * 1e3:.3f} ms "
          f"({pil / ours:.1f}x)")
    print(f"the fields' bounding box ({box.shape[1]}x{box.shape[0]} level px → {once.shape[1]}x{once.shape[0]}) resampled "
          f"once on all cores: {whole:.2f} s, {whole / cut:.2f}x the cut of every patch")


if __name__ == "__main__":
    main()
