"""The batch/biology audit against scib-metrics called directly (issue 16: the slowest part of the scaling run).

*Peer*: the same ten metrics computed the way stguide computed them before ``evaluate/fast_metrics.py``, each
scib-metrics function on its own (its own kNN graph for graph connectivity and for cLISI, one silhouette pass for
``silhouette_label`` and another inside ``isolated_labels``, scib-metrics' k-means). *Ours*: ``stguide.evaluate.audit``.
Both on the same arrays in one process, after a warm-up on a small set; the best of ``--reps`` alternations counts
(JAX compiles scib-metrics' code again for every new array shape, which the first pass pays, so it is kept too).
Prints seconds, the ratio and the largest difference between the two rows.

Data: ``synthetic-<n>``: image-like features (512 dimensions, 7 labels, 4 patients with a shift each), and, when
present, ``her2st-pca``: the 50-component PCA of all 36 HER2ST sections (``stguide data her2st``, 13,620 spots,
pathologist labels on 5 of them), the representation the stage-1 study audits.

Usage: python benchmarks/audit_speed.py [--sizes 4000 8000 16000] [--her2st runs/genes-sweep/her2st.h5ad]
       [--out benchmarks/results/audit_speed]
"""
from __future__ import annotations

import argparse
import platform
import time
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from stguide.evaluate.audit import AuditConfig, audit, knn, use_compilation_cache
from stguide.io import write_json_atomic


def peer_audit(x: np.ndarray, batch: np.ndarray, labels: np.ndarray, cfg: AuditConfig = AuditConfig()) -> dict[str, float]:
    """The ten metrics from scib-metrics' own functions, as stguide called them before its fast paths."""
    import scib_metrics as sm

    ok = pd.notna(labels)
    lab, xl, bl = labels[ok].astype(str), x[ok], batch[ok]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nn = knn(x, cfg.n_neighbors)
        kbet = sm.kbet(nn, batch)
        row = {"ilisi": float(sm.ilisi_knn(nn, batch)), "kbet": float(kbet[0] if isinstance(kbet, tuple) else kbet),
               "graph_connectivity": float(sm.graph_connectivity(knn(xl, cfg.n_neighbors), lab)),
               "bras": float(sm.bras(xl, lab, bl)),
               "silhouette_label": float(sm.silhouette_label(xl, lab)),
               "clisi": float(sm.clisi_knn(knn(xl, cfg.n_neighbors), lab))}
        row.update({k: float(v) for k, v in sm.nmi_ari_cluster_labels_kmeans(xl, lab).items()})
        row["isolated_labels"] = float(sm.isolated_labels(xl, lab, bl))
    return row


def synthetic(n: int, d: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 7, n)
    patient = rng.integers(0, 4, n)
    x = rng.normal(size=(n, d)) + (lab[:, None] == np.arange(d)[None, :] % 7) * 1.5 + patient[:, None] * 0.3
    return x.astype(np.float32), np.array([f"P{p}" for p in patient]), lab.astype(str).astype(object)


def her2st(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from stguide.data import read_dataset
    from stguide.genes import GeneConfig, get_encoder

    a = read_dataset(path)
    z = get_encoder("pca", GeneConfig()).fit(a, progress=False).transform(a)
    labels = a.obs["label"].astype(object).where(a.obs["label"].astype(str) != "undetermined").to_numpy()
    return np.asarray(z, np.float32), a.obs["patient"].astype(str).to_numpy(), labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[4000, 8000, 16000])
    ap.add_argument("--her2st", default="runs/genes-sweep/her2st.h5ad")
    ap.add_argument("--reps", type=int, default=2, help="alternations; the best counts (the first pays JAX's "
                                                                 "compilation for this data's shapes, also kept)")
    ap.add_argument("--out", default="benchmarks/results/audit_speed")
    args = ap.parse_args()
    use_compilation_cache()
    sets = {f"synthetic-{n}": (lambda n=n: synthetic(n)) for n in args.sizes}
    if Path(args.her2st).is_file():
        sets["her2st-pca"] = lambda: her2st(Path(args.her2st))
    x, b, lab = synthetic(600, 32)
    peer_audit(x, b, lab), audit({"x": x}, b, lab)  # warm-up: JAX compiles (or loads) both paths' code
    rows = []
    for name, make in sets.items():
        x, b, lab = make()
        peer_s, ours_s = [], []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            peer = peer_audit(x, b, lab)
            t1 = time.perf_counter()
            ours = audit({"x": x}, b, lab).iloc[0].to_dict()
            ours_s.append(time.perf_counter() - t1)
            peer_s.append(t1 - t0)
        diff = max(abs(peer[k] - ours[k]) for k in peer)
        row = {"data": name, "spots": len(x), "dims": x.shape[1], "labelled": int(pd.notna(lab).sum()),
               "peer_s": round(min(peer_s), 1), "ours_s": round(min(ours_s), 1),
               "first_peer_s": round(peer_s[0], 1), "first_ours_s": round(ours_s[0], 1),
               "speed-up": round(min(peer_s) / min(ours_s), 2), "max_abs_diff": float(diff),
               "peer": peer, "ours": {k: float(v) for k, v in ours.items()}}
        rows.append(row)
        print(f"{name}: {len(x)} spots × {x.shape[1]}: scib-metrics {row['peer_s']} s, stguide {row['ours_s']} s "
              f"({row['speed-up']}× faster; first pass {row['first_peer_s']} vs {row['first_ours_s']} s), largest metric "
              f"difference {diff:.1e}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "results.json", {
        "command": "python benchmarks/audit_speed.py " + " ".join(["--sizes", *map(str, args.sizes), "--reps", str(args.reps)]),
        "date": str(date.today()), "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "rows": rows})


if __name__ == "__main__":
    main()
