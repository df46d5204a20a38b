"""How many optimisation steps scVI needs before its latent mixes patients (synthetic data, patient as the batch).

Fits `logexpr` and `scvi` on make_synthetic(3 patients × 1 section × 144 spots, seed 0) and prints iLISI
(scib-metrics, 30-NN, 0-1) for scVI trained with different numbers of epochs and minibatch sizes.
Usage: python benchmarks/scvi_steps.py [--out benchmarks/results/scvi_steps]
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

from stguide.data import make_synthetic
from stguide.evaluate.audit import AuditConfig, batch_metrics
from stguide.genes import get_encoder

SETTINGS = [("logexpr", 0, 0), ("scvi", 100, 128), ("scvi", 200, 128), ("scvi", 400, 64)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/scvi_steps")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        a = make_synthetic(3, 1, 144, seed=0, image_dir=tmp)
    batch = a.obs["patient"].astype(str).to_numpy()
    rows = []
    for name, epochs, bs in SETTINGS:
        t0 = time.time()
        kw = {"scvi": dict(n_latent=10, max_epochs=epochs, batch_size=bs)} if name == "scvi" else {}
        z = get_encoder(name, **kw).fit(a, progress=False).transform(a)
        steps = epochs * math.ceil(a.n_obs / bs) if bs else 0
        ilisi = batch_metrics(z, batch, cfg=AuditConfig(n_neighbors=30))["ilisi"]
        rows.append({"encoder": name, "epochs": epochs, "batch_size": bs, "steps": steps, "ilisi": round(ilisi, 3),
                     "seconds": round(time.time() - t0, 1)})
        print(rows[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"command": "python benchmarks/scvi_steps.py", "rows": rows}, indent=1))
    md = "| encoder | epochs | minibatch | steps | iLISI |\n|---|---|---|---|---|\n"
    md += "".join(f"| {r['encoder']} | {r['epochs'] or '–'} | {r['batch_size'] or '–'} | {r['steps'] or '–'} | {r['ilisi']:.3f} |\n" for r in rows)
    (out / "table.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
