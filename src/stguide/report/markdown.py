"""``report.md`` and ``report.html`` from a run folder: the method table (mean ± sd, best marked), per-fold tables,
the loss ablation, the image-embedding batch audit, figures, the data and a methods paragraph."""
from __future__ import annotations

import json
from os import PathLike
from pathlib import Path

import pandas as pd

from stguide.io import write_text_atomic
from stguide.report.runfolder import cells, mean_json

HEADLINE = [("bacc", "balanced acc."), ("macro_f1", "macro-F1"), ("acc", "accuracy"), ("weighted_f1", "weighted F1"), ("kappa", "Cohen's κ")]


def method_table(results: dict, prefix: str = "") -> str:
    """Markdown table of mean ± sd per method (the mean alone when one fold has the metric); the best mean of each
    column is bold."""
    methods = results["methods"]
    head = "| method | " + " | ".join(n for _, n in HEADLINE) + " |\n|---|" + "---|" * len(HEADLINE) + "\n"
    best = {k: max((m["mean"].get(prefix + k, float("-inf")) for m in methods.values()), default=None) for k, _ in HEADLINE}
    rows = []
    for name, m in methods.items():
        cells = []
        for k, _ in HEADLINE:
            mu, sd = m["mean"].get(prefix + k), m["sd"].get(prefix + k)
            if mu is None:
                cells.append("–")
                continue
            n = sum(prefix + k in f for f in m.get("folds", {}).values())
            s = f"{mu:.3f} ± {sd:.3f}" if n > 1 else f"{mu:.3f}"  # one fold has no spread to show
            cells.append(f"**{s}**" if mu == best[k] and len(methods) > 1 else s)
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def fold_table(results: dict, metric: str = "bacc") -> str:
    """Markdown table of one metric per method (rows) and held-out patient (columns)."""
    methods = results["methods"]
    folds = sorted({f for m in methods.values() for f in m["folds"]})
    out = "| method | " + " | ".join(folds) + " |\n|---|" + "---|" * len(folds) + "\n"
    for name, m in methods.items():
        out += f"| {name} | " + " | ".join(f"{m['folds'][f][metric]:.3f}" if f in m["folds"] else "–" for f in folds) + " |\n"
    return out


def ablation_table(results: dict) -> str | None:
    """The loss ablation: the rows the run recorded in ``results["ablation"]`` (those that ran)."""
    rows = [r for r in results.get("ablation", []) if r in results["methods"]]
    if len(rows) < 2:
        return None
    sub = {"methods": {r: results["methods"][r] for r in rows}}
    return method_table(sub)


def _table(rows: dict[str, dict[str, float]], first: str = "method") -> str:
    cols = list(dict.fromkeys(c for r in rows.values() for c in r))
    out = f"| {first} | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols) + "\n"
    for name, r in rows.items():
        out += f"| {name} | " + " | ".join("–" if r.get(c) is None or r[c] != r[c] else f"{r[c]:.3f}" for c in cols) + " |\n"
    return out


def image_audit_table(run: Path, results: dict) -> str | None:
    """Mean over folds (and seeds) of each method's audit of its image features: scib-metrics (patient = batch,
    label = biology) and the cross-validated patient-prediction AUC."""
    rows = {}
    for name in results["methods"]:
        row = mean_json([c / "image_audit.json" for c in cells(run, name, all_seeds=True) if (c / "image_audit.json").is_file()])
        if row:
            rows[name] = row
    return _table(rows) if rows else None


def target_audit_table(results: dict) -> str | None:
    """Each gene encoder's target audit on its folds' training patients (mean over folds, from ``results.json``)."""
    rows = results.get("targets", {})
    return _table(rows, "gene target") if rows else None


def _diff_rows(pairs: list[tuple[str, dict]], what: str) -> str:
    out = (f"| {what} | Δ balanced acc. (linear) | 95 % CI | Δ kNN balanced acc. | 95 % CI | Δ per fold (linear) "
           "| folds × seeds |\n|---|---|---|---|---|---|---|\n")
    for name, rows in pairs:
        lin, knn = rows["bacc"], rows["knn_bacc"]
        folds = ", ".join(f"{f} {d:+.3f}" for f, d in lin["per_fold"].items())
        out += (f"| {name} | {lin['diff']:+.3f} | [{lin['ci95'][0]:+.3f}, {lin['ci95'][1]:+.3f}] | {knn['diff']:+.3f} | "
                f"[{knn['ci95'][0]:+.3f}, {knn['ci95'][1]:+.3f}] | {folds} | {lin['n_folds']} × {lin['n_seeds']} |\n")
    return out


