"""Stage-1 study (issue 14): which scVI-family setting mixes HER2ST's patients and keeps the tissue.

Each setting is fitted on all sections of the HER2ST data (patient as the batch unless the setting says otherwise)
and audited with scib-metrics: batch mixing with patient as the batch (iLISI, kBET, graph connectivity, BRAS, PCR
comparison) and label keeping on the labelled spots (silhouette, cLISI, NMI, ARI, isolated labels). The settings
vary one factor at a time from the package default (``genes:`` with no options: scvi-tools' step rule, 1 layer,
latent 16, zinb, dispersion per gene, minibatch 128); a full grid does not fit 2 CPU cores. ``pca`` is the
reference the rule compares with.

The rule that picks settings (declared before the results): among the scVI-family settings whose label score (the
mean of the five label metrics) is at least 90 % of PCA's, the highest iLISI first. ``--combined`` adds the setting
that combines, for each factor, the level the rule ranks best; ``--lopo K`` runs the gene-side LOPO (5 labelled
patients) of the K best settings and of PCA; ``--lopo-also`` adds named settings (the goal's own check: a setting
that mixes patients to iLISI ≥ 0.3 is LOPO-tested even when the rule's label floor does not admit it).

Every fit is cached under ``--out/audit/<setting>/`` (its settings' fingerprint in ``key.txt``), so an interrupted
study continues and ``--only`` runs a part of it; ``--reuse`` takes a setting's row from the results.json a previous
run left in ``--results`` when the cache folder is gone. The gene-side LOPO cells (small JSON files) go under
``--results/lopo/`` so that they are kept with the results. Prints, and writes ``--results/table.md`` and
``results.json``: the audit row, the fit's wall-clock seconds, and the epochs and optimisation steps it took.

Usage: python benchmarks/genes_sweep.py --data runs/genes-sweep/her2st.h5ad [--only NAME ...] [--combined] [--lopo 3]
       [--lopo-also NAME ...] [--folds PATIENT ...] [--reuse] [--lopo-out DIR]
(make the data once with: stguide data her2st ../shared/realdata/her2st --out runs/genes-sweep/her2st.h5ad)
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from stguide.evaluate.audit import BIO_METRICS, audit
from stguide.evaluate.config import merge
from stguide.genes import GeneConfig, get_encoder
from stguide.io import fingerprint, write_json_atomic

BASE: dict[str, Any] = {"n_top_genes": 2000, "seed": 0}
# name: (encoder, factor, changes to BASE's genes: section, batch column)
SETTINGS: dict[str, tuple[str, str, dict[str, Any], str]] = {
    "pca": ("pca", "reference", {}, "patient"),
    "scvi": ("scvi", "default", {}, "patient"),
    "scvi/steps-x4": ("scvi", "steps", {"scvi": {"batch_size": 32}}, "patient"),  # 4x the minibatches per epoch
    "scvi/layers-2": ("scvi", "n_layers", {"scvi": {"n_layers": 2}}, "patient"),
    "scvi/latent-10": ("scvi", "n_latent", {"scvi": {"n_latent": 10}}, "patient"),
    "scvi/latent-30": ("scvi", "n_latent", {"scvi": {"n_latent": 30}}, "patient"),
    "scvi/gene-batch": ("scvi", "dispersion", {"scvi": {"dispersion": "gene-batch"}}, "patient"),
    "scvi/nb": ("scvi", "likelihood", {"scvi": {"gene_likelihood": "nb"}}, "patient"),
    "scvi/section": ("scvi", "batch", {}, "section"),
    "scanvi": ("scanvi", "scanvi default", {}, "patient"),
    "scanvi/epochs-30": ("scanvi", "scanvi epochs", {"scanvi": {"max_epochs": 30}}, "patient"),
    "sysvi": ("sysvi", "sysvi default", {}, "patient"),
    "sysvi/cycle-0": ("sysvi", "sysvi cycle", {"sysvi": {"cycle_weight": 0.0}}, "patient"),
    "sysvi/cycle-10": ("sysvi", "sysvi cycle", {"sysvi": {"cycle_weight": 10.0}}, "patient"),
    "sysvi/vamp-20": ("sysvi", "sysvi prior", {"sysvi": {"n_prior_components": 20}}, "patient"),
    "sysvi/normal-prior": ("sysvi", "sysvi prior", {"sysvi": {"prior": "standard_normal"}}, "patient"),
}
SCVI_FACTORS = ("steps", "n_layers", "n_latent", "dispersion", "likelihood", "batch")


def label_score(row: dict[str, float]) -> float:
    return float(np.mean([row[m] for m in BIO_METRICS if m in row]))


def fit_and_audit(adata, name: str, encoder: str, changes: dict[str, Any], batch_key: str, out: Path,
                  earlier: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fit one setting on every spot, audit its latent; cached in ``out/<name>/``.

    ``earlier``: the record a previous run of this study wrote to its results.json; used instead of a refit when it
    is the same setting on data of the same size (the cache folder may not have survived, results.json did).
    """
    cfg = GeneConfig.from_dict(merge(BASE, changes))
    enc = get_encoder(encoder, cfg)
    folder = out / name.replace("/", "__")
    key = fingerprint(enc.settings(), batch_key, adata.n_obs, adata.n_vars, "v1")
    if (folder / "key.txt").is_file() and (folder / "key.txt").read_text() == key:
        return json.loads((folder / "row.json").read_text())
    if earlier is not None and (earlier["encoder"], earlier["changes"], earlier["batch_key"]) == (encoder, changes, batch_key):
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(folder / "row.json", earlier)
        (folder / "key.txt").write_text(key)
        return earlier
    t0 = time.perf_counter()
    enc.fit(adata, batch_key=batch_key, labels_key="label", progress=True)
    fit_s = time.perf_counter() - t0
    z = enc.transform(adata)
    labels = adata.obs["label"].astype(object).where(adata.obs["label"].astype(str) != "undetermined").to_numpy()
    pre = get_encoder("pca", GeneConfig.from_dict(BASE)).fit(adata, progress=False).transform(adata)
    row = {k: float(v) for k, v in audit({name: z}, adata.obs["patient"].astype(str).to_numpy(), labels, x_pre=pre).iloc[0].items()}
    record = {"setting": name, "encoder": encoder, "batch_key": batch_key, "changes": changes, "audit": row,
              "label_score": label_score(row), "fit_seconds": round(fit_s, 1),
              "training": enc.fitted_on.get("training", {})}
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / "row.json", record)
    (folder / "key.txt").write_text(key)
    return record


