"""Peak memory of stage-2 training (issue 16, benchmark 3) on a synthetic set of HER2ST's size: 36 sections (6
patients × 6), 13,824 spots, 224 px patches of 100 µm. Goal ≤ 2 GiB.

Setup (not measured): the sections are generated at 1 µm/px, their patches cut into the memory-mapped store
(2.1 GB of uint8 on disk) and a PCA gene target fitted on all spots. Then each trunk mode trains in a fresh process
on every spot (``fit_image_encoder``, as an experiment cell calls it), ``tf_efficientnet_lite0``, batch 64:

- ``frozen``: the pooled trunk features of 1 view per patch cached, then the head trained 3 epochs;
- ``partial``: the activations before the last block cached (1 view), then that block and the head trained 2 epochs;
- ``full``: trained end to end on the images for 20 steps (``trainer_kwargs: {limit_train_batches: 20}``, so the
  run fits this machine; memory does not grow with steps), then every spot embedded;
- ``full-ckpt``: the same with ``grad_checkpointing: true``;
- ``full-micro``: the same with ``micro_batch: 16`` (``--micro-batch``; the trunk in checkpointed micro-batches);
- ``bare``: the floor of ``full``'s training — the same module's forward + backward + AdamW step on one in-memory
  batch of random tensors (64 × 3 × 224 × 224), no data, no Lightning; ``bare-micro``: the same with
  ``micro_batch: 16``.

For the ``full`` modes the peak is also split at the end of training: ``train`` (the Lightning fit) and ``embed``
(every spot embedded afterwards, ``extract_features``).

Each process reports ``ru_maxrss`` (its peak resident set, the import of torch included) and the largest RssAnon
sampled every 50 ms (its own memory, without the file pages of the memory-mapped caches, which the kernel can drop at
will). The patch store's size is given beside them: a loader that held it in RAM would need that much more.

Usage: python benchmarks/stage2_memory.py [--work runs/bench/stage2-memory] [--modes frozen partial full full-ckpt full-micro bare bare-micro]
       [--micro-batch 16]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from datetime import date
from pathlib import Path

from stguide.io import write_json_atomic

MODES = {
    "frozen": {"trunk": "frozen", "views": 1, "epochs": 3},
    "partial": {"trunk": "partial", "trunk_blocks": 1, "views": 1, "epochs": 2},
    "full": {"trunk": "full", "epochs": 1, "augment": True, "trainer_kwargs": {"limit_train_batches": 20}},
    "full-ckpt": {"trunk": "full", "epochs": 1, "augment": True, "trainer_kwargs": {"limit_train_batches": 20},
                  "grad_checkpointing": True},
    "full-micro": {"trunk": "full", "epochs": 1, "augment": True, "trainer_kwargs": {"limit_train_batches": 20},
                   "micro_batch": 16},
}
BARE = {"bare": {}, "bare-micro": {"micro_batch": 16}}


def setup(work: Path):
    """The dataset, its patch store and a PCA target (cached under ``work``)."""
    from stguide.data.model import write_dataset
    from stguide.data.patches import PatchConfig, extract_patches
    from stguide.data.readers import read
    from stguide.data.synthetic import make_synthetic
    from stguide.genes import GeneConfig, get_encoder, load_encoder

    data = work / "dataset.h5ad"
    if not data.is_file():
        a = make_synthetic(n_patients=6, sections_per_patient=6, spots_per_section=384, seed=0,
                           image_dir=work / "images", um_per_px_range=(1.0, 1.0))
        write_dataset(a, data)
    adata = read("h5ad", str(data))
    store = extract_patches(adata, PatchConfig(size_um=100, out_px=224), work / "patches", progress=False)
    genes = work / "genes-pca"
    if not (genes / "key.txt").is_file():
        enc = get_encoder("pca", GeneConfig(n_top_genes=200)).fit(adata, progress=False)
        enc.save(genes)
        (genes / "key.txt").write_text("pca")
    return adata, store, load_encoder(genes)


def anon_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    return 0


def one(mode: str, work: Path) -> dict:
    from stguide.contrastive.api import fit_image_encoder
    from stguide.contrastive.config import ContrastiveConfig

    adata, store, enc = setup(work)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], anon_bytes())

    threading.Thread(target=sample, daemon=True).start()
    cfg = ContrastiveConfig.from_dict({"backbone": "tf_efficientnet_lite0", "init": "none", "batch_size": 64, "seed": 0,
                                       **MODES.get(mode, {**MODES["full"], **BARE.get(mode, {})})})
    out = work / f"run-{mode}"
    if out.exists():
        import shutil

        shutil.rmtree(out)
    phases: dict[str, float] = {}
    t = time.perf_counter()
    if mode in BARE:
        bare_steps(cfg, store, enc.transform(adata[:1]).shape[1])
    else:
        import stguide.contrastive.api as api

        train = api.train_contrastive

        def marked(*a, **k):  # the peak so far is training's; the embedding pass starts a new one
            r = train(*a, **k)
            phases["train"], peak[0] = max(peak[0], anon_bytes()), 0
            return r

        api.train_contrastive = marked
        fit_image_encoder(cfg, adata, store, enc, out, progress=False, features_dir=out / "features")
        if "train" in phases:
            phases["embed"] = peak[0]
            peak[0] = max(phases.values())
    seconds = time.perf_counter() - t
    stop.set()
    return {"mode": mode, "spots": int(adata.n_obs), "seconds": round(seconds, 1),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2 ** 30, 3),
            "peak_anon_gib": round(max(peak[0], anon_bytes()) / 2 ** 30, 3),
            **{f"peak_anon_{k}_gib": round(v / 2 ** 30, 3) for k, v in phases.items()}}


def bare_steps(cfg, store, gene_dim: int, steps: int = 3) -> None:
    """The module's forward + backward + AdamW step on one in-memory batch (the floor of ``full``'s training)."""
    import torch

    from stguide.contrastive.module import total_loss
    from stguide.contrastive.train import build_module

    module, _ = build_module(cfg, store, gene_dim)
    module.train()
    opt = module.configure_optimizers()["optimizer"]
    b, px = cfg.batch_size, int(store.meta["out_px"])
    x, z = torch.randn(b, 3, px, px).contiguous(memory_format=torch.channels_last), torch.randn(b, gene_dim)
    for _ in range(steps):
        loss = total_loss(module.compute_losses((x, z, z, torch.full((b,), -1), torch.zeros(b, dtype=torch.long))))
        opt.zero_grad()
        loss.backward()
        opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="runs/bench/stage2-memory", help="data, patches and run folders")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=[*MODES, *BARE])
    ap.add_argument("--results", default="benchmarks/results/stage2_memory", help="where table.md and results.json go")
    ap.add_argument("--one", choices=[*MODES, *BARE], help=argparse.SUPPRESS)
    ap.add_argument("--micro-batch", type=int, default=16, help="micro_batch of the full-micro and bare-micro modes")
    args = ap.parse_args()
    work = Path(args.work)
    MODES["full-micro"]["micro_batch"] = BARE["bare-micro"]["micro_batch"] = args.micro_batch
    if args.one:
        print("ROW " + json.dumps(one(args.one, work)), flush=True)
        return
    work.mkdir(parents=True, exist_ok=True)
    _, store, _ = setup(work)
    store_gib = sum(p.stat().st_size for p in store.path.glob("*.npy")) / 2 ** 30
    rows = []
    for mode in args.modes:
        p = subprocess.run([sys.executable, __file__, "--one", mode, "--work", str(work), "--micro-batch", str(args.micro_batch)],
                           capture_output=True, text=True,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
        line = [x for x in p.stdout.splitlines() if x.startswith("ROW ")]
        if p.returncode or not line:
            sys.exit(f"{mode} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        rows.append(json.loads(line[0][4:]))
        print(rows[-1], flush=True)
    md = (f"{rows[0]['spots']:,} spots, 224 px patches; the patch store is {store_gib:.2f} GiB on disk (memory-mapped)\n\n"
          "| trunk mode | seconds | peak RSS GiB (ru_maxrss) | peak anonymous GiB | of it: training | of it: embedding |\n"
          "|---|---|---|---|---|---|\n"
          + "".join(f"| {r['mode']} | {r['seconds']:.0f} | {r['peak_rss_gib']:.2f} | {r['peak_anon_gib']:.2f} | "
                    f"{r.get('peak_anon_train_gib', float('nan')):.2f} | {r.get('peak_anon_embed_gib', float('nan')):.2f} |\n"
                    for r in rows))
    print(md)
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    cmd = ("python benchmarks/stage2_memory.py" + (f" --modes {' '.join(args.modes)}" if args.modes != list(MODES) else "")
           + (f" --micro-batch {args.micro_batch}" if args.micro_batch != 16 else ""))
    (res / "table.md").write_text(f"Produced by: `{cmd}` ({date.today()}, {platform.node()}, {os.cpu_count()} CPUs)\n\n" + md)
    write_json_atomic(res / "results.json", {"command": cmd, "date": str(date.today()), "machine": platform.platform(),
                                             "store_gib": store_gib, "rows": rows})


if __name__ == "__main__":
    main()
