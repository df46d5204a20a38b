"""The stage-1 study (``genes_sweep.py``) with the training rate logged: every scVI-family fit prints its
optimisation step, epoch, elapsed seconds and minibatches per second every ``--rate-every`` steps (a diagnostic for
a fit that runs slower than its siblings; the study's results are the same as without it).

Usage: python benchmarks/genes_sweep_rate.py [--rate-every 500] <genes_sweep.py's arguments>
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import genes_sweep  # noqa: E402 - the study itself, run unchanged
from stguide.genes.scvi import SCVIEncoder  # noqa: E402


def rate_callback(every: int):
    import lightning.pytorch as pl

    class Rate(pl.Callback):
        def __init__(self) -> None:
            self.t0 = self.last_t = time.perf_counter()
            self.last_step = 0

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            step = trainer.global_step
            if step % every == 0 and step != self.last_step:
                now = time.perf_counter()
                rate = (step - self.last_step) / max(now - self.last_t, 1e-9)
                self.last_t, self.last_step = now, step
                print(f"step {step} epoch {trainer.current_epoch} t={now - self.t0:.0f}s rate={rate:.1f}/s", flush=True)

    return Rate()


def main() -> None:
    args = sys.argv[1:]
    every = 500
    if args[:1] == ["--rate-every"]:
        every, args = int(args[1]), args[2:]
    train_kwargs = SCVIEncoder._train_kwargs

    def with_rate(self, *a, **k) -> dict:
        kw = train_kwargs(self, *a, **k)
        kw["callbacks"] = [*kw.get("callbacks", []), rate_callback(every)]
        return kw

    SCVIEncoder._train_kwargs = with_rate  # SysVI and scANVI call it through super()
    sys.argv = ["genes_sweep.py", *args]
    genes_sweep.main()


if __name__ == "__main__":
    main()
