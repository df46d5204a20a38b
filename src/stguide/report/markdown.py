"""``report.md`` from a ``results.json``: the method table (mean ± sd, best marked), per-fold tables, the data."""
from __future__ import annotations

import json
from os import PathLike
from pathlib import Path

from stguide.io import write_text_atomic

HEADLINE = [("bacc", "balanced acc."), ("macro_f1", "macro-F1"), ("acc", "accuracy"), ("weighted_f1", "weighted F1"), ("kappa", "Cohen's κ")]


def method_table(results: dict, prefix: str = "") -> str:
    """Markdown table of mean ± sd per method; the best mean of each column is bold."""
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
            s = f"{mu:.3f} ± {sd:.3f}"
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


def render_markdown(results: dict, title: str = "stguide report") -> str:
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


def write_report(run_dir: str | PathLike) -> Path:
    """(Re)build ``report.md`` in ``run_dir`` from its ``results.json``."""
    run_dir = Path(run_dir)
    results = json.loads((run_dir / "results.json").read_text())
    return write_text_atomic(run_dir / "report.md", render_markdown(results))
