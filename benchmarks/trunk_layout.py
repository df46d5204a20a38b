"""The trunk's forward pass in the default memory layout against channels-last, side by side in one run.

Times `tf_efficientnet_lite0` (ImageNet weights) on the same patches of a patch cache, batch 64, both layouts,
alternating three times, and prints images per second and the ratio. The feature cache builds channels-last because
of this measurement.
Usage: python benchmarks/trunk_layout.py --patches runs/stage2-cached-2/patches/patches-<fingerprint> [--n 256]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date

import torch


def main() -> None:
    from stguide.contrastive.encoders import build_image_encoder
    from stguide.data.patches import PatchStore

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", required=True, help="a patch cache folder (224 px patches for a representative figure)")
    ap.add_argument("--n", type=int, default=256)
    args = ap.parse_args()
    store = PatchStore(args.patches)
    model, transform = build_image_encoder("tf_efficientnet_lite0", "effnet-lite0")
    model.eval()
    x = torch.stack([transform(store[i]) for i in range(min(args.n, len(store)))])
    layouts = {"default": (model, x), "channels_last": (model, x.contiguous(memory_format=torch.channels_last))}
    best = {k: float("inf") for k in layouts}
    for _ in range(3):
        for name, (m, xs) in layouts.items():
            m = m.to(memory_format=torch.channels_last if name == "channels_last" else torch.contiguous_format)
            with torch.inference_mode():
                t0 = time.perf_counter()
                for s in range(0, len(xs), 64):
                    m(xs[s:s + 64])
                best[name] = min(best[name], time.perf_counter() - t0)
    rate = {k: len(x) / v for k, v in best.items()}
    print(json.dumps({"command": "python benchmarks/trunk_layout.py --patches " + args.patches, "date": str(date.today()),
                      "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads", "images": len(x),
                      "images_per_s": {k: round(v, 1) for k, v in rate.items()},
                      "ratio_channels_last_over_default": round(rate["channels_last"] / rate["default"], 2)}, indent=1))


if __name__ == "__main__":
    main()
