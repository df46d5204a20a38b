"""Stage-1 wrapper overhead (issue 16): ``stguide``'s scVI fit against a bare scvi-tools call on the same data,
epochs, minibatch and seed. Goal: ≤ 5 % slower.

Both fit the same matrix (the 2,000 highly variable genes of the data, selected once beforehand, so that neither
pays for gene selection) with scvi-tools' default architecture and ``stguide``'s defaults (1 layer of 128, latent
16, ZINB, dispersion per gene, minibatch 128, all spots for training). The bare call is ``SCVI.setup_anndata`` +
``SCVI(...)`` + ``train(...)``; ours is ``get_encoder("scvi").fit`` (its input checks, its AnnData copy, its epoch
progress and its record of the steps taken included). They alternate ``--reps`` times; the ratio is of the medians.
The two fitted latents (posterior means) are compared: with the same seed they should be the same numbers.

Usage: python benchmarks/scvi_overhead.py [--data runs/genes-sweep/her2st.h5ad] [--epochs 10] [--reps 2]
(without --data, or when the file is absent: a synthetic dataset of 36 sections, about 14,000 spots)
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import numpy as np

from stguide.io import write_json_atomic


def _data(path: str | None):
    from stguide.data import read_dataset

    if path and Path(path).is_file():
        return read_dataset(path), path
    import tempfile

    from stguide.data import make_synthetic

    with tempfile.TemporaryDirectory() as tmp:
        return make_synthetic(8, 4, 440, seed=0, image_dir=tmp), "make_synthetic(8, 4, 440, seed=0)"


def bare(adata, epochs: int, seed: int) -> tuple[float, np.ndarray]:
    """A bare scvi-tools fit; (seconds, the latent posterior mean)."""
    import anndata as ad
    import scipy.sparse as sp
    import scvi

    t = time.perf_counter()
    a = ad.AnnData(X=sp.csr_matrix(adata.X, dtype=np.float32), obs=adata.obs[["patient"]].astype(str))
    scvi.settings.seed = seed
    scvi.model.SCVI.setup_anndata(a, batch_key="patient")
    m = scvi.model.SCVI(a, n_hidden=128, n_latent=16, n_layers=1, dropout_rate=0.1, gene_likelihood="zinb", dispersion="gene")
    m.train(max_epochs=epochs, accelerator="cpu", devices=1, batch_size=128, train_size=1.0, enable_progress_bar=False,
            enable_model_summary=False, logger=False)
    s = time.perf_counter() - t
    return s, m.get_latent_representation(a)


def ours(adata, epochs: int, seed: int) -> tuple[float, np.ndarray]:
    """``stguide``'s scVI encoder fit; (seconds, the latent posterior mean)."""
    from stguide.genes import GeneConfig, get_encoder

    enc = get_encoder("scvi", GeneConfig.from_dict({"n_top_genes": adata.n_vars, "seed": seed, "scvi": {"max_epochs": epochs}}))
    t = time.perf_counter()
    enc.fit(adata, batch_key="patient", progress=False)
    s = time.perf_counter() - t
    return s, enc.transform(adata)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="runs/genes-sweep/her2st.h5ad", help="a dataset (stguide data …); synthetic when absent")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", default="benchmarks/results/scvi_overhead")
    args = ap.parse_args()

    from stguide.genes.base import select_genes
    from stguide.genes.scvi import quiet

    adata, source = _data(args.data)
    adata = adata[:, select_genes(adata, 2000, "patient")].copy()
    print(f"{source}: {adata.n_obs} spots × {adata.n_vars} genes, {args.epochs} epochs, {args.reps} reps", flush=True)
    times: dict[str, list[float]] = {"bare": [], "ours": []}
    z: dict[str, np.ndarray] = {}
    with quiet():
        for r in range(args.reps):
            for name, fn in (("bare", bare), ("ours", ours)) if r % 2 == 0 else (("ours", ours), ("bare", bare)):
                s, z[name] = fn(adata, args.epochs, args.seed)
                times[name].append(round(s, 2))
                print(f"rep {r}: {name} {s:.1f} s", flush=True)
    diff = float(np.abs(z["ours"] - z["bare"]).max())
    ratio = statistics.median(times["ours"]) / statistics.median(times["bare"])
    rec = {"command": "python benchmarks/scvi_overhead.py " + " ".join(f"--{k} {v}" for k, v in vars(args).items() if k != "results"),
           "date": str(date.today()), "machine": f"{platform.machine()}, {os.cpu_count()} cores", "data": source,
           "spots": adata.n_obs, "genes": adata.n_vars, "epochs": args.epochs, "seconds": times,
           "latent_max_abs_difference": diff, "ratio_ours_over_bare": round(ratio, 3)}
    write_json_atomic(Path(args.results) / "results.json", rec)
    print(f"ours / bare: {ratio:.3f} (medians of {args.reps}); the two latents differ by at most {diff:.2e}")


if __name__ == "__main__":
    main()
