"""``stguide experiment --executor local|slurm``: one experiment as stages of independent jobs
(:mod:`stguide.executors`), with the same cells, keys and results as the serial run.

1. **prepare** (one job): the patches, the spot maps' data and every trunk-feature cache the methods read;
2. **genes** (one job per fold × gene encoder): each fold's gene encoder fitted on its training patients;
3. **cells** (one job per fold × method × seed): :func:`~stguide.evaluate.lopo.run_cell`, whose folder is keyed by
   the content hash of its settings and inputs and skipped when its result exists;
4. **report** (one job): the serial run over the now cached cells, which writes ``results.json`` and the report.

The driver reads the data first (``data/dataset.h5ad``; the jobs read that file) to know the folds. Every job is
idempotent, so a rerun after any job died does only what is missing. Stages 2 and 3 share nothing but files written
by the stage before them: two jobs never write one folder.
"""
from __future__ import annotations

import hashlib
import pickle
from os import PathLike
from pathlib import Path
from typing import Any

from stguide.contrastive.features import trunk_cache
from stguide.data.folds import Fold, assert_no_leak
from stguide.data.model import read_dataset, write_dataset
from stguide.evaluate.config import ExperimentConfig
from stguide.evaluate.experiment import load_data, open_run, run_experiment
from stguide.evaluate.lopo import CellContext, fold_gene_encoder, gene_steps, plan_cells, run_cell, run_context, skip_reason, trains
from stguide.executors import ExecutorConfig, Stage, Submitted, run_stages
from stguide.io import write_json_atomic

_OPENED: dict[tuple[str, str], tuple[CellContext, list[Fold]]] = {}  # a worker's runs, opened once per process


def _dataset(out: Path) -> Path:
    return out / "data" / "dataset.h5ad"


def _opened(cfg: ExperimentConfig, out: Path) -> tuple[CellContext, list[Fold]]:
    """The run's cell context and folds, from its dataset file and patch cache (read once per process)."""
    key = (str(out), hashlib.sha256(pickle.dumps(cfg)).hexdigest())
    if key not in _OPENED:
        adata = read_dataset(_dataset(out))
        from stguide.data.patches import extract_patches

        store = extract_patches(adata, cfg.patches, out / "patches", progress=False)  # the prepare job's cache
        _OPENED[key] = run_context(cfg, adata, store, out, progress=False)
    return _OPENED[key]


def _fold(folds: list[Fold], held_out: str) -> Fold:
    return next(f for f in folds if f.held_out == held_out)


def prepare_job(cfg: ExperimentConfig, out: Path, progress: bool = False) -> None:
    """Stage 1: the patches, the spot maps' data and the trunk-feature caches of every method on a frozen or partial trunk."""
    _, store = open_run(cfg, out, progress, read_dataset(_dataset(out)))
    for m in cfg.all_methods():
        ccfg = m.config(cfg.contrastive)
        if ccfg.trunk != "full" and not skip_reason(ccfg):
            trunk_cache(ccfg, store, out / "features", trained=trains(m, ccfg), progress=progress)


def genes_job(cfg: ExperimentConfig, out: Path, held_out: str, encoder: str) -> None:
    """Stage 2: one fold's gene encoder, fitted on its training patients (refused before the fit when they include a
    held-out patient), with its target audit."""
    ctx, folds = _opened(cfg, out)
    fold = _fold(folds, held_out)
    assert_no_leak(ctx.adata, fold, fold.train, f"the {encoder} gene encoder")
    fold_gene_encoder(cfg, ctx.adata, fold, encoder, out / "folds" / held_out / "genes" / encoder, dkey=ctx.data_key)


def cell_job(cfg: ExperimentConfig, out: Path, held_out: str, method: str, seed_index: int) -> dict:
    """Stage 3: one (fold, method, seed) cell (:func:`~stguide.evaluate.lopo.run_cell`); its metrics."""
    ctx, folds = _opened(cfg, out)
    m = next(m for m in cfg.all_methods() if m.name == method)
    return run_cell(ctx, m, _fold(folds, held_out), out / "folds" / held_out, seed_index)


def report_job(cfg: ExperimentConfig, out: Path, command: str) -> dict:
    """Stage 4: the serial run over the cached cells: ``results.json``, ``report.md``, ``report.html``."""
    return run_experiment(cfg, out, progress=False, command=command, adata=read_dataset(_dataset(out)))


def run_experiment_on(cfg: ExperimentConfig, out_dir: str | PathLike, executor: ExecutorConfig, progress: bool = True,
                      command: str = "") -> dict[str, Any]:
    """Run the experiment with ``executor``; returns the results (``serial``, ``local``, ``slurm`` with submitit's
    ``local``/``debug`` back end) or ``{"submitted": {stage: [job ids]}}`` (``slurm`` on a cluster, also written to
    ``jobs/submitted.json``; the report job writes ``results.json`` when the cells are done)."""
    executor.check_available()  # before any work
    out = Path(out_dir).resolve()  # jobs may start elsewhere (a cluster node)
    if executor.kind == "serial":
        return run_experiment(cfg, out, progress, command)
    adata = load_data(cfg.data, out)
    write_dataset(adata, _dataset(out))
    from stguide.data.folds import lopo_folds

    folds = lopo_folds(adata, cfg.lopo.folds, cfg.exclude_labels, by=cfg.lopo.fold_by)
    stages = [Stage("prepare", prepare_job, [(cfg, out, progress)], inline=True),
              Stage("genes", genes_job, [(cfg, out, f.held_out, enc) for f, enc in gene_steps(cfg, folds)], gpu=True),
              Stage("cells", cell_job, [(cfg, out, f.held_out, m.name, s) for f, m, s in plan_cells(cfg, folds)], gpu=True),
              Stage("report", report_job, [(cfg, out, command)], inline=True)]
    done = run_stages(stages, executor, out / "jobs", progress)
    if isinstance(done, Submitted):
        write_json_atomic(out / "jobs" / "submitted.json", {"jobs": done.jobs, "logs": str(done.folder), "command": command})
        return {"submitted": done.jobs}
    return done[-1][0]
