"""Patch extraction against its floor and against a BLEEP-style loader (issue 16): time and peak memory.

Four ways to decode or cut the same patches (``--size-um`` of tissue around every spot that has an image, resized to
``--out-px``), each run in a fresh process so that its peak RSS (``ru_maxrss``) is its own, with torch and the data
libraries imported before the clock starts:

- ``floor``: each image decoded once at the scale the patches need, and nothing else (Pillow's decode with the JPEG
  draft scale, or the TIFF pyramid level read by tifffile with its tiles decoded on all cores, tifffile's default
  being half of them, into the buffer ours decodes into: ``tiff.blank``, without numpy's huge pages): what any
  extraction must pay at least;
- ``tiles``: the same, but of a tiled TIFF level only the tiles the spots' fields touch (what ``ours`` decodes;
  a slide's background is skipped): the floor of an extraction that reads no more than it cuts;
- ``ours``: ``stguide.data.patches.extract_patches`` into a fresh cache (the memory-mapped uint8 store);
- ``floor-numpy`` (only when asked): the floor with a TIFF level decoded into numpy's own array instead;
- ``bleep``: as BLEEP's loader does, every section's full-resolution image held in memory, each patch cropped from
  it and resized, into an in-memory array.

Datasets: ``her2st`` (the native HER2ST layout under ``--realdata``: the sections that have an image) and
``synthetic-slide`` (one 40,000 px JPEG-tiled pyramidal TIFF at 0.25 µm/px from ``stguide.data.synthetic_slide``,
with spots on a 100 µm grid over its tissue). Goals: ours ≤ 1.3× the floor's time, and less memory than the peer.

Usage: python benchmarks/patch_extraction.py [--datasets her2st synthetic-slide] [--realdata ../shared/realdata]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

from stguide.io import write_json_atomic

SLIDE = "runs/bench/predict/slide-40000-0.25.tif"  # shared with benchmarks/predict_slide.py


def dataset(name: str, realdata: str, work: Path):
    """The AnnData whose sections' images are cut (its path in ``work`` is cached between the child processes)."""
    cached = work / f"{name}.h5ad"
    if cached.is_file():
        from stguide.data import read_dataset

        return read_dataset(cached)
    if name == "her2st":
        from stguide.data.readers import read

        a = read("her2st", str(Path(realdata) / "her2st"))
    else:
        a = _slide_dataset(Path(SLIDE))
    from stguide.data.model import write_dataset

    write_dataset(a, cached)
    return a


def _slide_dataset(slide: Path, um_per_px: float = 0.25, size: int = 40_000, pitch_um: float = 100.0):
    """Spots on a ``pitch_um`` grid over the synthetic slide's tissue (written first when absent)."""
    import scipy.sparse as sp

    from stguide.data.model import SectionInfo, combine_sections, finalise, make_section
    from stguide.data.synthetic_slide import tissue_blobs, tissue_field, write_synthetic_slide

    if not slide.is_file():
        slide.parent.mkdir(parents=True, exist_ok=True)
        write_synthetic_slide(slide.with_suffix(".part"), size=size, um_per_px=um_per_px)
        slide.with_suffix(".part").rename(slide)
    step = pitch_um / um_per_px
    g = np.arange(step, size - step, step)
    xs, ys = np.meshgrid(g, g)
    keep = tissue_field(xs, ys, tissue_blobs(size, 0)) > 0.5
    xs, ys = xs[keep], ys[keep]
    info = SectionInfo("S1", "S", str(slide.resolve()), um_per_px, 55.0, size, size)
    a = make_section(sp.csr_matrix((len(xs), 1), dtype=np.int32), ["G"], [f"spot{i}" for i in range(len(xs))], info=info,
                     x_px=xs, y_px=ys, file=slide)
    return finalise(combine_sections([a]))


def _sections(adata):
    from stguide.data.model import section_info

    for s in adata.obs["section"].cat.categories:
        info = section_info(adata, s)
        if info.has_image:
            m = (adata.obs["section"] == s).to_numpy()
            yield info, adata.obs["x_px"].to_numpy(float)[m], adata.obs["y_px"].to_numpy(float)[m]


