"""Typed, frozen configuration: dictionaries (from YAML or the CLI) are validated up front; unknown keys, wrong
types and unknown names (a loss, a gene encoder, a reader) are errors that name the key and the allowed values.

Every concept has one frozen dataclass, defined beside the code that uses it and passed down whole:
``PatchConfig`` (data/patches.py), ``GeneConfig`` (genes/config.py), ``ContrastiveConfig`` (contrastive/config.py),
``ProbeConfig`` (evaluate/probes.py) and ``ExperimentConfig`` (evaluate/config.py), which holds them all.
A dataclass checks its own values in ``__post_init__`` by raising :class:`ConfigError` with the key relative to
itself; :func:`build_dataclass` turns that into an :class:`InputError` naming the whole path of the key.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from stguide.errors import InputError

T = TypeVar("T")


class ConfigError(InputError):
    """A value a config dataclass refuses in ``__post_init__``. ``key`` is relative to the dataclass (``loss``,
    ``methods.ours.loss``); :func:`build_dataclass` prefixes it with where the dataclass sits in the YAML."""

    def __init__(self, key: str, problem: str, fix: str) -> None:
        self.key = key
        super().__init__(f"config:{key}", problem, fix)


def check_name(key: str, value: str, allowed: Iterable[str], what: str) -> None:
    """Raise :class:`ConfigError` when ``value`` is not one of the registry names ``allowed``."""
    names = sorted(allowed)
    if value not in names:
        raise ConfigError(key, f"unknown {what} {value!r}", f"use one of {names}")


def _check_type(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise InputError(where, f"{value!r} is not one of {list(allowed)}", f"write one of {list(allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for alt in typing.get_args(tp):
            try:
                return _check_type(value, alt, where)
            except InputError as e:
                errors.append(e)
        raise InputError(where, f"{value!r} has the wrong type (expected {tp})", "fix the value's type")
    if tp is type(None):
        if value is None:
            return None
        raise InputError(where, f"expected null, got {value!r}", "fix the value")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise InputError(where, f"expected a list, got {value!r}", "write a list")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_check_type(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise InputError(where, f"expected {len(args)} values, got {len(value)}", "fix the list")
        return tuple(_check_type(v, a, where) for v, a in zip(value, args, strict=True))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise InputError(where, f"expected a list, got {value!r}", "write a list")
        return [_check_type(v, typing.get_args(tp)[0], where) for v in value] if typing.get_args(tp) else list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise InputError(where, f"expected a mapping, got {value!r}", "write a mapping")
        return dict(value)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else build_dataclass(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(where, f"expected a number, got {value!r}", "write a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(where, f"expected an integer, got {value!r}", "write an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(where, f"expected true/false, got {value!r}", "write true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise InputError(where, f"expected a string, got {value!r}", "write a string")
        return value
    return value


def _join(where: str, key: str) -> str:
    """``config:`` + ``genes`` → ``config:genes``; ``config:genes`` + ``seed`` → ``config:genes.seed``."""
    return f"{where}{key}" if where.endswith(":") else f"{where}.{key}"


def build_dataclass(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build a (frozen) dataclass from a mapping, rejecting unknown keys and wrong types with the key named."""
    if not isinstance(data, dict):
        raise InputError(where, f"expected a mapping, got {type(data).__name__}", "write key: value pairs")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(_join(where, unknown[0]), f"unknown key {unknown[0]!r}", f"known keys: {sorted(known)}")
    kwargs = {k: _check_type(v, hints[k], _join(where, k)) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise InputError(_join(where, e.key), e.problem, e.fix) from None


class FromDict:
    """Mixin for frozen config dataclasses: ``Cls.from_dict(mapping)`` validated by :func:`build_dataclass`, errors
    naming ``config:<section>.<key>``."""

    section: ClassVar[str] = "config"

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any] | None, where: str | None = None) -> T:
        return build_dataclass(cls, d or {}, where or f"config:{cls.section}")  # type: ignore[attr-defined]


def load_yaml(path: str | PathLike) -> dict[str, Any]:
    """The top-level mapping of a YAML file; a missing, unreadable or non-mapping file is an :class:`InputError`."""
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise InputError(path, f"cannot be read as YAML ({e})", "fix the file") from None
    if not isinstance(doc, dict):
        raise InputError(path, "the top level is not a mapping", "write sections such as 'genes:' or 'contrastive:'")
    return doc


def replace_config(cfg: T, **changes: Any) -> T:
    """A copy of the config dataclass ``cfg`` with ``changes`` applied and validated like a YAML mapping
    (nested dataclasses may be given as mappings of the fields to change)."""
    current = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}  # type: ignore[arg-type]
    for k, v in changes.items():
        if isinstance(v, dict) and k in current and dataclasses.is_dataclass(current[k]):
            v = replace_config(current[k], **v)
        current[k] = v
    section = getattr(cfg, "section", "")
    return build_dataclass(type(cfg), current, f"config:{section}")