def comparison_table(results: dict) -> str | None:
    """Each method minus the baseline, paired by fold and seed, with the bootstrap 95 % CI."""
    comp = results.get("comparisons", {})
    if "methods" not in comp:
        return None
    return _diff_rows(list(comp["methods"].items()), f"method − {comp['baseline']}")


def contrast_table(results: dict) -> str | None:
    """The configured contrasts a − b, paired by fold and seed, with the bootstrap 95 % CI."""
    rows = results.get("contrasts", [])
    return _diff_rows([(f"{c['a']} − {c['b']}", c) for c in rows], "contrast") if rows else None


def recall_table(results: dict, prefix: str = "") -> str | None:
    """Recall per class (mean over the folds where the class is present, as ``results.json`` records it) and the
    3-class view (invasive cancer / cancer in situ / other)."""
    rows = {}
    for name, m in results["methods"].items():
        row: dict[str, float] = dict(sorted(m.get(f"{prefix}recall", {}).items()))
        if f"{prefix}bacc3" in m["mean"]:
            row["3-class bacc"], row["3-class macro-F1"] = m["mean"][f"{prefix}bacc3"], m["mean"][f"{prefix}macro_f1_3"]
        if row:
            rows[name] = row
    return _table(rows) if rows else None


def _figures(figs: dict, kind: str, heading: str) -> list[str]:
    paths = figs.get(kind, [])
    return [f"### {heading}", ""] + [f"![{heading}]({p})" for p in paths] + [""] if paths else []


def timings_table(timings: dict[str, float]) -> str:
    """Seconds and share of each part of a run."""
    total = sum(timings.values()) or 1.0
    return "| part | seconds | share |\n|---|---|---|\n" + "".join(
        f"| {k} | {v:.1f} | {100 * v / total:.0f} % |\n" for k, v in timings.items())


def render_markdown(results: dict, title: str = "stguide report", figures: dict | None = None,
                    image_audit: str | None = None, target_audit: str | None = None) -> str:
    d = results.get("dataset", {})
    sources = d.get("label_sources", {})
    proxy = sources.get("proxy", 0)
    lines = [f"# {title}", ""]
    if results.get("command"):
        lines += [f"Produced by: `{results['command']}`", ""]
    lines += [
        "## Data",
        f"{d.get('n_spots', '?')} spots, {d.get('n_genes', '?')} genes ({d.get('genes', {}).get('rule', '?')} of the sections' gene sets, "
        f"{d.get('genes', {}).get('n_dropped', '?')} genes dropped), patients {', '.join(d.get('patients', []))}, "
        f"{len(d.get('sections', {}))} sections. Labelled spots per patient: "
        + ", ".join(f"{p} {n}" for p, n in d.get("labelled_per_patient", {}).items()) + ". "
        + "Label sources: " + ", ".join(f"{k} {v}" for k, v in sources.items()) + ".",
        "",
    ]
    if proxy:
        lines += ["> **Proxy labels.** Some labels were transferred from a labelled serial section, not drawn by a pathologist "
                  "on this section. Scores against them measure agreement with a proxy.", ""]
    lines += [
        "## Protocol",
        "Leave-one-patient-out: each fold holds out every section of one patient. Gene selection, the gene encoder, "
        "contrastive training and the probes are fitted on the other patients only (see each fold's `leakage_audit.json`). "
        "Frozen image features are scored on the held-out patient's labelled spots by a class-balanced logistic regression "
        "(C chosen by inner cross-validation over training patients) and a cosine kNN.",
        "",
        "## Linear probe (mean ± sd over folds; best in bold)",
        method_table(results),
        "## kNN probe",
        method_table(results, "knn_"),
        "## Balanced accuracy per held-out patient (linear probe)",
        fold_table(results, "bacc"),
        "## Macro-F1 per held-out patient (linear probe)",
        fold_table(results, "macro_f1"),
    ]
    comp = comparison_table(results)
    if comp:
        lines += [f"## Against the baseline ({results['comparisons']['baseline']}), paired by fold and seed",
                  "Δ = method − baseline on the same held-out patient and seed (a baseline that does not depend on the seed is "
                  "paired with every seed). 95 % CI: bootstrap over folds, and over seeds within each drawn fold (10,000 "
                  "replicates). With few patients the interval is wide; an interval that includes 0 is no evidence of a "
                  "difference.", "", comp]
    elif results.get("comparisons", {}).get("skipped"):
        lines += ["## Against the baseline", results["comparisons"]["skipped"] + ".", ""]
    con = contrast_table(results)
    if con:
        lines += ["## Contrasts, paired by fold and seed", "Each row is the first method minus the second (same bootstrap).", "", con]
    rec = recall_table(results)
    if rec:
        lines += ["## Recall per class and the 3-class view (linear probe; mean over the folds where a class is present)",
                  "3-class: invasive cancer / cancer in situ / everything else.", "", rec]
    if results.get("skipped"):
        lines += ["## Methods not run", ""] + [f"- {m}: {why}" for m, why in results["skipped"].items()] + [""]
    abl = ablation_table(results)
    if abl:
        lines += ["## Loss ablation on the scANVI gene side (linear probe)",
                  "Same gene encoder, backbone, initialisation and schedule; only the loss differs (`ours-scanvi` is inter-soft).",
                  "", abl]
    if image_audit:
        lines += ["## Batch audit of the image embeddings",
                  "scib-metrics on each fold's image features of the labelled spots (training and held-out patients), patient as "
                  "the batch and label as the biology, averaged over folds; 0-1, higher is better. High batch scores mean the "
                  "image features do not separate patients. `patient_auc`: how well a cross-validated logistic regression "
                  "tells the patients apart from the same features (0.5: not at all, 1: perfectly).", "", image_audit]
    if target_audit:
        lines += ["## Gene targets on the training patients",
                  "The same audit of each fold's gene-encoder latent (the contrastive target) on the spots it was fitted on, "
                  "averaged over folds: was the target batch-agnostic at all (iLISI, kBET), and does it keep the tissue "
                  "(label metrics)?", "", target_audit]
    figs = figures or {}
    if figs:
        lines += ["## Figures", ""]
        lines += _figures(figs, "confusion", "Confusion matrices (held-out spots of all folds; counts, colour = row fraction)")
        lines += _figures(figs, "umap", "UMAPs of the image embeddings (at most `report.umap_max_spots` spots each, drawn at random)")
        lines += _figures(figs, "spots", f"Spot maps: true vs predicted labels ({(figs.get('spots_method') or ['?'])[0]}, "
                                         "linear probe) over the H&E")
        lines += _figures(figs, "training", "Training curves")
    if results.get("methods_paragraph"):
        lines += ["## Methods", results["methods_paragraph"], ""]
    if results.get("timings"):
        lines += ["## Where the time went", f"Wall-clock seconds of this invocation per part ({results.get('runtime_s', '?')} s in "
                  "all; a part reloaded from the run's cache costs almost nothing, so a resumed run shows only what it redid).", "",
                  timings_table(results["timings"])]
    notes = [(n, f, m["missing_classes"]) for n, mm in results["methods"].items() for f, m in mm["folds"].items() if m.get("missing_classes")]
    if notes:
        lines += ["## Classes absent from a held-out patient", "Balanced accuracy and macro-F1 average over the classes present.", ""]
        seen = set()
        for _, f, miss in notes:
            if f not in seen:
                seen.add(f)
                lines.append(f"- {f}: {', '.join(miss)}")
        lines.append("")
    return "\n".join(lines) + "\n"


