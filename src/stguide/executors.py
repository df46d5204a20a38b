"""Where a run's jobs execute: ``serial`` (one after another in this process), ``local`` (side by side in worker
processes on this machine) or ``slurm`` (submitit job arrays on a cluster).

A run is a list of :class:`Stage` s, each a module-level function and the arguments of its jobs; a stage's jobs are
independent of each other and need the previous stage done. ``serial`` and ``local`` run the stages in order and wait.
``slurm`` submits every stage at once as one job array each, every array depending (``afterok``) on the one before,
and returns the job ids: the cluster runs them. submitit's own ``local`` and ``debug`` back ends run the same submitit
jobs on this machine, one stage after another (how CI exercises the cluster path without a cluster).

The jobs of a stage must be idempotent and cached by their own content key (a rerun after any job died does only what
is missing): this module only schedules.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from stguide.config import ConfigError, FromDict
from stguide.errors import InputError

EXECUTORS = ("serial", "local", "slurm")
CLUSTER_FIELDS = ("backend", "partition", "time_min", "gpus", "cpus", "mem_gb", "array_parallelism", "slurm_extra")


@dataclass(frozen=True)
class ExecutorConfig(FromDict):
    """How the jobs of a run execute (YAML section ``executor:``; ``--executor`` and ``--workers`` on the command line
    override ``kind`` and ``workers``).

    ``kind``: ``serial`` (default; this process), ``local`` (``workers`` processes on this machine, default: one per
    core, each with ``cores / workers`` threads) or ``slurm`` (submitit job arrays). The cluster fields, read by
    ``slurm`` only (any of them on another kind is an error): ``backend`` (submitit's cluster: ``slurm``, the default,
    or ``local`` / ``debug``, which run the same jobs on this machine), ``partition``, ``time_min`` (per job; default
    240), ``gpus`` (per training job; the other stages ask for none; default 0), ``cpus`` (per job; default 4),
    ``mem_gb`` (per job; default: the partition's), ``array_parallelism`` (jobs of one array running at once; default
    64) and ``slurm_extra`` (further ``#SBATCH`` options, e.g. ``{account: lab, qos: normal}``)."""

    section: ClassVar[str] = "executor"

    kind: str = "serial"
    workers: int | None = None
    backend: Literal["slurm", "local", "debug"] | None = None
    partition: str | None = None
    time_min: int | None = None
    gpus: int | None = None
    cpus: int | None = None
    mem_gb: float | None = None
    array_parallelism: int | None = None
    slurm_extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in EXECUTORS:
            raise ConfigError("kind", f"unknown executor {self.kind!r}", f"use one of {list(EXECUTORS)}")
        if self.workers is not None and self.kind != "local":
            raise ConfigError("workers", f"the {self.kind} executor has no workers to set", "remove workers, or use the local executor")
        if self.workers is not None and self.workers < 1:
            raise ConfigError("workers", f"must be at least 1, got {self.workers}", "set workers, e.g. 2")
        given = [f for f in CLUSTER_FIELDS if getattr(self, f) not in (None, {})]
        if given and self.kind != "slurm":
            raise ConfigError(given[0], f"{given[0]!r} is a cluster setting, but the executor is {self.kind!r}",
                              "use --executor slurm, or remove the cluster settings from the executor section")
        for name in ("time_min", "gpus", "cpus", "array_parallelism"):
            v = getattr(self, name)
            if v is not None and v < (0 if name == "gpus" else 1):
                raise ConfigError(name, f"must be {'non-negative' if name == 'gpus' else 'at least 1'}, got {v}", f"fix {name}")

    @property
    def n_workers(self) -> int:
        """Processes the ``local`` executor runs at once."""
        return self.workers or os.cpu_count() or 1

    def check_available(self) -> None:
        """Raise :class:`InputError` before any work when the executor cannot run here (submitit missing)."""
        if self.kind == "slurm":
            try:
                import submitit  # noqa: F401
            except ImportError:
                raise InputError("--executor slurm", "needs the package submitit, which is not installed",
                                 "pip install 'stguide[cluster]' (or pip install submitit)") from None
            import shutil

            missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
            if (self.backend or "slurm") == "slurm" and missing:
                raise InputError("--executor slurm", f"finds no SLURM on this machine ({' and '.join(missing)} not on PATH)",
                                 "run it on the cluster's login node, or set executor.backend: local to run the same jobs here")


def with_overrides(cfg: ExecutorConfig, kind: str | None = None, workers: int | None = None) -> ExecutorConfig:
    """``cfg`` with the command line's ``--executor`` / ``--workers`` on top, validated whole."""
    from dataclasses import asdict

    doc = {k: v for k, v in asdict(cfg).items()}
    if kind is not None:
        doc["kind"] = kind
    if workers is not None:
        doc["workers"] = workers
    return ExecutorConfig.from_dict(doc)


@dataclass(frozen=True)
class Stage:
    """One stage of a run: ``fn(*args)`` for each ``args`` in ``calls`` (independent jobs; ``fn`` a module-level
    function, pickled to worker processes and cluster jobs). ``gpu``: its jobs train, and ask the cluster for GPUs.
    ``inline``: the ``local`` executor runs it in this process, with every core (a stage of one job that is itself
    multi-threaded, such as cutting the patches)."""

    name: str
    fn: Callable[..., Any]
    calls: Sequence[tuple] = ()
    gpu: bool = False
    inline: bool = False


@dataclass
class Submitted:
    """What a ``slurm`` submission returns: the job ids of each stage, in order, and where submitit keeps its logs."""

    jobs: dict[str, list[str]]
    folder: Path


class JobsFailed(RuntimeError):
    """A job of a stage failed or its worker process died; what finished is cached, and a rerun does the rest."""


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


def _worker_init(threads: int) -> None:
    """A local worker's thread budget (its share of the cores), set before torch, BLAS or numba are loaded: numba's
    OpenMP layer (scanpy's gene selection) would otherwise raise the OpenMP threads torch trains with."""
    for var in THREAD_VARIABLES:
        os.environ[var] = str(threads)
    import torch

    torch.set_num_threads(threads)


def run_pinned(threads: int, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` with ``threads`` threads (a cluster job's share: its ``cpus``; torch and BLAS would otherwise take
    every core of the node they see)."""
    _worker_init(threads)
    return fn(*args)


def run_stages(stages: Sequence[Stage], cfg: ExecutorConfig, folder: Path, progress: bool = True) -> list[list[Any]] | Submitted:
    """Run ``stages`` in order with the executor ``cfg``; returns each stage's job results (``serial``, ``local``,
    and ``slurm`` with submitit's ``local``/``debug`` back end), or the submitted job ids (``slurm`` on a cluster)."""
    cfg.check_available()
    if cfg.kind == "slurm":
        return _submitit(stages, cfg, folder, progress)
    results = []
    if cfg.kind == "serial":
        for st in stages:
            results.append([st.fn(*args) for args in st.calls])
        return results
    threads = max(1, (os.cpu_count() or 1) // cfg.n_workers)
    import multiprocessing as mp

    with ProcessPoolExecutor(cfg.n_workers, mp_context=mp.get_context("spawn"), initializer=_worker_init, initargs=(threads,)) as pool:
        for st in stages:
            results.append([st.fn(*args) for args in st.calls] if st.inline else _local_stage(pool, st, progress))
    return results


def _local_stage(pool: ProcessPoolExecutor, st: Stage, progress: bool) -> list[Any]:
    t0 = time.perf_counter()
    futures = {pool.submit(st.fn, *args): i for i, args in enumerate(st.calls)}
    out: list[Any] = [None] * len(futures)
    done = 0
    try:
        for fut in as_completed(futures):
            out[futures[fut]] = fut.result()
            done += 1
            if progress and len(futures) > 1:
                print(f"{st.name}: {done}/{len(futures)} jobs done · {time.perf_counter() - t0:.0f} s", flush=True)
    except BrokenProcessPool:
        raise JobsFailed(f"a worker process of stage {st.name!r} died ({done} of {len(futures)} jobs had finished); "
                         "run the same command again: finished jobs are cached and only the rest run") from None
    return out


def _submitit(stages: Sequence[Stage], cfg: ExecutorConfig, folder: Path, progress: bool) -> list[list[Any]] | Submitted:
    import submitit

    backend = cfg.backend or "slurm"
    ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=backend)
    base: dict[str, Any] = {"timeout_min": cfg.time_min or 240, "cpus_per_task": cfg.cpus or 4,
                            "slurm_array_parallelism": cfg.array_parallelism or 64}
    if cfg.partition:
        base["slurm_partition"] = cfg.partition
    if cfg.mem_gb:
        base["mem_gb"] = cfg.mem_gb
    results: list[list[Any]] = []
    ids: dict[str, list[str]] = {}
    previous: list[Any] = []
    for st in stages:
        extra = dict(cfg.slurm_extra)
        if backend == "slurm" and previous:
            extra["dependency"] = "afterok:" + ":".join(sorted({str(j.job_id).split("_")[0] for j in previous}))
        ex.update_parameters(name=f"stguide-{st.name}", gpus_per_node=(cfg.gpus or 0) if st.gpu else 0,
                             slurm_additional_parameters=extra, **base)
        threads = cfg.cpus or 4
        try:
            if len(st.calls) == 1:
                jobs = [ex.submit(run_pinned, threads, st.fn, *st.calls[0])]
            else:
                with ex.batch():
                    jobs = [ex.submit(run_pinned, threads, st.fn, *args) for args in st.calls]
        except submitit.core.utils.FailedJobError as e:  # sbatch said no: its own words, not submitit's traceback
            done = "; ".join(f"{k}: {', '.join(v)}" for k, v in ids.items())
            raise InputError("--executor slurm", f"sbatch refused the jobs of stage {st.name!r}: {str(e).strip()[-500:]}"
                             + (f" (already submitted, cancel them with scancel: {done})" if done else ""),
                             "check executor.partition, time_min, gpus, mem_gb and slurm_extra (account, qos) against "
                             "`sinfo` and your cluster's rules, then run the same command again") from None
        ids[st.name] = [str(j.job_id) for j in jobs]
        if progress:
            print(f"{st.name}: submitted {len(jobs)} job(s) ({', '.join(ids[st.name][:3])}{' …' if len(jobs) > 3 else ''})", flush=True)
        if backend == "slurm":
            previous = jobs
            continue
        try:  # submitit's local/debug back ends: wait for the stage before the next one starts
            results.append([j.result() for j in jobs])
        except Exception as e:  # noqa: BLE001 - a failed job: its log names the cause
            raise JobsFailed(f"a job of stage {st.name!r} failed ({type(e).__name__}: {str(e)[-500:]}); logs under {folder}; "
                             "run the same command again: finished jobs are cached and only the rest run") from None
    return Submitted(ids, folder) if backend == "slurm" else results
