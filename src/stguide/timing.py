"""Wall-clock seconds per part of a run (read, patches, gene encoders, stage 2, probes …), so that a run says where
its time went (``results.json`` → ``timings``).

A part is timed *exclusively*: the seconds of a part nested in another (trunk features cached inside a stage-2 fit)
count for the inner part only, so the parts add up to the time inside :func:`recording`. Outside a recording,
:func:`part` costs one list append. Parts are entered from the main thread; the threads a part starts (read-ahead,
DataLoader workers) count for it.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

_totals: list[dict[str, float]] = []  # the active recordings (innermost last)
_stack: list[tuple[str, list[float]]] = []  # per open part: (name, [start, seconds of its nested parts])


@contextmanager
def recording() -> Iterator[dict[str, float]]:
    """Collect the seconds of every :func:`part` entered inside; the dict fills as the parts end."""
    totals: dict[str, float] = {}
    _totals.append(totals)
    try:
        yield totals
    finally:
        _totals.remove(totals)


@contextmanager
def part(name: str) -> Iterator[None]:
    """Time the block as part ``name`` (added to every active recording), excluding its nested parts."""
    frame = [time.perf_counter(), 0.0]
    _stack.append((name, frame))
    try:
        yield
    finally:
        _stack.pop()
        spent = time.perf_counter() - frame[0]
        if _stack:
            _stack[-1][1][1] += spent
        for totals in _totals:
            totals[name] = totals.get(name, 0.0) + spent - frame[1]


def current() -> str | None:
    """The innermost open part (None outside every part); a sampler thread may call it (e.g. to attribute memory)."""
    try:
        return _stack[-1][0]
    except IndexError:
        return None


def rounded(totals: dict[str, float], total_s: float) -> dict[str, float]:
    """The parts in seconds (1 decimal), largest first, with ``other`` for the time outside every part."""
    parts = dict(sorted(((k, round(v, 1)) for k, v in totals.items()), key=lambda kv: -kv[1]))
    parts["other"] = round(max(total_s - sum(totals.values()), 0.0), 1)
    return parts
