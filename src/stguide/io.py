"""Atomic writes and input fingerprints, shared by every stage that writes an artefact."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from stguide.errors import InputError, warn_data

T = TypeVar("T")

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
    """sha256 of a file's content (size + first and last 8 MiB for files over 64 MiB). Never timestamps.
    A folder (a zarr store's image element): every file's relative path and size, and the contents of its files in
    path order up to 64 MiB in all (the metadata and the first chunks; a chunk rewritten with other content almost
    always changes its compressed size too)."""
    path = Path(path)
    if path.is_dir():
        return _folder_digest(path)
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


def _folder_digest(path: Path) -> str:
    h = hashlib.sha256()
    budget = _HASH_FULL_LIMIT
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.relative_to(path).as_posix()}\0{size}\0".encode())
        if size <= budget:
            h.update(f.read_bytes())
            budget -= size
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


class RowWriter:
    """A new ``.npy`` array of ``shape`` filled one row at a time, by several threads at once, with positional writes
    (``os.pwrite``, which releases the GIL); rows read back through a read-only memory map. Writing through a
    writable memory map instead costs a page fault per 4 KiB and a synchronous flush at the end. Like every cache
    here the file is renamed into place, not synced to disk.
    Where ``os.pwrite`` is missing (Windows) the rows are written through a memory map."""

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype: Any = np.uint8) -> None:
        self.path, self.dtype = Path(path), np.dtype(dtype)
        self.shape, self.row_shape = tuple(shape), tuple(shape[1:])
        mm = np.lib.format.open_memmap(self.path, mode="w+", dtype=self.dtype, shape=self.shape)
        self.offset, self.row_bytes = mm.offset, int(np.prod(self.row_shape)) * self.dtype.itemsize
        self._mm = None if hasattr(os, "pwrite") else mm
        self._fd: int | None = os.open(self.path, os.O_WRONLY) if self._mm is None else None
        self._read: np.ndarray | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __setitem__(self, i: int | np.integer, value: np.ndarray) -> None:
        row = np.ascontiguousarray(value, dtype=self.dtype)
        if row.shape != self.row_shape:
            raise ValueError(f"{self.path}: a row of shape {row.shape} where {self.row_shape} belongs")
        if self._mm is not None:
            self._mm[i] = row
            return
        assert self._fd is not None, f"{self.path} was closed"
        left, at = row.reshape(-1).view(np.uint8).data, self.offset + int(i) * self.row_bytes
        while len(left):  # a regular file takes the whole row at once; a short write goes on where it stopped
            done = os.pwrite(self._fd, left, at)
            left, at = left[done:], at + done

    def __getitem__(self, i):
        if self._mm is not None:
            return self._mm[i]
        if self._read is None:
            self._read = np.load(self.path, mmap_mode="r")  # the page cache the writes went to
        return self._read[i]

    def close(self) -> None:
        """Finish the file (the writes are in the page cache; readers see them)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._mm is not None:
            self._mm.flush()
        self._mm = self._read = None


def open_cached_array(path: str | os.PathLike, shape: tuple[int, ...] | None = None, dtype: str | None = None) -> np.ndarray:
    """Memory-map an ``.npy`` of a cache, read-only. Raises :class:`~stguide.errors.InputError` naming the file when
    it is missing, cut short (fewer bytes than its header promises) or not of the ``shape`` / ``dtype`` its cache's
    metadata records, so that the caller rebuilds the cache instead of reading it."""
    path = Path(path)
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(path, f"the cache file is missing or cut short ({type(e).__name__}: {e})", "delete the cache folder; it is rebuilt") from None
    if (shape is not None and tuple(arr.shape) != tuple(shape)) or (dtype is not None and str(arr.dtype) != dtype):
        raise InputError(path, f"the cache file holds {arr.dtype}{tuple(arr.shape)}, its metadata says {dtype}{tuple(shape or ())}",
                         "delete the cache folder; it is rebuilt")
    return arr


def read_cache_meta(folder: str | os.PathLike) -> dict:
    """A cache folder's ``meta.json``; :class:`~stguide.errors.InputError` naming it when missing or unreadable."""
    f = Path(folder) / "meta.json"
    try:
        meta = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f, f"the cache's metadata is missing or damaged ({type(e).__name__})", "delete the cache folder; it is rebuilt") from None
    if not isinstance(meta, dict):
        raise InputError(f, "the cache's metadata is not a mapping", "delete the cache folder; it is rebuilt")
    return meta


class SpotRows:
    """A cache's rows by spot name, through one dict: asking about n names costs O(n). (``np.isin`` on spot names,
    an object array against strings, compares every pair: 10 s per call at 32k spots against 7 ms here;
    benchmarks/scaling_profile.py.)
    ``missing`` and ``fix`` word the error for a name the cache lacks."""

    def __init__(self, obs_names: list[str], path: Path, missing: str, fix: str) -> None:
        self.obs_names, self.path, self._missing, self._fix = obs_names, path, missing, fix
        self._index = {n: i for i, n in enumerate(obs_names)}

    def has(self, obs_names) -> np.ndarray:
        """Whether each of ``obs_names`` has a row (a boolean mask aligned with them)."""
        return np.fromiter((n in self._index for n in obs_names), dtype=bool, count=len(obs_names))

    def rows(self, obs_names) -> np.ndarray:
        """The row of each of ``obs_names``; :class:`~stguide.errors.InputError` naming the first one the cache lacks."""
        try:
            return np.fromiter((self._index[n] for n in obs_names), dtype=np.int64, count=len(obs_names))
        except KeyError as e:
            raise InputError(self.path, f"spot {e.args[0]!r} {self._missing}", self._fix) from None


def reuse_cache(folder: Path, opener: Callable[[Path], T], what: str) -> T | None:
    """``opener(folder)`` when a cache folder exists and opens; None when it does not exist, or when it is damaged
    (a :class:`~stguide.errors.DataWarning` names the damaged file): the caller then rebuilds it, never reads it."""
    if not folder.exists():
        return None
    try:
        return opener(folder)
    except InputError as e:
        warn_data(e.file, f"{e.problem}; the {what} is rebuilt")
        return None


def user_cache_dir(*parts: str) -> Path:
    """stguide's per-user cache (``$STGUIDE_CACHE_DIR``, else ``$XDG_CACHE_HOME/stguide``, else ``~/.cache/stguide``),
    for what is the same across runs (e.g. compiled code); a run's own artefacts stay in its folder."""
    root = os.environ.get("STGUIDE_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "stguide"
    return Path(root, *parts)
