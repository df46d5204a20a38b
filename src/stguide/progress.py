"""Progress for long steps: rich bars for loops, and for Lightning / scvi-tools training either their own bars (on
a terminal) or one plain line per epoch (when stdout is a file or a pipe, e.g. ``make demo > log``), so a log holds
lines a person can read instead of hundreds of bar redraws."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
K = TypeVar("K")
MAX_EPOCH_LINES = 20  # longer fits print every k-th epoch (and the last), so that a fit writes at most this many lines


def interactive() -> bool:
    """Whether stdout is a terminal (bars redraw in place there; in a file every redraw would be a line)."""
    return sys.stdout.isatty()


def track(items: Iterable[T], description: str, enabled: bool = True, total: int | None = None) -> Iterator[T]:
    """Iterate over ``items`` with a rich progress bar on a terminal, a start and an end line otherwise, or
    silently when ``enabled`` is False."""
    if not enabled:
        yield from items
        return
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if not interactive():
        t0 = time.time()
        print(f"{description} ({total if total is not None else '?'} steps) …", flush=True)
        done = 0
        for it in items:
            yield it
            done += 1
        print(f"{description}: {done} done in {time.time() - t0:.0f} s", flush=True)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False) as p:
        task = p.add_task(description, total=total)
        for it in items:
            yield it
            p.advance(task)


def read_ahead(keys: Sequence[K], load: Callable[[K], T], discard: Callable[[T], Any] | None = None) -> Generator[tuple[K, T], None, None]:
    """Yield ``(key, load(key))`` in order while the next key loads on one background thread, so that reading and
    decoding (which release the GIL) overlap the caller's work on the current item. Close the generator when
    stopping early (``contextlib.closing``): the load in flight then finishes and ``discard`` gets what it loaded."""
    if not keys:
        return
    with ThreadPoolExecutor(1) as pool:
        ahead: Any = pool.submit(load, keys[0])
        try:
            for i, key in enumerate(keys):
                value = ahead.result()
                ahead = pool.submit(load, keys[i + 1]) if i + 1 < len(keys) else None
                yield key, value
        finally:
            if ahead is not None and discard is not None and ahead.exception() is None:
                discard(ahead.result())


def training_progress(enabled: bool, label: str, max_epochs: int) -> dict[str, Any]:
    """Trainer keyword arguments for progress: the library's own bar on a terminal, one line per epoch (at most
    :data:`MAX_EPOCH_LINES` per fit) when stdout is not one, nothing when ``enabled`` is False."""
    if not enabled:
        return {"enable_progress_bar": False}
    if interactive():
        return {"enable_progress_bar": True}
    return {"enable_progress_bar": False, "callbacks": [_epoch_lines(label, max_epochs)]}


def _epoch_lines(label: str, max_epochs: int) -> Any:
    from lightning.pytorch.callbacks import Callback

    every = max(1, -(-max_epochs // MAX_EPOCH_LINES))

    class EpochLines(Callback):
        """Prints ``label: epoch e/n · loss · elapsed`` after every ``every``-th epoch and after the last."""

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.t0 = time.time()

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            e = trainer.current_epoch + 1
            if e % every and e != trainer.max_epochs:
                return
            m = trainer.callback_metrics
            loss = next((float(m[k]) for k in ("train_loss", "train_loss_epoch", "elbo_train") if k in m), None)
            shown = f" · train_loss {loss:.4g}" if loss is not None else ""
            print(f"{label}: epoch {e}/{trainer.max_epochs}{shown} · {time.time() - self.t0:.0f} s", flush=True)

    return EpochLines()
