"""Typed experiment options: one dataclass per experiment holds every option's type, default, range and help.

The same dataclass is registered with Hydra as a structured config (``options/<experiment>``), so defaults
live in one place and Hydra checks types and keys while composing; :func:`check` then checks ranges and
choices, with one line that names the key as the user writes it (``equivariance.max_shift``).
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import types
import typing
from typing import Any, Callable, Mapping, TypeVar

from equivar.errors import ConfigError

T = TypeVar("T")


# JAX computes in 32 bits unless x64 is enabled: larger numbers would overflow or lose their meaning silently.
INT_LIMIT = 2 ** 31
FLOAT_LIMIT = float(3.4e38)


def option(default: Any, help: str, *, minimum: float | None = None, choices: tuple[Any, ...] | None = None,
           below: float | None = None, above: float | None = None) -> Any:
    """A dataclass field with its rule: ``minimum`` (inclusive), ``above`` and ``below`` (exclusive) for numbers
    and for every entry of a list of numbers; ``choices`` for strings and for every entry of a list of
    strings. Every integer must also fit JAX's int32 and every number its float32."""
    factory = (lambda d=default: list(d)) if isinstance(default, list) else \
        (lambda d=default: dict(d)) if isinstance(default, dict) else None
    metadata = {"help": help, "minimum": minimum, "choices": choices, "below": below, "above": above}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def nearest(word: str, choices: Any) -> list[str]:
    """The closest valid name, if any is close (case is ignored: ``circular`` suggests ``CIRCULAR``)."""
    by_lower = {str(c).lower(): str(c) for c in choices}
    word = str(word).lower()
    close = difflib.get_close_matches(word, list(by_lower), n=5)
    # difflib's ratio ties often (cnn_apz is as close to cnn_gap as to cnn_aps): fewer edits wins, then ratio.
    close.sort(key=lambda c: (_edits(word, c), -difflib.SequenceMatcher(None, word, c).ratio()))
    return [by_lower[m] for m in close[:1]]


def _edits(a: str, b: str) -> int:
    """Levenshtein distance: insertions, deletions and substitutions turning ``a`` into ``b``."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        previous, row[0] = row[0], i
        for j, cb in enumerate(b, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ca != cb))
    return row[-1]


def unknown(what: str, value: Any, choices: Any) -> str:
    """``unknown <what> 'x' (did you mean 'y'?); choose one of ...``: the message for a name not among
    ``choices``."""
    near = nearest(str(value), choices)
    return (f"unknown {what} {value!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
            + f"; choose one of {', '.join(str(c) for c in choices)}")


def check_keywords(fn: Callable[..., Any], keywords: Mapping[str, Any], where: str,
                   skip: tuple[str, ...] = ()) -> None:
    """Keyword options meant for ``fn`` (a library's optimizer, a layer builder) against its signature: an
    unknown name is a one-line ConfigError with the nearest valid one. ``skip``: parameters set elsewhere."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    accepted = [name for name, p in params.items() if name not in skip and name != "self"
                and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for key in keywords:
        if key not in accepted:
            near = nearest(key, accepted)
            raise ConfigError(f"{where} has no option {key!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
                              + f"; valid options: {', '.join(accepted) or 'none'}")


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
        if meta.get("above") is not None and value <= meta["above"]:
            raise ConfigError(f"{key} must be > {meta['above']}, got {value!r}")
        if meta.get("below") is not None and value >= meta["below"]:
            raise ConfigError(f"{key} must be < {meta['below']}, got {value!r}")
        if kind is int and abs(value) >= INT_LIMIT:
            raise ConfigError(f"{key} must be < {INT_LIMIT} in size (JAX's int32), got {value!r}")
        if abs(value) > FLOAT_LIMIT:
            raise ConfigError(f"{key} must be <= {FLOAT_LIMIT:g} in size (JAX's float32), got {value!r}")
        return kind(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        if meta.get("choices") and value not in meta["choices"]:
            near = nearest(value, meta["choices"])
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(meta['choices'])}"
                              + (f" (did you mean {near[0]!r}?)" if near else ""))
        return value
    if kind is Any:
        return value
    raise TypeError(f"unsupported option type {kind!r} for {key}")


