"""``stguide demo``: the whole method on the embedded synthetic dataset, leave-one-patient-out."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from os import PathLike
from pathlib import Path

from stguide.contrastive.train import ContrastiveConfig
from stguide.data.model import write_dataset
from stguide.data.patches import extract_patches
from stguide.data.synthetic import make_synthetic
from stguide.evaluate.lopo import LopoConfig, Method, run_lopo
from stguide.evaluate.probes import ProbeConfig
from stguide.genes.base import GeneConfig
from stguide.report.markdown import write_report


@dataclass(frozen=True)
class DemoSize:
    n_patients: int
    sections_per_patient: int
    spots_per_section: int
    out_px: int
    scvi_epochs: int
    contrastive_epochs: int
    backbone: str


FULL = DemoSize(4, 2, 144, 64, 150, 10, "resnet10t")
QUICK = DemoSize(3, 1, 100, 48, 60, 4, "resnet10t")

METHODS = (
    Method("random-init"),
    Method("ours-scvi-clip", gene_encoder="scvi", loss="clip"),
)


def demo_config(size: DemoSize, seed: int = 0) -> LopoConfig:
    return LopoConfig(
        methods=METHODS,
        genes=GeneConfig(n_top_genes=2000, n_latent=10, max_epochs=size.scvi_epochs, seed=seed),
        contrastive=ContrastiveConfig(backbone=size.backbone, epochs=size.contrastive_epochs, batch_size=64, seed=seed),
        probe=ProbeConfig(),
    )


def run_demo(out: str | PathLike = "stguide-demo", quick: bool = False, seed: int = 0, progress: bool = True) -> dict:
    """Generate the synthetic dataset, cut 100 µm patches, run LOPO (scVI + CLIP vs a random-init backbone), and
    write ``results.json`` and ``report.md`` under ``out``. Returns the results."""
    out = Path(out)
    size = QUICK if quick else FULL
    t0 = time.time()
    adata = make_synthetic(size.n_patients, size.sections_per_patient, size.spots_per_section, size.out_px, seed,
                           image_dir=out / "data" / "images")
    write_dataset(adata, out / "data" / "dataset.h5ad")
    store = extract_patches(adata, size_um=100.0, out_px=size.out_px, cache_dir=out / "patches", progress=progress)
    cfg = demo_config(size, seed)
    cmd = f"stguide demo --out {out}" + (" --quick" if quick else "")
    results = run_lopo(cfg, adata, store, out, progress, extra={"command": cmd, "demo": asdict(size)})
    results["runtime_s"] = round(time.time() - t0, 1)
    from stguide.io import write_json_atomic

    write_json_atomic(out / "results.json", results)
    write_report(out)
    return results
