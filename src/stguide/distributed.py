"""One experiment over several processes (``torchrun``; on SLURM, ``srun`` starting ``torchrun`` on each node).

Under ``torchrun`` every process runs the same ``stguide experiment``. Only the end-to-end training (``trunk:
full`` with ``contrastive.trainer_kwargs: {strategy: ddp, devices: N}``) is shared by all of them; everything else
happens once, on the main process (rank 0): reading and caching (data, patches, gene encoders) runs there first and
the others then read its caches (:func:`main_first`); the cached-feature modes, probes, audits, ``results.json`` and
the report run on the main process only. A single process (no ``WORLD_SIZE`` above 1) never touches
``torch.distributed``.

The processes meet in a process group (``gloo`` for CPU, ``nccl`` for CUDA tensors) that this module opens before
the first shared step and Lightning then reuses. Its timeout (``STGUIDE_DIST_TIMEOUT_S``, default 24 h) bounds how
long the other processes wait while the main one fits a gene encoder.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta


def world_size() -> int:
    """How many processes run the experiment (torchrun's ``WORLD_SIZE``; 1 when not launched by it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    """This process's rank (torchrun's ``RANK``; 0 when not launched by it)."""
    return int(os.environ.get("RANK", "0"))


def is_main() -> bool:
    """Whether this is the process that reads, caches, scores and reports (rank 0)."""
    return rank() == 0


def ensure_group() -> None:
    """Open the default process group once, when several processes run (Lightning's DDP reuses it)."""
    import torch
    import torch.distributed as dist

    if world_size() > 1 and not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend, timeout=timedelta(seconds=float(os.environ.get("STGUIDE_DIST_TIMEOUT_S", 86400))))


def barrier() -> None:
    """Wait until every process reaches this point (nothing with one process)."""
    if world_size() > 1:
        import torch.distributed as dist

        ensure_group()
        dist.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block on the main process first and on the others after it is done: for steps that build a cache
    (patches, a gene encoder), which the other processes then read instead of building it again."""
    if world_size() == 1:
        yield
        return
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()
