"""Any model's forward pass as a sequence of rows, for splitting its Lie derivative layer by layer.

``equivar.lie.layer_contributions`` needs the network as a chain ``h_k = g_k(h_{k-1})``. Models people write
are not chains: residual sums, a functional ``x.max(axis=1)``, reshapes into tokens and the softmax of an
attention sit between their layers. This module traces the forward pass to a jaxpr with every layer call
(``equivar.introspect.capture``) inside a named scope, and cuts the jaxpr's equations into *rows*: a run of
equations inside one leaf layer is that layer's row (``blocks.0.attn.query (Linear)``); a run between layers is
a row of its own, named by what it computes and where it sits (``blocks.0 (Block): add``, ``model: max``).
The state between two rows is every value computed so far that a later row still reads (the residual stream
included), so every row is a function of the previous state: the chain holds for any graph, and the rows'
contributions sum to the model's derivative exactly (a telescoping sum).

How a translation acts on a state needs each value's spatial layout. It is found by following the input's
spatial axes through the equations: which axis of each value is which input axis, at what cumulative stride
(``jump``), flattened into tokens (``(N, H*W, D)``) or split into heads, through convolutions, pooling windows,
slices, pads, reshapes, transposes, contractions (both token axes of an attention matrix translate) and Fourier
transforms (resampling changes the jump by the size ratio). A value with no spatial axis left (logits, pooled
features) is meant to be invariant: the translation acts on it as zero.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend.core import Literal, Var

from equivar.introspect import SCOPE, scoped_forward
from equivar.lie import spectral_derivative


@dataclasses.dataclass(frozen=True)
class Part:
    """One input axis inside a value's axis: which input axis, at what cumulative stride, over how many
    positions (``freq``: the axis holds that input axis's Fourier spectrum of a length-``size`` signal)."""

    axis: int
    jump: float
    size: int
    freq: bool = False


Tag = tuple[Part, ...] | None  # per value axis: the input axes it holds (several: flattened, row-major)


@dataclasses.dataclass(frozen=True)
class Row:
    """A run of equations: one leaf layer's, or the computation between two layers."""

    name: str
    eqns: tuple[Any, ...]
    is_layer: bool
    kind: str = "other"  # what the row is (KINDS): the unit in which shares of the derivative are compared


@dataclasses.dataclass(frozen=True)
class Split:
    """A traced forward pass cut into rows, with the state (live values) after each row and every value's
    spatial layout."""

    consts: dict[Any, Any]
    input: Any
    output: Any
    rows: list[Row]
    states: list[list[Any]]  # states[k]: the values live after row k-1 (states[0] = [input])
    tags: dict[Any, tuple[Tag, ...]]


def trace_split(forward: Callable[[jax.Array], Any], x: jax.Array,
                layer_types: dict[str, str] | None = None) -> Split:
    """Traces ``forward(x)`` (layer calls inside ``@name`` scopes) and cuts it into rows; ``layer_types`` is
    read after the trace (a dict the forward pass fills in as it runs may be given)."""
    closed = jax.make_jaxpr(forward)(x)
    jaxpr = closed.jaxpr
    if len(jaxpr.invars) != 1 or len(jaxpr.outvars) != 1:
        raise ValueError("the forward pass must map one array to one array")
    consts = dict(zip(jaxpr.constvars, closed.consts))
    rank = x.ndim - 2
    tags: dict[Any, tuple[Tag, ...]] = {}
    tags[jaxpr.invars[0]] = (None, *(((Part(a, 1.0, x.shape[a + 1]),)) for a in range(rank)), None)
    _propagate(jaxpr.eqns, tags)
    rows = _rows(jaxpr.eqns, layer_types or {})
    used_later: list[set[Any]] = [set() for _ in rows]
    needed = {v for v in jaxpr.outvars if isinstance(v, Var)}
    for k in range(len(rows) - 1, -1, -1):
        used_later[k] = set(needed)
        for eqn in rows[k].eqns:
            needed |= {v for v in eqn.invars if isinstance(v, Var)}
    defined = [jaxpr.invars[0]]
    states = [[jaxpr.invars[0]]]
    for k, row in enumerate(rows):
        for eqn in row.eqns:
            defined.extend(eqn.outvars)
        states.append([v for v in defined if v in used_later[k] and v not in consts])
    return Split(consts, jaxpr.invars[0], jaxpr.outvars[0], rows, states, tags)


def model_split(model: Any, x: jax.Array) -> Split:
    """``trace_split`` of an NNX model (Linen through ``equivar.linen.LinenModel``), rows named by its layers'
    attribute paths and types."""
    forward, kinds = scoped_forward(model)  # kinds: filled in while trace_split traces forward
    return trace_split(forward, x, kinds)


def softmax_lee_split(module: Any, x: jax.Array, axis: int, batch: int = 64
                      ) -> tuple[float, dict[str, float], dict[str, str], float]:
    """The softmax LEE along spatial ``axis`` (mean over ``x`` of the squared norm of the probabilities' Lie
    derivative) and each row's part of it (the same mean of its contribution's squared norm), in call order,
    with each row's kind and the relative residual of the rows' sum (float rounding only)."""
    rows = model_split(module, x[:1]).rows

    def measure(v):
        total, parts = contributions(model_split(module, v), v, axis)
        logits = module(v)
        to_probs = lambda d: jax.jvp(jax.nn.softmax, (logits,), (d,))[1]  # noqa: E731
        probs = {k: to_probs(p) for k, p in parts.items()}
        sq = lambda d: jnp.sum(jnp.square(d), axis=-1)  # noqa: E731
        residual = jnp.max(jnp.abs(sum(parts.values()) - total)) / jnp.maximum(jnp.max(jnp.abs(total)), 1e-30)
        return sq(to_probs(total)), {k: sq(p) for k, p in probs.items()}, residual

    fn = jax.jit(measure)
    chunks = [fn(x[i:i + batch]) for i in range(0, x.shape[0], batch)]
    total = float(jnp.concatenate([c[0] for c in chunks]).mean())
    parts = {r.name: float(jnp.concatenate([c[1][r.name] for c in chunks]).mean()) for r in rows}
    return total, parts, {r.name: r.kind for r in rows}, max(float(c[2]) for c in chunks)


# ---- rows ----------------------------------------------------------------------------------------------------

def _scopes(eqn: Any) -> list[str]:
    return [s[len(SCOPE):] for s in str(eqn.source_info.name_stack).split("/") if s.startswith(SCOPE)]


def _rows(eqns: Sequence[Any], layer_types: dict[str, str]) -> list[Row]:
    """Runs of equations with the same innermost layer scope; a scope that holds other layers' scopes is a
    block, and its own equations are the computation between its layers."""
    scoped = [_scopes(e) for e in eqns]
    blocks = {s[i] for s in scoped for i in range(len(s) - 1)}
    runs: list[tuple[str | None, list[Any]]] = []
    for eqn, scopes in zip(eqns, scoped):
        key = scopes[-1] if scopes else None
        if runs and runs[-1][0] == key:
            runs[-1][1].append(eqn)
        else:
            runs.append((key, [eqn]))
    rows: list[Row] = []
    counts: dict[str, int] = {}
    for key, run in runs:
        is_layer = key is not None and key not in blocks
        where = "model" if key is None else _typed(key, layer_types)
        name = where if is_layer else f"{where}: {_what(run)}"
        counts[name] = counts.get(name, 0) + 1
        kind = row_kind(layer_types.get(key, "") if is_layer and key else "", [_op_name(e) for e in run])
        strided = any(e.primitive.name == "conv_general_dilated" and max(e.params["window_strides"]) > 1
                      for e in run)
        kind = "pooling" if kind == "linear" and strided else kind  # a strided convolution subsamples
        rows.append(Row(name if counts[name] == 1 else f"{name}:{counts[name]}", tuple(run), is_layer, kind))
    return rows


KINDS = ("non-linearity", "normalisation", "attention", "pooling", "linear", "position", "residual/reshape",
         "other")
_NONLINEAR_OPS = {"relu", "gelu", "maximum", "minimum", "tanh", "logistic", "silu", "elu", "softplus", "pow",
                  "relu6", "leaky_relu", "sigmoid", "exp", "log", "abs", "sign"}
_RESHAPING_OPS = {"add", "reshape", "transpose", "slice", "concatenate", "squeeze", "sub", "broadcast_in_dim",
                  "convert_element_type", "copy", "copy_p", "stop_gradient", "pad", "mul"}


def row_kind(layer_type: str, ops: Sequence[str]) -> str:
    """A row's kind from its layer's type (a leaf layer) or from its operations (the computation between
    layers): pointwise non-linearities, normalisations, attention (softmax over token similarities, any mixing
    by a data-dependent matrix), pooling and downsampling (strided convolutions included), linear maps,
    position embeddings, residual sums and reshapes."""
    t = layer_type.lower()
    if t:
        if "flatten" in t or "reshape" in t:
            return "residual/reshape"
        if "norm" in t:
            return "normalisation"
        if "attention" in t or "mixing" in t:
            return "attention"
        if any(k in t for k in ("pool", "polyphase", "downsample", "subsample", "blur")):
            return "pooling"
        if "position" in t or "token" in t or "embed" in t and "patch" not in t:
            return "position"
        if any(k in t for k in ("conv", "linear", "dense", "locally", "einsum")):
            return "linear"
        if t in _NONLINEAR_OPS or any(k in t for k in ("activation", "relu", "gelu", "tanh", "sigmoid")):
            return "non-linearity"
        if "bandlimit" in t:
            return "linear"
        return "other"
    names = set(ops)
    if "softmax" in names or "matmul" in names:
        return "attention"
    if names & {"reduce max", "reduce min", "mean", "sum", "max pool", "sum pool", "argmax"}:
        return "pooling"
    if names & _NONLINEAR_OPS:
        return "non-linearity"
    if names <= _RESHAPING_OPS:
        return "residual/reshape"
    return "other"


def _typed(name: str, layer_types: dict[str, str]) -> str:
    kind = layer_types.get(name)
    return f"{name} ({kind})" if kind else name


_QUIET = {"broadcast_in_dim", "convert_element_type", "stop_gradient", "copy", "copy_p"}
_FRIENDLY = {"reduce_max": "reduce max", "reduce_min": "reduce min", "reduce_sum": "sum", "dot_general": "matmul",
             "reduce_window_max": "max pool", "reduce_window_sum": "sum pool", "conv_general_dilated": "conv",
             "max": "maximum", "min": "minimum", "integer_pow": "pow", "squeeze": "reshape",
             "expand_dims": "reshape"}


def _op_name(eqn: Any) -> str:
    """An equation's operation as a user would name it: a jitted or custom-derivative function by its name
    (``relu``, ``gelu``), a primitive by its own."""
    prim = eqn.primitive.name
    if prim in ("jit", "pjit", "closed_call") and eqn.params.get("name"):
        return str(eqn.params["name"]).lstrip("_")
    sub = _subjaxpr(eqn)
    if prim.startswith("custom_") and sub is not None and sub.eqns:
        named = [str(e.params["name"]).lstrip("_") for e in sub.eqns if e.params.get("name")]
        return named[0] if named else _FRIENDLY.get(sub.eqns[0].primitive.name, sub.eqns[0].primitive.name)
    return _FRIENDLY.get(prim, prim)


def _what(eqns: Sequence[Any]) -> str:
    """A short name for what a run of equations computes: its operations in order, the softmax recognised."""
    names = [_op_name(e) for e in eqns]
    if {"pow", "mul", "add", "tanh"} == set(names):  # jax.nn.gelu's tanh approximation, written out
        names = ["gelu"]
    if {"exp", "sum", "div"} <= set(names) and "reduce max" in names:
        first = names.index("reduce max")
        last = max(i for i, n in enumerate(names) if n == "div")
        names = names[:first] + ["softmax"] + names[last + 1:]
    loud = [n for n in names if n not in _QUIET] or names
    merged: list[str] = []
    for n in loud:
        if n == "div" and merged and merged[-1] == "sum":  # jnp.mean
            merged[-1] = "mean"
        else:
            merged.append(n)
    return "+".join(dict.fromkeys(merged))


# ---- spatial layouts -----------------------------------------------------------------------------------------

def _shape(v: Any) -> tuple[int, ...]:
    return tuple(v.aval.shape) if hasattr(v.aval, "shape") else ()


def _resized(tag: Tag, size: int, factor: float = 1.0) -> Tag:
    """A single-part tag on an axis now of ``size`` positions, its stride multiplied by ``factor``."""
    if tag is None or len(tag) != 1:
        return None
    p = tag[0]
    return (dataclasses.replace(p, size=size, jump=p.jump * factor),)


def _of(v: Any, tags: dict) -> tuple[Tag, ...]:
    if isinstance(v, Literal) or v not in tags:
        return (None,) * len(_shape(v))
    return tags[v]


def _subjaxpr(eqn: Any) -> Any:
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        j = eqn.params.get(key)
        if j is not None:
            return getattr(j, "jaxpr", j)
    return None


def _propagate(eqns: Sequence[Any], tags: dict) -> None:
    for eqn in eqns:
        ins = [_of(v, tags) for v in eqn.invars]
        outs = _rule(eqn, ins)
        for v, t in zip(eqn.outvars, outs):
            tags[v] = tuple(t)


def _rule(eqn: Any, ins: list[tuple[Tag, ...]]) -> list[tuple[Tag, ...]]:
    prim = eqn.primitive.name
    p = eqn.params
    out_shapes = [_shape(v) for v in eqn.outvars]
    in_shapes = [_shape(v) for v in eqn.invars]
    if prim == "jit" and str(p.get("name", "")) in ("_pad", "pad"):  # jnp.pad: the padded axes keep their input
        return [tuple(_resized(t, n) for t, n in zip(ins[0], out_shapes[0]))]
    sub = _subjaxpr(eqn)
    if sub is not None and len(sub.invars) == len(ins):
        inner = dict(zip(sub.invars, ins))
        _propagate(sub.eqns, inner)
        return [_of(v, inner) if isinstance(v, Var) else (None,) * len(s) for v, s in zip(sub.outvars, out_shapes)]
    if prim == "reshape":
        return [_reshape(ins[0], in_shapes[0], out_shapes[0])]
    if prim == "transpose":
        return [tuple(ins[0][d] for d in p["permutation"])]
    if prim == "broadcast_in_dim":
        out: list[Tag] = [None] * len(out_shapes[0])
        for i, d in enumerate(p["broadcast_dimensions"]):
            if in_shapes[0][i] == out_shapes[0][d]:
                out[d] = ins[0][i]
        return [tuple(out)]
    if prim == "squeeze":
        dims = {d % len(in_shapes[0]) for d in p["dimensions"]}
        return [tuple(t for i, t in enumerate(ins[0]) if i not in dims)]
    if prim in ("reduce_max", "reduce_min", "reduce_sum", "reduce_prod", "reduce_and", "reduce_or", "argmax",
                "argmin", "reduce_precision") and "axes" in p:
        axes = set(p["axes"])
        return [tuple(t for i, t in enumerate(ins[0]) if i not in axes)]
    if prim == "dot_general":
        (lc, rc), (lb, rb) = p["dimension_numbers"]
        lhs, rhs = ins[0], ins[1]
        batch = [lhs[a] or rhs[b] for a, b in zip(lb, rb)]
        lfree = [lhs[i] for i in range(len(lhs)) if i not in lc and i not in lb]
        rfree = [rhs[i] for i in range(len(rhs)) if i not in rc and i not in rb]
        return [tuple(batch + lfree + rfree)]
    if prim == "conv_general_dilated":
        lhs_spec, _, out_spec = p["dimension_numbers"]
        out = [None] * len(out_shapes[0])
        for i, (a, b) in enumerate(zip(lhs_spec[2:], out_spec[2:])):
            factor = p["window_strides"][i] / p["lhs_dilation"][i]
            out[b] = _resized(ins[0][a], out_shapes[0][b], factor)
        return [tuple(out)]
    if prim in ("reduce_window_max", "reduce_window_sum", "reduce_window_min", "reduce_window"):
        strides = p["window_strides"]
        return [tuple(_resized(t, n, s) if t is not None else None
                      for t, n, s in zip(ins[0], out_shapes[0], strides))]
    if prim == "slice":
        strides = p["strides"] or (1,) * len(in_shapes[0])
        return [tuple(_resized(t, n, s) for t, n, s in zip(ins[0], out_shapes[0], strides))]
    if prim == "pad":
        return [tuple(_resized(t, n) for t, n in zip(ins[0], out_shapes[0]))]
    if prim == "concatenate":
        d = p["dimension"]
        out = []
        for i, n in enumerate(out_shapes[0]):
            if i != d:
                out.append(next((t[i] for t in ins if t[i] is not None), None))
            else:
                # pieces of one spatial axis joined (a hand-written circular pad) stay spatial; an axis extended
                # by something else (a class token before the patch tokens) is not a spatial axis any more
                tagged = [(s[d], t[d]) for s, t in zip(in_shapes, ins) if t[d] is not None]
                whole = len(tagged) == len(ins)
                out.append(_resized(max(tagged, key=lambda st: st[0])[1], n) if tagged and whole else None)
        return [tuple(out)]
    if prim == "fft":
        return [_fft(ins[0], in_shapes[0], out_shapes[0], p)]
    # Elementwise and everything else: an operand of the output's shape lends its layout axis by axis.
    result = []
    for s in out_shapes:
        same = [t for t, si in zip(ins, in_shapes) if si == s]
        result.append(tuple(next((t[i] for t in same if t[i] is not None), None) for i in range(len(s)))
                      if same else (None,) * len(s))
    return result


def _fft(tag: tuple[Tag, ...], in_shape: tuple[int, ...], out_shape: tuple[int, ...], p: dict) -> tuple[Tag, ...]:
    """Forward transforms turn a spatial axis into its spectrum; inverse ones turn it back, at the stride that
    the new length implies (ideal resampling)."""
    k = len(p["fft_lengths"])
    kind = str(p["fft_type"]).upper()
    inverse = "IFFT" in kind or "IRFFT" in kind
    out = list(tag[:-k])
    for d in range(len(in_shape) - k, len(in_shape)):
        t = tag[d]
        if t is None or len(t) != 1:
            out.append(None)
            continue
        part = t[0]
        if inverse and part.freq:
            n = out_shape[d]
            out.append((Part(part.axis, part.jump * part.size / n, n),))
        elif not inverse and not part.freq:
            out.append((dataclasses.replace(part, freq=True),))
        else:
            out.append(None)
    return tuple(out)


def _reshape(tag: tuple[Tag, ...], src: tuple[int, ...], dst: tuple[int, ...]) -> tuple[Tag, ...]:
    """Axes merged into one keep their parts in order (tokens from a grid); an axis split in two keeps its
    parts where the sizes match, else its outer half keeps the axis at a coarser stride (patches)."""
    out: list[Tag] = [None] * len(dst)
    i = j = 0
    while i < len(src) or j < len(dst):
        gi, gj = [i], [j]
        a = src[i] if i < len(src) else 1
        b = dst[j] if j < len(dst) else 1
        i += 1
        j += 1
        while a != b:
            if a < b and i < len(src):
                a *= src[i]
                gi.append(i)
                i += 1
            elif j < len(dst):
                b *= dst[j]
                gj.append(j)
                j += 1
            else:
                return tuple(out)
        gi = [k for k in gi if k < len(src) and src[k] > 1]
        gj = [k for k in gj if k < len(dst) and dst[k] > 1]
        if not gi or not gj:
            continue
        ins = [tag[k] for k in gi]
        if len(gj) == 1:
            tagged = [t for t in ins if t is not None]
            if len(tagged) == len(ins):  # a single-part axis is recorded at its size here (a grid's side)
                out[gj[0]] = tuple(dataclasses.replace(pt, size=src[k]) if len(t) == 1 else pt
                                   for k, t in zip(gi, tagged) for pt in t)
            continue
        if len(gi) == 1 and ins[0] is not None:
            t = ins[0]
            sizes = [dst[k] for k in gj]
            if len(t) == len(gj) and [pt.size for pt in t] == sizes:
                for k, pt in zip(gj, t):
                    out[k] = (pt,)
            elif len(t) == 1 and not t[0].freq:
                out[gj[0]] = (Part(t[0].axis, t[0].jump * math.prod(sizes[1:]), sizes[0]),)
    return tuple(out)


def translation_action(h: jax.Array, layout: tuple[Tag, ...], axis: int) -> jax.Array:
    """How translating the input by one pixel along ``axis`` moves the value ``h`` (zero without a spatial
    axis): ``-(1/jump) d/dp`` along every axis of ``h`` that holds the input's ``axis``."""
    out = jnp.zeros_like(h)
    if not jnp.issubdtype(h.dtype, jnp.floating):
        return out
    for d, tag in enumerate(layout):
        if tag is None:
            continue
        for k, part in enumerate(tag):
            if part.axis != axis or part.freq:
                continue
            if len(tag) == 1:
                out = out - _derivative(h, d) / part.jump
            else:
                shape = h.shape[:d] + tuple(pt.size for pt in tag) + h.shape[d + 1:]
                grid = h.reshape(shape)
                out = out - (_derivative(grid, d + k) / part.jump).reshape(h.shape)
    return out


def _derivative(h: jax.Array, d: int) -> jax.Array:
    """The spectral derivative of ``h`` along array axis ``d``."""
    moved = jnp.moveaxis(h, d, 1)[..., None]
    return jnp.moveaxis(spectral_derivative(moved, 0)[..., 0], 1, d)


# ---- evaluation ----------------------------------------------------------------------------------------------

def _run(eqns: Sequence[Any], env: dict) -> None:
    for eqn in eqns:
        args = [v.val if isinstance(v, Literal) else env[v] for v in eqn.invars]
        with eqn.ctx.manager:
            ans = eqn.primitive.bind(*args, **eqn.primitive.get_bind_params(eqn.params))
        if eqn.primitive.multiple_results:
            env.update(zip(eqn.outvars, ans))
        else:
            env[eqn.outvars[0]] = ans


def _is_float(v: Any) -> bool:
    return jnp.issubdtype(v.aval.dtype, jnp.floating)


def contributions(split: Split, x: jax.Array, axis: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The translation Lie derivative of the traced forward pass along spatial ``axis`` and each row's
    contribution to it (``equivar.lie``'s telescoping split over the rows); the contributions sum to the first.

    All contributions travel forward together as one batch of tangents (one ``jax.jvp`` per row, vmapped), so
    the program grows with the number of rows, not with its square.
    """
    env = dict(split.consts)
    env[split.input] = x
    n_rows = len(split.rows)
    action = lambda v: translation_action(env[v], split.tags.get(v, ()), axis)  # noqa: E731
    state = split.states[0]
    # tangents[v]: (n_rows + 1, *v.shape): index 0 carries the input's action (the total), k + 1 row k's part
    tangents = {v: jnp.zeros((n_rows + 1, *env[v].shape), env[v].dtype).at[0].set(action(v)) for v in state}
    for k, row in enumerate(split.rows):
        before, after = split.states[k], split.states[k + 1]
        diff_in = [v for v in before if _is_float(v)]
        fixed = {v: env[v] for v in before if not _is_float(v)}

        def step(*values, before=diff_in, after=after, row=row, fixed=fixed):
            local = dict(split.consts)
            local.update(fixed)
            local.update(zip(before, values))
            _run(row.eqns, local)
            return tuple(local[v] for v in after if _is_float(v))

        primals = tuple(env[v] for v in diff_in)
        own_in = tuple(action(v) for v in diff_in)
        batch = tuple(jnp.concatenate([tangents[v], a[None]]) for v, a in zip(diff_in, own_in))
        push = lambda *t, p=primals, f=step: jax.jvp(f, p, t)  # noqa: E731
        outs, pushed = jax.vmap(push, out_axes=(None, 0))(*batch)
        _run(row.eqns, env)  # the primal values, every intermediate included (for the next rows' actions)
        new_tangents = {}
        for v, _, t in zip([v for v in after if _is_float(v)], outs, pushed):
            own = t[-1] - action(v)
            new_tangents[v] = t[:-1].at[k + 1].add(own)
        for v in after:
            if _is_float(v) and v not in new_tangents:
                new_tangents[v] = tangents[v]
        tangents = new_tangents
    out = split.output
    final = tangents[out] if out in tangents else jnp.zeros((n_rows + 1, *env[out].shape))
    return final[0], {row.name: final[k + 1] for k, row in enumerate(split.rows)}