def ranked(records: dict[str, dict], reference: str = "pca") -> list[str]:
    """The declared rule: settings whose label score ≥ 90 % of the reference's, by iLISI (highest first)."""
    floor = 0.9 * records[reference]["label_score"]
    ok = [n for n, r in records.items() if n != reference and r["label_score"] >= floor]
    return sorted(ok, key=lambda n: -records[n]["audit"]["ilisi"])


def combined(records: dict[str, dict]) -> tuple[dict[str, Any], str]:
    """For each scVI factor, its level that the rule ranks highest, when that level ranks above the default (a level
    the rule does not admit ranks below it). No such level: the default's own settings."""
    order = ranked(records)
    default_rank = order.index("scvi") if "scvi" in order else len(order)
    changes: dict[str, Any] = {}
    batch_key = "patient"
    for factor in SCVI_FACTORS:
        levels = [n for n in order if SETTINGS.get(n, ("", ""))[1] == factor]
        if levels and order.index(levels[0]) < default_rank:
            _, _, ch, bk = SETTINGS[levels[0]]
            changes = merge(changes, ch)
            batch_key = bk if factor == "batch" else batch_key
    return changes, batch_key


def table(records: dict[str, dict]) -> str:
    cols = ["ilisi", "kbet", "bras", "pcr_comparison", *BIO_METRICS]
    md = ("| setting | " + " | ".join(cols) + " | label score | fit s | epochs | steps |\n|"
          + "---|" * (len(cols) + 5) + "\n")
    for n, r in records.items():
        tr = r["training"]
        ep = " + ".join(f"{v['epochs']}" for v in tr.values()) or "–"
        st = " + ".join(f"{v['steps']}" for v in tr.values()) or "–"
        md += (f"| {n} | " + " | ".join(f"{r['audit'].get(c, float('nan')):.3f}" for c in cols)
               + f" | {r['label_score']:.3f} | {r['fit_seconds']:.0f} | {ep} | {st} |\n")
    return md


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="runs/genes-sweep/her2st.h5ad", help="the HER2ST dataset (stguide data her2st …)")
    ap.add_argument("--out", default="runs/genes-sweep", help="cache and results folder")
    ap.add_argument("--only", nargs="+", choices=sorted(SETTINGS), help="run these settings only (default: all)")
    ap.add_argument("--combined", action="store_true", help="also fit the combination of the best scVI levels")
    ap.add_argument("--lopo", type=int, default=0, metavar="K", help="gene-side LOPO of the K best settings and PCA")
    ap.add_argument("--lopo-also", nargs="+", default=[], metavar="NAME", choices=sorted(SETTINGS),
                    help="also run the gene-side LOPO of these settings, whether or not the rule ranks them (e.g. one "
                         "that reaches the goal's iLISI 0.3 below the rule's label floor: the goal asks for its LOPO)")
    ap.add_argument("--folds", nargs="+", metavar="PATIENT",
                    help="gene-side LOPO: hold out these patients only (default: every labelled one); the cells are "
                         "cached per fold, so workers on separate folds can run side by side and a last run gathers them")
    ap.add_argument("--results", default="benchmarks/results/genes_sweep", help="where table.md and results.json go")
    ap.add_argument("--lopo-out", help="where the gene-side LOPO cells go (default: --results/lopo; small JSON files, "
                                       "kept with the results so that a study cut off continues from the folds done)")
    ap.add_argument("--reuse", action="store_true",
                    help="take a setting's audit row from the results.json already in --results (same setting, same "
                         "data size) instead of refitting it, when its cache folder is gone")
    args = ap.parse_args()

    from stguide.data import read_dataset

    adata = read_dataset(args.data)
    out = Path(args.out)
    records: dict[str, dict] = {}
    earlier: dict[str, dict] = {}
    if args.reuse and (Path(args.results) / "results.json").is_file():
        prev = json.loads((Path(args.results) / "results.json").read_text())
        if (prev["data"]["n_spots"], prev["data"]["n_genes"]) == (adata.n_obs, adata.n_vars):
            earlier = prev["records"]
    for name in args.only or list(SETTINGS):
        enc, _, ch, bk = SETTINGS[name]
        records[name] = fit_and_audit(adata, name, enc, ch, bk, out / "audit", earlier.get(name))
        r = records[name]
        print(f"{name}: iLISI {r['audit']['ilisi']:.3f}, label score {r['label_score']:.3f}, {r['fit_seconds']:.0f} s", flush=True)
    notes: list[str] = []
    if args.combined and "pca" in records:
        ch, bk = combined(records)
        if (ch, bk) == ({}, "patient") and "scvi" in records:  # no level ranks above the default: nothing to combine
            notes.append("scvi/combined: no scVI level ranks above the default by the rule, so the combined setting is "
                         "the default itself (not refitted)")
            print(notes[-1], flush=True)
        else:
            records["scvi/combined"] = fit_and_audit(adata, "scvi/combined", "scvi", ch, bk, out / "audit")
    order = ranked(records) if "pca" in records else []
    lopo: dict[str, Any] = {}
    lopo_out = Path(args.lopo_out or Path(args.results) / "lopo")
    if (args.lopo or args.lopo_also) and "pca" not in records:
        ap.error("the gene-side LOPO is compared with PCA's: add pca to --only")
    chosen = [*order[: args.lopo], *(n for n in args.lopo_also if n not in order[: args.lopo] and n in records)]
    if chosen:
        from stguide.evaluate.genes_lopo import run_gene_lopo

        for name in ["pca", *chosen]:
            r = records[name]
            cfg = GeneConfig.from_dict(merge(BASE, r["changes"]))
            res = run_gene_lopo(adata, [r["encoder"]], lopo_out / name.replace("/", "__"), cfg,
                                batch_key=r["batch_key"], folds=args.folds,
                                command="python benchmarks/genes_sweep.py", progress=True)
            m = res["methods"][r["encoder"]]
            lopo[name] = {"bacc": m["mean"]["bacc"], "bacc_sd": m["sd"]["bacc"], "knn_bacc": m["mean"].get("knn_bacc"),
                          "bacc3": m["mean"].get("bacc3"), "folds": {f: v["bacc"] for f, v in m["folds"].items()}}
            print(f"LOPO {name}: bacc {lopo[name]['bacc']:.3f} ± {lopo[name]['bacc_sd']:.3f}", flush=True)
    res_dir = Path(args.results)
    res_dir.mkdir(parents=True, exist_ok=True)
    md = table(records)
    if "pca" in records:
        md += f"\nRanked by the rule (label score ≥ 90 % of PCA's, then iLISI): {', '.join(order) or 'no setting passes'}\n"
        supervised = [n for n in records if records[n]["encoder"] == "scanvi"]
        if supervised:
            md += (f"\nNote: {', '.join(supervised)} trained on the very labels its label score is measured with (fitted on "
                   "all patients, every labelled spot given), so that score is not comparable with the others' and the rule "
                   "admits it on it; its gene-side LOPO, where the held-out patient's labels are never seen, decides.\n")
    md += "".join(f"\n{n}\n" for n in notes)
    if lopo:
        md += "\n| setting (gene-side LOPO) | bacc (linear) | kNN bacc | 3-class bacc |\n|---|---|---|---|\n" + "".join(
            f"| {n} | {v['bacc']:.3f} ± {v['bacc_sd']:.3f} | {v['knn_bacc']:.3f} | {v['bacc3']:.3f} |\n" for n, v in lopo.items())
    (res_dir / "table.md").write_text(md)
    write_json_atomic(res_dir / "results.json", {
        "command": "python benchmarks/genes_sweep.py " + " ".join(
            [*(["--only", *args.only] if args.only else []), *(["--combined"] if args.combined else []),
             *([f"--lopo {args.lopo}"] if args.lopo else []), *(["--lopo-also", *args.lopo_also] if args.lopo_also else []),
             *(["--folds", *args.folds] if args.folds else []), *(["--reuse"] if args.reuse else [])]),
        "date": str(date.today()), "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "data": {"path": args.data, "n_spots": adata.n_obs, "n_genes": adata.n_vars},
        "records": records, "ranked": order, "lopo": lopo})
    print(md)


if __name__ == "__main__":
    main()