def write_audit(table: pd.DataFrame, out: str | PathLike, command: str = "") -> list[Path]:
    """``audit.csv`` and ``audit.md`` (with the producing command) in ``out``."""
    out = Path(out)
    md = (f"Produced by: `{command}`\n\n" if command else "") + "| representation | " + " | ".join(table.columns) + " |\n"
    md += "|---|" + "---|" * len(table.columns) + "\n"
    for name, row in table.iterrows():
        md += f"| {name} | " + " | ".join("–" if pd.isna(v) else f"{v:.3f}" for v in row) + " |\n"
    return [write_text_atomic(out / "audit.csv", table.to_csv()), write_text_atomic(out / "audit.md", md)]


HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45;color:#222}}
table{{border-collapse:collapse;margin:1em 0;font-size:.92em}}th,td{{border:1px solid #ccc;padding:.3em .6em;text-align:right}}
th:first-child,td:first-child{{text-align:left}}th{{background:#f3f3f3}}img{{max-width:100%;border:1px solid #eee}}
blockquote{{background:#fff8e1;border-left:4px solid #f0b400;margin:1em 0;padding:.5em 1em}}code{{background:#f5f5f5;padding:0 .2em}}</style>
</head><body>
{body}
</body></html>
"""


def write_report(run_dir: str | PathLike) -> Path:
    """(Re)build ``report.md`` and ``report.html`` (and their figures) in ``run_dir`` from what the run saved."""
    import markdown

    from stguide.report.figures import write_figures

    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    figures = write_figures(run_dir, results) if (run_dir / "folds").is_dir() else {}
    has_folds = (run_dir / "folds").is_dir()
    audit = image_audit_table(run_dir, results) if has_folds else None
    targets = target_audit_table(results)
    title = "stguide experiment report" if results.get("kind") == "experiment" else "stguide report"
    md = render_markdown(results, title, figures, audit, targets)
    body = markdown.markdown(md, extensions=["tables"])
    write_text_atomic(run_dir / "report.html", HTML.format(title=title, body=body))
    return write_text_atomic(run_dir / "report.md", md)
