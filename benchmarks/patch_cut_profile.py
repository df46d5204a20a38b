"""Where patch extraction's time goes on the synthetic pyramidal slide (issue 16), in one process.

Measures, one after another on the slide of ``benchmarks/patch_extraction.py`` (written there first when absent):
the level's decode alone as extraction does it (the tiles the spots' fields touch, on all cores); cutting every
patch on the cutting threads into a new patch file (``io.RowWriter``) two ways: one by one (``Level.cut``, each
field resampled on its own, as before), and as extraction does it, the overlapping patches of a cell sharing one
resample (``Level.sharing_groups`` and ``Level.cut_group``); the same shared cut with the writes dropped (what the
writing costs); and the level pixels each way resamples. Each cut runs ``--reps`` times, alternating; the best
time of each is printed with its ratio. No file kept.

Usage: python benchmarks/patch_cut_profile.py [--size-um 200] [--out-px 224] [--reps 3]
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

sys.path.insert(0, str(Path(__file__).parent))
import patch_extraction as pe  # noqa: E402 - the slide and its spots, shared with the extraction benchmark
from stguide.data.images import open_level  # noqa: E402
from stguide.data.level import one_torch_thread, share_box  # noqa: E402
from stguide.data.model import section_info  # noqa: E402
from stguide.data.patches import CUTTERS, _cut_all  # noqa: E402
from stguide.io import RowWriter  # noqa: E402


class _Dropped:
    """Takes rows and keeps none."""

    def __setitem__(self, i, value) -> None:
        pass


def _one_by_one(level, xs, ys, half, out_px, arr, outside, pool) -> None:
    parts = np.array_split(np.argsort(ys, kind="stable"), 32)

    def cutter(part: np.ndarray) -> None:
        for k in part:
            arr[k], outside[k] = level.cut(xs[k], ys[k], half, out_px)

    with one_torch_thread():
        for done in [pool.submit(cutter, part) for part in parts]:
            done.result()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-um", type=float, default=200.0)
    ap.add_argument("--out-px", type=int, default=224)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    adata = pe._slide_dataset(Path(pe.SLIDE))
    um = section_info(adata, adata.obs["section"].cat.categories[0]).imaging()[1]  # the slide's µm/px
    xs, ys = adata.obs["x_px"].to_numpy(float), adata.obs["y_px"].to_numpy(float)
    half = args.size_um / um / 2
    fields = np.column_stack([xs - half, ys - half, xs + half, ys + half])
    t = time.perf_counter()
    level = open_level(pe.SLIDE, downsample=args.size_um / um / args.out_px, fields=fields)
    decode = time.perf_counter() - t
    x0, y0, n, _ = level._fields(xs, ys, half)  # each field's first level pixel and the pixels it reads a side
    groups = level.sharing_groups(xs, ys, half, args.out_px)
    shared_px = sum(np.prod(share_box(x0[g], y0[g], n)[2:]) if len(g) > 1 else n * n for g in groups)
    outside = np.zeros(len(xs))
    ways = {"one by one": lambda arr, pool: _one_by_one(level, xs, ys, half, args.out_px, arr, outside, pool),
            "shared": lambda arr, pool: _cut_all(level, np.arange(len(xs)), xs, ys, half, args.out_px, arr, outside, pool),
            "shared, writes dropped": lambda arr, pool: _cut_all(level, np.arange(len(xs)), xs, ys, half, args.out_px,
                                                                 _Dropped(), outside, pool)}
    best = dict.fromkeys(ways, float("inf"))
    with tempfile.TemporaryDirectory(dir=Path(pe.SLIDE).parent) as tmp, ThreadPoolExecutor(CUTTERS) as pool:
        for r in range(args.reps):
            for name, cut in ways.items():
                arr = RowWriter(Path(tmp) / f"{r}.npy", (len(xs), args.out_px, args.out_px, 3))
                t = time.perf_counter()
                cut(arr, pool)
                arr.close()
                best[name] = min(best[name], time.perf_counter() - t)
                (Path(tmp) / f"{r}.npy").unlink()
    level.close()
    print(f"{len(xs)} patches of {n} level px → {args.out_px} px in {sum(len(g) > 1 for g in groups)} shared groups "
          f"and {sum(len(g) == 1 for g in groups)} alone; torch {torch.__version__}")
    print(f"decode alone {decode:.2f} s")
    for name, s in best.items():
        print(f"cut {name}: {s:.2f} s (best of {args.reps}), {s / best['one by one']:.2f}x one by one")
    print(f"level pixels resampled: one by one {len(xs) * n * n / 1e6:.0f} M, shared {shared_px / 1e6:.0f} M "
          f"({shared_px / (len(xs) * n * n):.2f}x)")


if __name__ == "__main__":
    main()
