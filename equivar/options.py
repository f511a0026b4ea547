"""Typed experiment options: one dataclass per experiment holds every option's type, default, range and help.

The same dataclass is registered with Hydra as a structured config (``options/<experiment>``), so defaults
live in one place and Hydra checks types and keys while composing; :func:`check` then checks ranges and
choices, with one line that names the key as the user writes it (``equivariance.max_shift``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from typing import Any, Mapping, TypeVar

from equivar.errors import ConfigError

T = TypeVar("T")


def option(default: Any, help: str, *, minimum: float | None = None, choices: tuple[Any, ...] | None = None,
           below: float | None = None) -> Any:
    """A dataclass field with its rule: ``minimum`` (inclusive) and ``below`` (exclusive) for numbers and
    for every entry of a list of numbers; ``choices`` for strings and for every entry of a list of strings."""
    factory = (lambda d=default: list(d)) if isinstance(default, list) else None
    metadata = {"help": help, "minimum": minimum, "choices": choices, "below": below}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def nearest(word: str, choices: Any) -> list[str]:
    """The closest valid name, if any is close (case is ignored: ``circular`` suggests ``CIRCULAR``)."""
    by_lower = {str(c).lower(): str(c) for c in choices}
    match = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1)
    return [by_lower[m] for m in match]


def _check_scalar(value: Any, kind: type, meta: Mapping[str, Any], key: str) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(
                value, int)):
            raise ConfigError(f"{key} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be finite, got {value!r}")
        if meta.get("minimum") is not None and value < meta["minimum"]:
            raise ConfigError(f"{key} must be >= {meta['minimum']}, got {value!r}")
        if meta.get("below") is not None and value >= meta["below"]:
            raise ConfigError(f"{key} must be < {meta['below']}, got {value!r}")
        return kind(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        if meta.get("choices") and value not in meta["choices"]:
            near = nearest(value, meta["choices"])
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(meta['choices'])}"
                              + (f" (did you mean {near[0]!r}?)" if near else ""))
        return value
    raise TypeError(f"unsupported option type {kind!r} for {key}")


def _check_value(value: Any, annotation: Any, meta: Mapping[str, Any], key: str) -> Any:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        annotation = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is list:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if not value:
            raise ConfigError(f"{key} must not be empty")
        return [_check_scalar(v, args[0], meta, f"{key}[{i}]") for i, v in enumerate(value)]
    return _check_scalar(value, annotation, meta, key)


def check(cls: type[T], values: Mapping[str, Any] | None, prefix: str) -> T:
    """``cls`` filled from ``values`` (missing keys keep their defaults), every value checked against its
    field's type and rule; unknown keys are refused with the nearest valid one."""
    values = dict(values or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            near = nearest(key, fields)
            raise ConfigError(f"{prefix}.{key} is not an option of {prefix}"
                              + (f" (did you mean {prefix}.{near[0]}?)" if near else "")
                              + f"; valid options: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    checked = {name: _check_value(values[name], hints[name], f.metadata, f"{prefix}.{name}")
               for name, f in fields.items() if name in values}
    return cls(**checked)


def describe(cls: type) -> list[dict[str, Any]]:
    """Every option's name, default, rule and help (for documentation generated from the rules)."""
    out = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        rule = {k: v for k, v in f.metadata.items() if k != "help" and v is not None}
        out.append({"name": f.name, "default": default, "rule": rule, "help": f.metadata.get("help", "")})
    return out