def _decode_whole(image: str, need: float, numpy_buffer: bool = False) -> int:
    """Decode one image once at the scale ``need`` (full-resolution px per patch px) asks for; pixels decoded. A TIFF
    level goes into ``tiff.blank`` (or, with ``numpy_buffer``, the array tifffile allocates itself)."""
    import tifffile
    from PIL import Image

    from stguide.data.tiff import blank

    if image.lower().endswith((".tif", ".tiff")):
        with tifffile.TiffFile(image) as tf:
            levels = tf.series[0].levels
            full = levels[0].shape[1]
            lvl = max((lv for lv in levels if full / lv.shape[1] <= need), key=lambda lv: full / lv.shape[1])
            # all cores, into the zeroed buffer ours decodes into (no huge-page compaction stall), the fastest we have
            out = blank(lvl.shape) if lvl.dtype == np.uint8 and not numpy_buffer else None
            return int(np.prod(lvl.asarray(maxworkers=os.cpu_count(), out=out).shape[:2]))
    with Image.open(image) as im:
        d = max([f for f in (1, 2, 4, 8) if f <= need] or [1])
        if d > 1:
            im.draft("RGB", (math.ceil(im.size[0] / d), math.ceil(im.size[1] / d)))
        im.load()  # the decode itself, into Pillow's memory
        return im.size[0] * im.size[1]


def floor(adata, size_um: float, out_px: int, numpy_buffer: bool = False) -> int:
    """Decode each image once at the scale its patches need (Pillow draft / the TIFF pyramid level); pixels decoded."""
    return sum(_decode_whole(info.imaging()[0], size_um / info.imaging()[1] / out_px, numpy_buffer)
               for info, _, _ in _sections(adata))


def floor_numpy(adata, size_um: float, out_px: int) -> int:
    """The floor with a TIFF level decoded into the array tifffile allocates (numpy's, which asks for huge pages)."""
    return floor(adata, size_um, out_px, numpy_buffer=True)


def tiles(adata, size_um: float, out_px: int) -> dict[str, int]:
    """The floor of decoding only what the patches touch: of a tiled TIFF level just the tiles under the spots'
    fields (on all cores, by the function ``ours`` uses), of any other image the whole as in ``floor``. Returns the
    TIFF tiles decoded and the tiles their levels have."""
    import tifffile

    from stguide.data.tiff import decode_tiles, pick_level

    count = {"tiles_decoded": 0, "tiles": 0}
    for info, xs, ys in _sections(adata):
        image, mpp = info.imaging()
        if not image.lower().endswith((".tif", ".tiff")):
            _decode_whole(image, size_um / mpp / out_px)
            continue
        xy, half = np.column_stack([xs, ys]), size_um / mpp / 2
        with tifffile.TiffFile(image) as tf:
            _, index, scale = pick_level(tf.series[0], size_um / mpp / out_px)
            _, needed, _ = decode_tiles(tf.series[0].levels[index].pages[0], np.hstack([xy - half, xy + half]), scale)
        count["tiles_decoded"] += int(needed.sum())
        count["tiles"] += int(needed.size)
    return count


def ours(adata, size_um: float, out_px: int) -> int:
    from stguide.data.patches import PatchConfig, extract_patches

    with tempfile.TemporaryDirectory() as tmp:
        return len(extract_patches(adata, PatchConfig(size_um=size_um, out_px=out_px), tmp, progress=False))