MISSING = "???"  # Hydra's mark for a value the user must set


def _check_value(value: Any, annotation: Any, meta: Mapping[str, Any], key: str) -> Any:
    if isinstance(value, str) and value == MISSING:
        raise ConfigError(f"{key} must be set: add {key}=VALUE")
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):  # Optional[X], or e.g. int | str ("auto" or a count)
        members = [a for a in args if a is not type(None)]
        if value is None:
            if len(members) < len(args):
                return None
            raise ConfigError(f"{key} must be set, got null")
        if len(members) > 1:
            if isinstance(value, str) and str in members:
                return _check_scalar(value, str, meta, key)
            numeric = [m for m in members if m in (int, float)]
            if numeric and isinstance(value, (int, float)) and not isinstance(value, bool):
                return _check_scalar(value, numeric[0], {**meta, "choices": None}, key)
            raise ConfigError(f"{key} must be {' or '.join(_kind_name(m, meta) for m in members)}, got {value!r}")
        annotation = members[0]
        origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is dict or origin is dict:  # keyword options for a library callable: checked by their user
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping of names to values, got {value!r}")
        return dict(value)
    if origin is list:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if not value:
            raise ConfigError(f"{key} must not be empty")
        return [_check_scalar(v, args[0], meta, f"{key}[{i}]") for i, v in enumerate(value)]
    return _check_scalar(value, annotation, meta, key)


def _kind_name(kind: Any, meta: Mapping[str, Any]) -> str:
    if kind is str and meta.get("choices"):
        return " or ".join(repr(c) for c in meta["choices"])
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(kind, str(kind))


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
    def key_of(name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    checked = {name: _check_value(values[name], hints[name], f.metadata, key_of(name))
               for name, f in fields.items() if name in values}
    for name, f in fields.items():
        if name not in checked and isinstance(f.default, str) and f.default == MISSING:
            raise ConfigError(f"{key_of(name)} must be set: add {key_of(name)}=VALUE")
    return cls(**checked)


def defaults(cls: type) -> dict[str, Any]:
    """Every option's default as a plain dict: the node Hydra composes (untyped, so that every type and range
    error is reported by :func:`check`, in one style, naming the key)."""
    out = {}
    for f in dataclasses.fields(cls):
        out[f.name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return out


def describe(cls: type) -> list[dict[str, Any]]:
    """Every option's name, type, default, rule and help (for documentation generated from the rules)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        rule = {k: v for k, v in f.metadata.items() if k != "help" and v is not None}
        out.append({"name": f.name, "type": _type_text(hints[f.name]), "default": default, "rule": rule,
                    "help": f.metadata.get("help", "")})
    return out


def _type_text(annotation: Any) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " | ".join("null" if a is type(None) else _type_text(a) for a in args)
    if origin is list:
        return f"list[{_type_text(args[0])}]"
    return getattr(annotation, "__name__", str(annotation)).replace("Any", "any")


def _plain_annotation(annotation: Any) -> Any:
    """A signature's annotation as an option type: tuples become lists (what a command line gives)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple:
        return list[args[0]] if args else list
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_plain_annotation(a) for a in args)]
    return annotation


def schema_of(fn: Callable[..., Any], name: str, rules: Mapping[str, Mapping[str, Any]] | None = None,
              bases: tuple[type, ...] = ()) -> type:
    """A typed option dataclass made from ``fn``'s keyword parameters: their annotations are the types, their
    defaults the defaults (a parameter without one must be set), and ``rules`` adds each one's range, choices
    and help. The defaults stay in one place, the function's signature."""
    hints = typing.get_type_hints(fn)
    rules = dict(rules or {})
    fields = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind not in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD):
            continue
        default = MISSING if param.default is param.empty else param.default
        default = list(default) if isinstance(default, tuple) else default
        rule = dict(rules.pop(param.name, {}))
        fields.append((param.name, _plain_annotation(hints.get(param.name, Any)),
                       option(default, rule.pop("help", ""), **rule)))
    if rules:
        raise TypeError(f"rules for {sorted(rules)}, which {fn.__name__} does not take")
    return dataclasses.make_dataclass(name, fields, bases=bases)
