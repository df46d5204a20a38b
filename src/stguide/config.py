"""Typed, frozen configuration: dictionaries (from YAML or the CLI) are validated up front; unknown keys and wrong
types are errors that name the key."""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar, TypeVar

from stguide.errors import InputError

T = TypeVar("T")


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
            return tuple(_check_type(v, args[0], where) for v in value)
        if len(args) != len(value):
            raise InputError(where, f"expected {len(args)} values, got {len(value)}", "fix the list")
        return tuple(_check_type(v, a, where) for v, a in zip(value, args))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise InputError(where, f"expected a list, got {value!r}", "write a list")
        return [_check_type(v, typing.get_args(tp)[0], where) for v in value] if typing.get_args(tp) else list(value)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise InputError(where, f"expected a mapping, got {value!r}", "write a mapping")
        return dict(value)
    if dataclasses.is_dataclass(tp):
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


def build_dataclass(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build a (frozen) dataclass from a mapping, rejecting unknown keys and wrong types with the key named."""
    if not isinstance(data, dict):
        raise InputError(where, f"expected a mapping, got {type(data).__name__}", "write key: value pairs")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise InputError(f"{where}.{unknown[0]}", f"unknown key {unknown[0]!r}", f"known keys: {sorted(known)}")
    kwargs = {k: _check_type(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


class FromDict:
    """Mixin for frozen config dataclasses: ``Cls.from_dict(mapping)`` validated by :func:`build_dataclass`, errors
    naming ``config:<section>.<key>``."""

    section: ClassVar[str] = "config"

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any] | None, where: str | None = None) -> T:
        return build_dataclass(cls, d or {}, where or f"config:{cls.section}")  # type: ignore[attr-defined]