def bleep(adata, size_um: float, out_px: int) -> int:
    """BLEEP-style: every full-resolution image in memory, then a crop and a resize per spot."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    images, spots = {}, []
    for info, xs, ys in _sections(adata):
        image, mpp = info.imaging()
        if image.lower().endswith((".tif", ".tiff")):
            import tifffile

            images[info.section] = tifffile.imread(image, level=0)
        else:
            with Image.open(image) as im:
                images[info.section] = np.asarray(im.convert("RGB"))
        spots += [(info.section, x, y, size_um / mpp / 2) for x, y in zip(xs, ys, strict=True)]
    out = np.empty((len(spots), out_px, out_px, 3), np.uint8)
    for i, (s, x, y, half) in enumerate(spots):
        img = images[s]
        x0, y0 = max(int(x - half), 0), max(int(y - half), 0)
        crop = img[y0:int(y + half), x0:int(x + half)]
        out[i] = np.asarray(Image.fromarray(crop).resize((out_px, out_px), Image.Resampling.BILINEAR))
    return len(out)


def child(args: argparse.Namespace) -> None:
    import resource

    adata = dataset(args.dataset, args.realdata, Path(args.work))
    import torch  # noqa: F401 - loaded before the clock in every way: ours resamples with it, and every stguide run
    # that trains has it loaded anyway (its import is not the extraction's cost)
    t = time.perf_counter()
    ways = {"floor": floor, "floor-numpy": floor_numpy, "tiles": tiles, "ours": ours, "bleep": bleep}
    n = ways[args.mode](adata, args.size_um, args.out_px)
    s = time.perf_counter() - t
    print(json.dumps({"seconds": s, "n": n, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["her2st", "synthetic-slide"], choices=["her2st", "synthetic-slide"])
    ap.add_argument("--realdata", default="../shared/realdata")
    ap.add_argument("--size-um", type=float, default=200.0)
    ap.add_argument("--out-px", type=int, default=224)
    ap.add_argument("--reps", type=int, default=2, help="alternations of the three (default 2; the best time of each)")
    ap.add_argument("--ways", nargs="+", default=["floor", "tiles", "ours", "bleep"],
                    choices=["floor", "floor-numpy", "tiles", "ours", "bleep"],
                    help="which ways to run (default: floor, tiles, ours and bleep, which the ratios need; floor-numpy "
                         "is the floor decoding a TIFF level into numpy's own array, to compare the buffers)")
    ap.add_argument("--work", default="runs/bench/patches")
    ap.add_argument("--results", default="benchmarks/results/patch_extraction")
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--dataset", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:
        return child(args)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    rec: dict = {"command": "python benchmarks/patch_extraction.py " + " ".join(sys.argv[1:]), "date": str(date.today()),
                 "machine": f"{platform.machine()}, {os.cpu_count()} cores", "size_um": args.size_um, "out_px": args.out_px,
                 "datasets": {}}
    for ds in args.datasets:
        if ds == "her2st" and not (Path(args.realdata) / "her2st").is_dir():
            print(f"skipping her2st: {args.realdata}/her2st is absent")
            continue
        runs: dict[str, list[dict]] = {m: [] for m in args.ways}
        for _ in range(args.reps):
            for mode in runs:
                out = subprocess.run([sys.executable, __file__, "--mode", mode, "--dataset", ds, "--realdata", args.realdata,
                                      "--size-um", str(args.size_um), "--out-px", str(args.out_px), "--work", args.work],
                                     check=True, capture_output=True, text=True).stdout
                runs[mode].append(json.loads(out.strip().splitlines()[-1]))
                print(ds, mode, runs[mode][-1], flush=True)
        best = {m: min(r["seconds"] for r in v) for m, v in runs.items()}
        peak = {m: max(r["peak"] for r in v) / 2**30 for m, v in runs.items()}
        if set(runs) != {"floor", "tiles", "ours", "bleep"}:
            rec["datasets"][ds] = {"runs": runs, "best_seconds": best, "peak_gib": peak}
            print(ds, "best seconds", best, "peak GiB", peak, flush=True)
            continue
        rec["datasets"][ds] = {"runs": runs, "best_seconds": best, "peak_gib": peak, "patches": runs["ours"][0]["n"],
                               "ours_over_floor": best["ours"] / best["floor"], "ours_over_tiles": best["ours"] / best["tiles"],
                               "bleep_over_floor": best["bleep"] / best["floor"],
                               "ours_over_bleep_memory": peak["ours"] / peak["bleep"]}
        r = rec["datasets"][ds]
        print(f"{ds}: {r['patches']} patches; ours {best['ours']:.1f} s = {r['ours_over_floor']:.2f}x the floor "
              f"({best['floor']:.1f} s), {r['ours_over_tiles']:.2f}x decoding only the tiles the patches touch "
              f"({best['tiles']:.1f} s), BLEEP-style {best['bleep']:.1f} s; peak RSS ours {peak['ours']:.2f} GiB, "
              f"floor {peak['floor']:.2f}, BLEEP-style {peak['bleep']:.2f}", flush=True)
    write_json_atomic(Path(args.results) / "results.json", rec)


if __name__ == "__main__":
    main()
