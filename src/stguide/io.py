"""Atomic writes and input fingerprints, shared by every stage that writes an artefact."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

_HASH_FULL_LIMIT = 64 * 2**20  # files up to 64 MiB are hashed whole; larger ones by size + head + tail


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, on failure remove it.

    Works for files and folders alike (a folder replaces the old one whole).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if path.is_dir() and tmp_path.is_dir():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp_path.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            if tmp_path.is_dir():
                shutil.rmtree(tmp_path, ignore_errors=True)
            else:
                tmp_path.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_json(obj: Any) -> str:
    """JSON text with NumPy scalars, arrays and paths converted."""
    return json.dumps(obj, indent=2, default=_json_default, allow_nan=True)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    return write_text_atomic(path, to_json(obj) + "\n")


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's content (size + first and last 8 MiB for files over 64 MiB). Never timestamps."""
    path = Path(path)
    h = hashlib.sha256()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as f:
        if size <= _HASH_FULL_LIMIT:
            for chunk in iter(lambda: f.read(2**20), b""):
                h.update(chunk)
        else:
            h.update(f.read(8 * 2**20))
            f.seek(size - 8 * 2**20)
            h.update(f.read())
    return h.hexdigest()


def fingerprint(*parts: Any) -> str:
    """A short stable hash of JSON-able parts and NumPy arrays (object arrays are hashed by their string values,
    never by their pointers)."""
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, np.ndarray) and p.dtype == object:
            p = p.astype(str)
        if isinstance(p, np.ndarray):
            h.update(str(p.dtype).encode())
            h.update(str(p.shape).encode())
            h.update(np.ascontiguousarray(p).tobytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=_json_default).encode())
        h.update(b"|")
    return h.hexdigest()[:16]
