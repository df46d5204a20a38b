"""Readers by name (timm-style: a string → a function): ``READERS`` and one ``read(format, path, **options)``.

A reader module registers its function with :func:`register_reader`; the package ``stguide.data.readers`` imports
every reader module, so the registry is full whenever it is importable. :func:`check_read` validates a format, its
path and its options without reading anything, so a config file is checked before any data is touched.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from os import PathLike
from typing import Any

import anndata as ad

from stguide.config import ConfigError


@dataclass(frozen=True)
class Reader:
    """A registered reader: ``fn(path, **options)`` or, when ``takes_path`` is False, ``fn(**options)``."""

    name: str
    fn: Callable[..., ad.AnnData]
    takes_path: bool = True

    def options(self) -> list[str]:
        """The keyword options the reader accepts (its parameters after the path)."""
        params = list(inspect.signature(self.fn).parameters.values())
        return [p.name for p in params[1 if self.takes_path else 0:] if p.kind != p.VAR_KEYWORD]

    def accepts_any(self) -> bool:
        return any(p.kind == p.VAR_KEYWORD for p in inspect.signature(self.fn).parameters.values())


READERS: dict[str, Reader] = {}


def register_reader(name: str, takes_path: bool = True) -> Callable[[Callable[..., ad.AnnData]], Callable[..., ad.AnnData]]:
    """Decorator: make ``fn`` the reader of format ``name``."""

    def deco(fn: Callable[..., ad.AnnData]) -> Callable[..., ad.AnnData]:
        READERS[name] = Reader(name, fn, takes_path)
        return fn

    return deco


def check_read(format: str, path: str | PathLike | None, options: Mapping[str, Any]) -> Reader:
    """The reader of ``format``, after checking that ``path`` is given when it needs one and that every option
    is one it takes. Raises :class:`ConfigError` (keys ``format``, ``path``, ``options.<name>``)."""
    if format not in READERS:
        raise ConfigError("format", f"unknown data format {format!r}", f"use one of {sorted(READERS)}")
    r = READERS[format]
    if r.takes_path and not path:
        raise ConfigError("path", f"format {format!r} needs a path", "set data.path to the dataset (the reader's input)")
    if not r.accepts_any():
        unknown = [k for k in options if k not in r.options()]
        if unknown:
            raise ConfigError(f"options.{unknown[0]}", f"the {format} reader has no option {unknown[0]!r}",
                              f"known options: {r.options()}")
    return r


def read(format: str, path: str | PathLike | None = None, **options: Any) -> ad.AnnData:
    """Read a dataset of ``format`` (``READERS``) into the stguide data model."""
    r = check_read(format, path, options)
    return r.fn(path, **options) if r.takes_path else r.fn(**options)
