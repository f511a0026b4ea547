"""Typed options for every config node, validated by pydantic, and the one-line messages users see.

Every node of the config (the top level, ``train``, ``shift``, ``eval``, ``execution``, each dataset and each
experiment's ``<name>.*``) is an :class:`Options` model: its fields hold each option's type, default, range
(``ge``/``gt``/``lt``), choices (``Literal``) and help (``description``). Pydantic does the checking, refuses
unknown keys and writes the JSON Schema the docs are generated from; :func:`check` turns its report into the
one line the command line prints, naming the key as the user writes it (``train.learning_rate``), with the
nearest valid name where a name was misspelt.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, Strict, ValidationError

from equivar.errors import ConfigError

# JAX computes in 32 bits unless x64 is enabled: larger numbers would overflow or lose their meaning silently.
INT_LIMIT = 2**31
FLOAT_LIMIT = 3.4e38


def _fits_int32(value: int) -> int:
    if abs(value) >= INT_LIMIT:
        raise ValueError(f"must be < {INT_LIMIT} in size (JAX's int32)")
    return value


def _fits_float32(value: float) -> float:
    if abs(value) > FLOAT_LIMIT:
        raise ValueError(f"must be <= {FLOAT_LIMIT:g} in size (JAX's float32)")
    return value


# Bounds sit before the 32-bit check, so that pydantic writes them into the JSON Schema (``minimum``).
Int = Annotated[int, Strict(), AfterValidator(_fits_int32)]
PositiveInt = Annotated[int, Strict(), Field(ge=1), AfterValidator(_fits_int32)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0), AfterValidator(_fits_int32)]
Float = Annotated[float, Field(allow_inf_nan=False), AfterValidator(_fits_float32)]


class Options(BaseModel):
    """One config node's options: unknown keys refused, no type coercion (``"3"`` is not 3), immutable."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, populate_by_name=True)


T = TypeVar("T", bound=BaseModel)
MISSING = "???"  # Hydra's mark for a value the user must set


def check(cls: type[T], values: Mapping[str, Any] | None, prefix: str = "") -> T:
    """``cls`` validated from ``values`` (missing keys keep their defaults), or a one-line ConfigError naming
    the first bad key as the user writes it (``prefix.key``, ``prefix.key[1]``)."""
    values = {k: v for k, v in (values or {}).items() if not (isinstance(v, str) and v == MISSING)}
    try:
        return cls.model_validate(values)
    except ValidationError as err:
        raise ConfigError(message(err, cls, prefix)) from None


def key_text(prefix: str, loc: tuple[Any, ...]) -> str:
    """``train.learning_rate``, ``equivariance.paddings[1]``: a pydantic location as a command-line key."""
    text = prefix
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


_KINDS = {"int": "an integer", "float": "a number", "bool": "true or false", "string": "a string",
          "list": "a list", "dict": "a mapping of names to values", "literal": "one of"}


def _kind(error_type: str) -> str | None:
    return next((text for name, text in _KINDS.items() if error_type.startswith(name)), None)


def _choices(error: Mapping[str, Any]) -> list[str]:
    return re.findall(r"'([^']*)'", str((error.get("ctx") or {}).get("expected", "")))


def message(err: ValidationError, cls: type[BaseModel], prefix: str = "") -> str:
    """The one line for pydantic's first error (the alternatives of a union are read together)."""
    # The most specific error first: a union reports every alternative, and the one that went deepest into the
    # value (an entry of a list) is the one that matched its type.
    errors = sorted(err.errors(), key=lambda e: -len([p for p in e["loc"] if isinstance(p, int) or not _is_tag(p)]))
    first = errors[0]
    # A union's alternatives each report under the field, their own tag appended: ('spc', "literal['auto']").
    field_loc = tuple(p for p in first["loc"] if isinstance(p, int) or not _is_tag(p))
    group = [e for e in errors if tuple(p for p in e["loc"] if isinstance(p, int) or not _is_tag(p)) == field_loc]
    key = key_text(prefix, field_loc)
    value = first.get("input")
    kind = first["type"]
    if kind == "extra_forbidden":
        name = str(field_loc[-1])
        parent = key_text(prefix, field_loc[:-1])
        valid = [f.alias or n for n, f in _fields_at(cls, field_loc[:-1]).items()]
        near = nearest(name, valid)
        where = parent or "the top level"
        return (f"{key} is not an option of {where}"
                + (f" (did you mean {key_text(parent, (near[0],))}?)" if near else "")
                + f"; valid options: {', '.join(valid)}")
    if kind == "value_error" and not field_loc:  # a rule across several options: its own sentence
        return str(first["ctx"]["error"])
    if kind == "missing":
        return f"{key} must be set: add {key}=VALUE"
    if value is None and kind != "missing":
        return f"{key} must be set, got null"
    if len(group) > 1 and any(e["type"] == "literal_error" for e in group) and isinstance(value, str):
        return _single(next(e for e in group if e["type"] == "literal_error"), key, value)  # a misspelt choice
    if len(group) > 1:  # a union: every alternative it allows
        allowed: list[str] = []
        for e in group:
            text = _kind(e["type"])
            if text == "one of":
                allowed += [repr(c) for c in _choices(e)]
            elif text and text not in allowed:
                allowed.append(text)
        numeric = next((e for e in group if e["type"] in _BOUNDS or e["type"] == "value_error"), None)
        if numeric is not None:  # the value has the right type for one alternative: that one's rule
            return _single(numeric, key, numeric.get("input"))
        return f"{key} must be {' or '.join(allowed)}, got {value!r}"
    return _single(first, key, value)


