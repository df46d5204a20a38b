"""Stage-2 end-to-end throughput against its floor (issue 16): spots per second of ``train_contrastive`` (``trunk:
full``: patches read from the memory-mapped store, augmented, normalised, batched by the DataLoader, the trunk and
heads trained by Lightning, a checkpoint per epoch) against the bare forward + backward + AdamW step of the same
module on in-memory tensors of the same shape and batch. Goal ≥ 0.9×: the data pipeline and the trainer hidden.

Each measurement trains one epoch over ``--spots`` patches of the store; the two alternate ``--reps`` times and the
best of each is kept. The store: the real run's patches when ``--patches`` exists, else synthetic patches (at least
``--spots``). On a machine with a GPU both run there as ``train_contrastive`` does by default (``precision: auto``:
bf16 mixed precision; the bare step under ``torch.autocast`` with bfloat16), and the card's name is recorded.

Usage: python benchmarks/stage2_throughput.py [--patches runs/stage2-cached-2/patches] [--spots 512] [--batch-size 32]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

import numpy as np
import torch

from stguide.io import write_json_atomic


def _store(patches: str, work: Path, spots: int):
    from stguide.data.patches import PatchConfig, PatchStore, extract_patches

    found = sorted(Path(patches).glob("patches-*")) if Path(patches).is_dir() else []
    if found:
        return PatchStore(found[0])
    from stguide.data import make_synthetic

    a = make_synthetic(3, 2, max(128, -(-spots // 6)), seed=0, image_dir=str(work / "images"))  # at least ``spots``
    return extract_patches(a, PatchConfig(size_um=100, out_px=224), work / "patches", progress=False)


def ours(cfg, store, names: list[str], z: np.ndarray) -> float:
    """Seconds of one epoch of ``train_contrastive`` over ``names``."""
    from stguide.contrastive.train import train_contrastive

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        train_contrastive(cfg, store, names, z, None, tmp, progress=False)
        return time.perf_counter() - t


def bare(cfg, store, n: int, gene_dim: int) -> float:
    """Seconds of the same number of steps of the same module on in-memory tensors."""
    from stguide.contrastive.module import total_loss
    from stguide.contrastive.train import build_module

    torch.manual_seed(cfg.seed)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where train_contrastive trains
    module, _ = build_module(cfg, store, gene_dim)
    module.to(dev).train()
    opt = module.configure_optimizers()["optimizer"]
    px = int(store.meta["out_px"])
    b = cfg.batch_size
    x = torch.randn(b, 3, px, px, device=dev).contiguous(memory_format=torch.channels_last)  # the trunk's fastest layout
    z = torch.randn(b, gene_dim, device=dev)
    batch = (x, z, z, torch.full((b,), -1, device=dev), torch.zeros(b, dtype=torch.long, device=dev))
    # the precision train_contrastive picks (precision: auto): bf16 autocast on a GPU, float32 on the CPU
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else contextlib.nullcontext()
    t = time.perf_counter()
    for _ in range(-(-n // b)):
        with autocast:
            loss = total_loss(module.compute_losses(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patches", default="runs/stage2-cached-2/patches", help="a run's patches folder (synthetic when absent)")
    ap.add_argument("--backbone", default="tf_efficientnet_lite0")
    ap.add_argument("--spots", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--results", default="benchmarks/results/stage2_throughput")
    args = ap.parse_args()

    from stguide.contrastive.config import ContrastiveConfig

    with tempfile.TemporaryDirectory() as work:
        store = _store(args.patches, Path(work), args.spots)
        names = list(store.obs_names[: args.spots])
        gene_dim = 16
        z = np.random.default_rng(0).normal(size=(len(names), gene_dim)).astype(np.float32)
        cfg = replace(ContrastiveConfig(), backbone=args.backbone, init="none", trunk="full", epochs=1,
                      batch_size=args.batch_size, num_workers=args.num_workers)
        times: dict[str, list[float]] = {"ours": [], "bare": []}
        for r in range(args.reps):
            for name in ("bare", "ours") if r % 2 == 0 else ("ours", "bare"):
                s = ours(cfg, store, names, z) if name == "ours" else bare(cfg, store, len(names), gene_dim)
                times[name].append(round(s, 2))
                print(f"rep {r}: {name} {s:.1f} s ({len(names) / s:.1f} spots/s)", flush=True)
    best = {k: min(v) for k, v in times.items()}
    rec = {"command": "python benchmarks/stage2_throughput.py " + " ".join(sys.argv[1:]), "date": str(date.today()),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads",
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
           "precision": "bf16-mixed" if torch.cuda.is_available() else "32-true",
           "store": str(store.path), "backbone": args.backbone, "px": int(store.meta["out_px"]), "spots": len(names),
           "batch_size": args.batch_size, "num_workers": args.num_workers, "augment": cfg.augment, "seconds": times,
           "spots_per_s": {k: round(len(names) / v, 2) for k, v in best.items()}, "ratio": round(best["bare"] / best["ours"], 3)}
    write_json_atomic(Path(args.results) / "results.json", rec)
    print(f"end to end / bare: {rec['ratio']:.2f}x ({rec['spots_per_s']['ours']} vs {rec['spots_per_s']['bare']} spots/s)")


if __name__ == "__main__":
    main()
