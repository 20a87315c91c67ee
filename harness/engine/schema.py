"""Typed configuration: every option a command takes is checked against a dataclass schema before
anything is written.

`check(Schema, values, "where")` builds the dataclass from a mapping (a composed config's section, a
method's params, a metric's options) or raises one UsageError line naming the key and the fix:
an unknown key (with the closest names), a value of the wrong type (`seed=true` is not an integer,
`n=2.5` is not one either), a value out of range or outside its choices (field metadata, see
`option`), a string where a list belongs (the whole string is named), a missing required key.
Types understood: bool, int, float (an int is accepted), str, Literal, X | None, list[X], tuple[X, ...],
dict[str, X], nested dataclasses and Any.
"""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Union, get_args, get_origin

from harness.errors import UsageError, unknown_name

_MISSING = dataclasses.MISSING


def option(default: Any = _MISSING, *, min: float | None = None, max: float | None = None,
           above: float | None = None, below: float | None = None, choices: tuple[Any, ...] | None = None,
           default_factory: Any = _MISSING) -> Any:
    """A dataclass field with bounds: `x: int = option(4, min=1)`; above/below are strict bounds
    (`level: float = option(0.95, above=0, below=1)`)."""
    bounds = (("min", min), ("max", max), ("above", above), ("below", below), ("choices", choices))
    meta = {k: v for k, v in bounds if v is not None}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def check(schema: type, values: Mapping[str, Any] | None, where: str) -> Any:
    """An instance of `schema` from `values`, every field checked (module docstring)."""
    values = {} if values is None else values
    if not isinstance(values, Mapping):
        raise UsageError(f"{where}={values!r} is not a mapping of options; give key=value pairs under {where}")
    fields = {f.name: f for f in dataclasses.fields(schema)}
    for key in values:
        if key not in fields:
            raise unknown_key(where, str(key), fields)
    hints = typing.get_type_hints(schema)
    built = {}
    for name, f in fields.items():
        if name not in values:
            if f.default is _MISSING and f.default_factory is _MISSING:
                raise UsageError(f"{dotted(where, name)} is missing; set it ({dotted(where, name)}=...)")
            continue
        built[name] = _value(hints[name], values[name], dotted(where, name), f.metadata)
    return schema(**built)


def dotted(where: str, key: str) -> str:
    """The config key `key` under `where` ("" is the root)."""
    return f"{where}.{key}" if where else key


def unknown_key(where: str, key: str, known: Iterable[str]) -> UsageError:
    """A key that is not an option: the closest names and the fix (the spelling, never Hydra's `+key`)."""
    known = list(known)
    names = str(unknown_name("key", key, known)).split("; ", 1)[1] if known else f"{where or 'the config'} takes no options"
    return UsageError(f"{dotted(where, key)} is not an option: {names} (fix the spelling: "
                      f"{dotted(where, '<key>')}=value)")


def _value(kind: Any, value: Any, where: str, meta: Mapping[str, Any]) -> Any:
    checked = _typed(kind, value, where)
    _bounds(checked, where, meta)
    return checked


def _typed(kind: Any, value: Any, where: str) -> Any:
    origin, args = get_origin(kind), get_args(kind)
    if kind is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option_kind in options:
            try:
                return _typed(option_kind, value, where)
            except UsageError as exc:
                errors.append(exc)
        raise errors[0] if len(options) == 1 else UsageError(
            f"{where}={value!r} is none of {' or '.join(_name(a) for a in options)}; give one of those")
    if origin is Literal:
        if value not in args:
            raise UsageError(f"{where}={value!r} is not one of {', '.join(map(repr, args))}; use one of those")
        return value
    if dataclasses.is_dataclass(kind):
        return check(kind, value, where)
    if origin in (list, tuple):
        if isinstance(value, str):
            raise UsageError(f"{where} is a list, and was given the string {value!r}; write it as a list: "
                             f"'{where}=[{value}]' (quote the whole override)")
        if not isinstance(value, (list, tuple)):
            raise UsageError(f"{where}={value!r} is not a list; give a list, e.g. {where}=[...]")
        item = args[0] if args else Any
        items = [_typed(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise UsageError(f"{where}={value!r} is not a mapping; give {{key: value, ...}}")
        item = args[1] if len(args) > 1 else Any
        return {str(k): _typed(item, v, f"{where}.{k}") for k, v in value.items()}
    return _scalar(kind, value, where)


def _scalar(kind: Any, value: Any, where: str) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise UsageError(f"{where}={value!r} is not a switch; use true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{where}={value!r} is not an integer; give a whole number")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UsageError(f"{where}={value!r} is not a finite number; give a number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise UsageError(f"{where}={value!r} is not text; give a string")
        return value
    raise TypeError(f"schema type {kind!r} of {where} is not supported")


def _bounds(value: Any, where: str, meta: Mapping[str, Any]) -> None:
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        raise UsageError(f"{where}={value!r} is not one of {', '.join(map(repr, meta['choices']))}; use one of those")
    low, high = meta.get("min", meta.get("above")), meta.get("max", meta.get("below"))
    strict_low, strict_high = "above" in meta, "below" in meta
    too_low = low is not None and (value <= low if strict_low else value < low)
    too_high = high is not None and (value >= high if strict_high else value > high)
    if too_low or too_high:
        raise UsageError(f"{where}={value!r} is out of range; use a value {_span(low, high, strict_low, strict_high)}")


def _span(low: Any, high: Any, strict_low: bool, strict_high: bool) -> str:
    if high is None:
        return f"{'>' if strict_low else '>='} {low}"
    if low is None:
        return f"{'<' if strict_high else '<='} {high}"
    return f"in {'(' if strict_low else '['}{low}, {high}{')' if strict_high else ']'}"


def _name(kind: Any) -> str:
    return getattr(kind, "__name__", str(kind))