_BOUNDS = {"greater_than_equal": (">=", "ge"), "greater_than": (">", "gt"), "less_than": ("<", "lt"),
           "less_than_equal": ("<=", "le")}


def _single(error: Mapping[str, Any], key: str, value: Any) -> str:
    kind = error["type"]
    if kind in _BOUNDS:
        symbol, name = _BOUNDS[kind]
        return f"{key} must be {symbol} {_number(error['ctx'][name])}, got {value!r}"
    if kind == "literal_error":
        choices = _choices(error)
        near = nearest(str(value), choices)
        return (f"{key}={value!r} is not one of {', '.join(choices)}"
                + (f" (did you mean {near[0]!r}?)" if near else ""))
    if kind == "finite_number":
        return f"{key} must be finite, got {value!r}"
    if kind == "too_short":
        return f"{key} must not be empty"
    if kind == "value_error":
        return f"{key} {error['ctx']['error']}, got {value!r}"
    text = _kind(kind)
    if text:
        return f"{key} must be {text}, got {value!r}"
    return f"{key}: {error['msg']}, got {value!r}"


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def _is_tag(part: Any) -> bool:
    """pydantic's names for a union member in an error location (``literal['auto']``, ``function-after[...]``,
    ``int``), which are not keys the user wrote."""
    return isinstance(part, str) and (("[" in part and part.endswith("]")) or part in ("int", "float", "str",
                                                                                       "bool", "list", "dict"))


def _fields_at(cls: type[BaseModel], loc: tuple[Any, ...]) -> dict[str, Any]:
    """The fields of the (nested) model at ``loc``; empty when the location is not a model."""
    current: Any = cls
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or part not in current.model_fields:
            return {}
        current = current.model_fields[part].annotation
    if isinstance(current, type) and issubclass(current, BaseModel):
        return dict(current.model_fields)
    return {}


def defaults(cls: type[BaseModel]) -> dict[str, Any]:
    """Every option's default as a plain dict (the node Hydra composes); a required option is Hydra's ``???``,
    so that it can be set without ``+`` and is reported as missing when it is not."""
    out: dict[str, Any] = {}
    for name, field in cls.model_fields.items():
        if field.is_required():
            out[field.alias or name] = MISSING
            continue
        value = field.get_default(call_default_factory=True)
        out[field.alias or name] = list(value) if isinstance(value, tuple) else value
    return out


# What users call a choice by another name: the name they meant, when it is among the choices.
SYNONYMS = {"circular": "roll", "periodic": "roll", "wrap": "roll", "cyclic": "roll", "zero-fill": "zero",
            "zeros": "zero", "zero-pad": "zero", "constant": "zero", "sinc": "fourier", "bilinear": "bilinear-zero",
            "linear": "bilinear-zero", "average": "mean", "avg": "mean", "maximum": "max"}


def nearest(word: str, choices: Any) -> list[str]:
    """The closest valid name, if any is close (case is ignored: ``circular`` suggests ``CIRCULAR``; a known
    synonym suggests the name it stands for: ``circular`` suggests ``roll`` among the shift modes)."""
    by_lower = {str(c).lower(): str(c) for c in choices}
    word = str(word).lower()
    if word in by_lower:
        return [by_lower[word]]
    if SYNONYMS.get(word) in by_lower:
        return [by_lower[SYNONYMS[word]]]
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
