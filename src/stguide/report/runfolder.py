"""Where a run folder keeps its cells: ``folds/<fold>/<method>/`` or, with several seeds,
``folds/<fold>/<method>/seed<k>/``. The report reads the run folder only, through these helpers."""
from __future__ import annotations

import json
from pathlib import Path


def cells(run: Path, method: str, all_seeds: bool = False) -> list[Path]:
    """The finished cells of ``method``: one per fold (its first seed), or every seed with ``all_seeds``."""
    folds = run / "folds"
    if not folds.is_dir():
        return []
    out = []
    for fold in sorted(p for p in folds.iterdir() if p.is_dir()):
        d = fold / method
        if (d / "metrics.json").is_file():
            out.append(d)
            continue
        seeds = sorted((s for s in d.glob("seed*") if (s / "metrics.json").is_file()), key=lambda s: int(s.name[4:]))
        out += seeds if all_seeds else seeds[:1]
    return out


def mean_json(files: list[Path]) -> dict[str, float] | None:
    """The mean of each numeric field over JSON records (None when there is none)."""
    vals = [json.loads(f.read_text()) for f in files]
    if not vals:
        return None
    keys = [k for k, v in vals[0].items() if isinstance(v, (int, float))]
    return {k: sum(v.get(k, float("nan")) for v in vals) / len(vals) for k in keys}
