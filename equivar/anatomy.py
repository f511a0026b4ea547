"""Model anatomy: per-layer output shapes, parameter counts and receptive fields, three ways.

* **Forward analysis** (the lecture's): walk from the input to the output keeping, per spatial axis, the
  receptive-field size ``r``, the cumulative stride ("jump") ``j`` and the input position where the first
  unit's field starts. A window of ``k`` taps with dilation ``d`` adds ``(d (k - 1)) j`` to ``r``; its stride
  multiplies ``j``; padding moves the start by ``-pad j``.
* **Backward analysis** (the lecture's): start from one unit and grow its interval towards the input, layer
  by layer: ``[lo, hi] -> [lo s - pad, hi s - pad + d (k - 1)]``; no running stride to keep count of. The same
  walk over index *sets* (not intervals) gives the exact set of input positions a unit depends on: holes of
  dilated kernels, positions cut off by zero padding, and wrap-around under circular padding.
* **Empirical**: the support of the gradient of one unit with respect to the input, summed over random
  inputs (max pooling routes a gradient to one position per window, so one input is not enough). Its mean
  absolute value is the effective receptive field of Luo et al. (2016).

Layers after ``flatten`` or a global pooling have no spatial axes: a flattened unit keeps the field of the
position it came from; a dense or globally pooled unit sees the union of all positions before it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen, nnx

from equivar.errors import ConfigError
from equivar.introspect import layer_outputs, split_variables, to_inference, trace_layers
from equivar.layers import (
    Activation,
    Flatten,
    Geometry,
    GlobalPool,
    PolyphaseDownsample,
    geometry_problem,
    is_pointwise_function,
    layer_geometry,
    layer_type,
    padding_before,
)

# How a layer maps positions: windowed (conv, locally connected, pooling), pointwise (activations),
# flatten (positions become units), global (every position feeds every unit: dense layers, global pooling).
WINDOWED, POINTWISE, FLATTEN, GLOBAL = "windowed", "pointwise", "flatten", "global"


@dataclasses.dataclass(frozen=True)
class LayerStep:
    """One layer as receptive-field analysis sees it, with the spatial sizes around it."""

    name: str
    kind: str  # WINDOWED | POINTWISE | FLATTEN | GLOBAL
    layer_type: str
    geometry: Geometry | None
    in_spatial: tuple[int, ...]  # spatial shape the layer reads (the last spatial shape before a collapse)
    out_shape: tuple[int, ...]  # output shape without the batch axis

    def pads(self) -> tuple[int, ...]:
        assert self.geometry is not None
        return tuple(padding_before(self.geometry, n, a) for a, n in enumerate(self.in_spatial))


# Layers that act on each position alone (no spatial mixing), whatever their module type's home.
POINTWISE_TYPES = (Activation, nnx.BatchNorm, nnx.Dropout, nnx.LayerNorm, nnx.RMSNorm, linen.BatchNorm,
                   linen.Dropout, linen.LayerNorm, linen.RMSNorm)
DENSE_TYPES = (nnx.Linear, linen.Dense, GlobalPool)


class NoFixedField(ConfigError):
    """The model's layers cannot be analysed exactly: the reason says why (gradients still measure them)."""


def layer_steps(model: nnx.Module, input_shape: Sequence[int], where: str = "model") -> list[LayerStep]:
    """The model's layers with their mapping kind and the shapes around them (shapes by ``eval_shape``).

    Raises NoFixedField when the layers do not form an exact chain of layers of known geometry."""
    trace = trace_layers(model, input_shape, where)
    if not trace.chained:
        raise NoFixedField(f"{where}: {trace.why_not_chained}")
    spatial = tuple(input_shape[:-1])
    steps = []
    collapsed = False
    for name, layer in trace.layers:
        out_shape = trace.out_shapes[name]
        geometry = layer_geometry(layer)
        if isinstance(layer, PolyphaseDownsample):
            raise NoFixedField(f"layer {name!r} ({type(layer).__name__}) chooses its sampling grid from the data: "
                               "it has no fixed receptive field to analyse")
        if geometry is not None:
            if collapsed:
                raise ValueError(f"layer {name!r}: a windowed layer after flatten has no spatial axes")
            kind = WINDOWED
        elif isinstance(layer, POINTWISE_TYPES) or is_pointwise_function(layer):
            kind = POINTWISE
        elif isinstance(layer, Flatten) and not collapsed:
            kind = FLATTEN
        elif isinstance(layer, DENSE_TYPES) or collapsed:
            kind = GLOBAL
        elif (why := getattr(layer, "no_fixed_field", None)) is not None:  # a layer that says why it has none
            raise NoFixedField(f"{where}: layer {name!r} ({layer_type(layer)}) {why}; receptive fields are "
                               "measured from gradients only")
        elif (problem := geometry_problem(layer)) is not None:
            raise NoFixedField(f"{where}: layer {name!r} ({type(layer).__name__}) has no fixed receptive field to "
                               f"derive: {problem}; receptive fields are measured from gradients only")
        else:
            raise NoFixedField(f"{where}: layer {name!r} is a {layer_type(layer)}, whose geometry equivar does "
                               "not know, so receptive fields are measured from gradients only")
        steps.append(LayerStep(name, kind, layer_type(layer), geometry, spatial, out_shape))
        if kind == WINDOWED:
            spatial = out_shape[:-1]
        collapsed = collapsed or kind in (FLATTEN, GLOBAL)
    return steps


def parameter_counts(layer: nnx.Module) -> tuple[int, int]:
    """(weights, biases) of one layer: parameters named ``bias`` count as biases."""
    weights = biases = 0
    if hasattr(layer, "equivar_parameter_counts"):  # a Linen layer, counted while it was bound
        return layer.equivar_parameter_counts
    if not isinstance(layer, nnx.Module):  # a plain function of a Sequential (nnx.relu)
        return 0, 0
    for path, value in nnx.to_flat_state(nnx.state(layer, nnx.Param)):
        if path[-1] == "bias":
            biases += value[...].size
        else:
            weights += value[...].size
    return weights, biases


@dataclasses.dataclass(frozen=True)
class Field:
    """Receptive field along each spatial axis of the input."""

    size: tuple[int, ...]
    start: tuple[int, ...]  # input position where the first unit's field starts (may be < 0 with padding)
    jump: tuple[int, ...] | None  # input positions between neighbouring units (None: no spatial axes left)


def forward_analysis(steps: Sequence[LayerStep], rank: int) -> list[Field]:
    """Receptive field after each layer by the lecture's forward recursion."""
    r, j, start = [1] * rank, [1] * rank, [0] * rank
    spatial_units = True  # False after a global layer; flatten keeps each unit's own field
    fields = []
    for step in steps:
        if step.kind == WINDOWED:
            g = step.geometry
            assert g is not None  # windowed layers have one
            for a, pad in enumerate(step.pads()):
                r[a] += g.dilation[a] * (g.kernel[a] - 1) * j[a]
                start[a] -= pad * j[a]
                j[a] *= g.stride[a]
        elif step.kind == GLOBAL and spatial_units:
            # The union of the fields of all positions of the last spatial layer.
            for a, n in enumerate(step.in_spatial):
                r[a] += (n - 1) * j[a]
            spatial_units = False
        fields.append(Field(tuple(r), tuple(start), tuple(j) if spatial_units else None))
    return fields


def _walk_back(steps: Sequence[LayerStep], upto: int, top: list[Any], grow, collapse) -> list[Any]:
    """Walks from layer ``upto`` back to the input, transforming one per-axis value with ``grow`` through
    windowed layers and ``collapse`` (all positions of ``in_spatial``) through a flatten-then-global or
    global layer."""
    values = list(top)
    for i in range(upto, -1, -1):
        step = steps[i]
        if step.kind == WINDOWED:
            g = step.geometry
            values = [grow(v, g, a, pad, step.in_spatial[a]) for a, (v, pad) in enumerate(zip(values,
                                                                                          step.pads()))]
        elif step.kind == GLOBAL and not any(s.kind == GLOBAL for s in steps[:i]):
            values = [collapse(n) for n in step.in_spatial]
    return values


def probe_position(steps: Sequence[LayerStep], index: int, where: str = "center") -> tuple[int, ...] | None:
    """The spatial position of the probed unit of layer ``index``: the first or the central position of the
    last spatial map at or before that layer (None: a global unit, which sees every position)."""
    if any(s.kind == GLOBAL for s in steps[:index + 1]):
        return None
    spatial = steps[index].out_shape[:-1]
    for s in steps[:index + 1]:
        if s.kind == FLATTEN:
            spatial = s.in_spatial
    return tuple(0 if where == "first" else (n - 1) // 2 for n in spatial)


def backward_analysis(steps: Sequence[LayerStep], rank: int) -> list[Field]:
    """Receptive field of each layer's first unit by the lecture's backward recursion (intervals)."""
    fields = []
    for i in range(len(steps)):
        position = probe_position(steps, i, "first")
        top = [(0, 0)] * rank if position is None else [(p, p) for p in position]

        def grow(v, g, a, pad, n):
            lo, hi = v
            return lo * g.stride[a] - pad, hi * g.stride[a] - pad + g.dilation[a] * (g.kernel[a] - 1)

        lo_hi = _walk_back(steps, i, top, grow, lambda n: (0, n - 1))
        fields.append(Field(tuple(hi - lo + 1 for lo, hi in lo_hi), tuple(lo for lo, _ in lo_hi), None))
    return fields


def exact_support(steps: Sequence[LayerStep], index: int, input_spatial: Sequence[int],
                  where: str = "center") -> list[np.ndarray]:
    """Per input axis, the sorted input positions the probed unit of layer ``index`` depends on."""
    position = probe_position(steps, index, where)
    if position is None:  # a global unit: the walk back starts from every position of the last spatial map
        position = (0,) * len(input_spatial)

    def grow(v, g, a, pad, n):
        taps = np.arange(g.kernel[a]) * g.dilation[a]
        idx = (v[:, None] * g.stride[a] - pad + taps[None, :]).ravel()
        if g.padding == "CIRCULAR":
            idx = idx % n
        elif g.padding == "REFLECT":  # numpy's and flax's 'reflect': -1 reads 1, n reads n - 2
            idx = np.abs(idx)
            idx = np.where(idx > n - 1, 2 * (n - 1) - idx, idx)
        else:
            idx = idx[(idx >= 0) & (idx < n)]  # zero pads are constants
        return np.unique(idx)

    return _walk_back(steps, index, [np.array([p]) for p in position], grow, lambda n: np.arange(n))


def support_mask(axes: Sequence[np.ndarray], spatial: Sequence[int]) -> np.ndarray:
    """The boolean input mask of a per-axis support (fields are products of per-axis sets)."""
    mask = np.ones((), dtype=bool)
    for idx, n in zip(axes, spatial):
        m = np.zeros(n, dtype=bool)
        m[idx] = True
        mask = np.logical_and.outer(mask, m)
    return mask


def probe_picks(steps: Sequence[LayerStep], input_shape: Sequence[int]) -> dict[str, Any]:
    """Per layer, which output units the gradient maps probe: the central position (all channels) of a
    spatial map, the units of every channel at that position for a flattened map, None (all units) for a
    global one."""
    picks: dict[str, Any] = {}
    for i, step in enumerate(steps):
        position = probe_position(steps, i, "center")
        flatten = next((s for s in steps[:i + 1] if s.kind == FLATTEN), None)
        if position is not None and flatten is not None:  # a flattened map: every channel at that position
            channels = steps[steps.index(flatten) - 1].out_shape[-1] if steps.index(flatten) else input_shape[-1]
            first = int(np.ravel_multi_index((*position, 0), (*flatten.in_spatial, channels)))
            picks[step.name] = (slice(first, first + channels),)
        else:
            picks[step.name] = position
    return picks


def shape_picks(out_shapes: dict[str, tuple[int, ...]], input_shape: Sequence[int]) -> dict[str, Any]:
    """Probes from output shapes alone (models whose layers are not an exact chain): the central position
    of outputs that keep the input's spatial rank, every unit of the others."""
    rank = len(input_shape) - 1
    return {name: tuple((n - 1) // 2 for n in shape[:-1]) if len(shape) == rank + 1 else None
            for name, shape in out_shapes.items()}


def gradient_maps(model: nnx.Module, input_shape: Sequence[int], picks: dict[str, Any],
                  key: jax.Array, n_inputs: int = 64, resample_params: bool = False) -> dict[str, np.ndarray]:
    """Mean |d unit / d input| over ``n_inputs`` standard normal inputs, summed over input channels, for the
    probed units (``picks``) of every layer: the effective receptive field (Luo et al. 2016).

    A probe sums over channels, so a dead channel does not hide it. With ``resample_params`` every input also
    gets its own random parameters (normal, each array at its own scale, biases included): a ReLU that one set
    of weights keeps dead cannot then hide part of the field, so the map's support is the structural
    receptive field.
    """
    graphdef, params, rest = split_variables(to_inference(model))  # no Dropout, BatchNorm's running averages
    key_x, key_p = jax.random.split(key)
    xs = jax.random.normal(key_x, (n_inputs, *input_shape), jnp.float32)
    if resample_params:
        params_axis = 0
        params = jax.vmap(lambda k: _resample(params, k))(jax.random.split(key_p, n_inputs))
    else:
        params_axis = None

    def unit(p: nnx.State, x: jax.Array, name: str) -> jax.Array:
        out = layer_outputs(nnx.merge(graphdef, p, rest), x[None])[name][0]
        return out.sum() if picks[name] is None else out[picks[name]].sum()

    def all_grads(p: nnx.State, x: jax.Array) -> dict[str, jax.Array]:  # one compile for every layer
        return {name: jax.grad(unit, argnums=1)(p, x, name) for name in picks}

    grads = jax.jit(jax.vmap(all_grads, in_axes=(params_axis, 0)))(params, xs)
    return {name: np.asarray(jnp.abs(g).mean(0).sum(-1)) for name, g in grads.items()}


def _resample(params: nnx.State, key: jax.Array) -> nnx.State:
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    new = []
    for leaf, k in zip(leaves, keys):
        scale = jnp.std(leaf) if leaf.size > 1 else jnp.abs(leaf).sum()
        new.append(jax.random.normal(k, leaf.shape, leaf.dtype) * jnp.where(scale > 0, scale, 0.1))
    return jax.tree.unflatten(treedef, new)


def anatomy(model: nnx.Module, input_shape: Sequence[int], key: jax.Array | None = None,
            n_inputs: int = 64, where: str = "model") -> dict[str, Any]:
    """The whole table for one model: per layer shapes, parameters, and fields three ways.

    With ``key`` the empirical field (the gradient's support over inputs and resampled parameters) and the
    effective-receptive-field maps (this model's parameters) are included. A model whose layers are not an
    exact chain of known layers (``analytic_unavailable`` says why) gets shapes, parameters and the
    empirical fields only.
    """
    input_shape = tuple(int(n) for n in input_shape)
    spatial, rank = input_shape[:-1], len(input_shape) - 1
    trace = trace_layers(model, input_shape, where)
    try:
        steps = layer_steps(model, input_shape, where)
        why_not = None
    except NoFixedField as err:
        steps, why_not = None, str(err)
    picks = probe_picks(steps, input_shape) if steps else shape_picks(trace.out_shapes, input_shape)
    maps = gradient_maps(model, input_shape, picks, key, n_inputs) if key is not None else {}
    supports = gradient_maps(model, input_shape, picks, key, n_inputs, resample_params=True) \
        if key is not None else {}
    layers = dict(trace.layers)
    forward = forward_analysis(steps, rank) if steps else None
    backward = backward_analysis(steps, rank) if steps else None
    rows = []
    for i, (name, layer) in enumerate(trace.layers):
        weights, biases = parameter_counts(layers[name])
        row: dict[str, Any] = {
            "layer": name,
            "type": layer_type(layer),
            "output_shape": list(trace.out_shapes[name]),
            "weights": weights,
            "biases": biases,
            "params": weights + biases,
        }
        if steps and forward and backward:
            support = exact_support(steps, i, spatial, "center")
            row |= {
                "rf_forward": list(forward[i].size),
                "rf_backward": list(backward[i].size),
                "start_forward": list(forward[i].start),
                "start_backward": list(backward[i].start),
                "jump": None if forward[i].jump is None else list(forward[i].jump or ()),
                "support_size": [int(len(s)) for s in support],
                "support_range": [[int(s.min()), int(s.max())] for s in support],
            }
            row["forward_equals_backward"] = (row["rf_forward"] == row["rf_backward"]
                                              and row["start_forward"] == row["start_backward"])
        if maps:
            empirical = supports[name] > 0
            row["empirical_support_size"] = [int(np.any(empirical, axis=tuple(b for b in range(rank) if b != a))
                                                 .sum()) for a in range(rank)]
            if steps:
                row["empirical_equals_analytic"] = bool(np.array_equal(empirical, support_mask(support, spatial)))
        rows.append(row)
    total = sum(int(np.size(v)) for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    result = {
        "input_shape": list(input_shape),
        "layers": rows,
        "total_params": sum(r["params"] for r in rows),
        "model_param_total": total,
    }
    if steps:
        result["forward_equals_backward"] = all(r["forward_equals_backward"] for r in rows)
    else:
        result["analytic_unavailable"] = why_not
    if maps:
        if steps:
            result["empirical_equals_analytic"] = all(r["empirical_equals_analytic"] for r in rows)
        result["gradient_maps"] = {name: _normalised(m) for name, m in maps.items()}
    return result


def _normalised(m: np.ndarray) -> list:
    peak = float(m.max())
    return np.round(m / peak if peak > 0 else m, 5).tolist()


def receptive_field_of(model: nnx.Module, input_shape: Sequence[int]) -> dict[str, list[int]]:
    """Forward-analysis field size per layer name (a convenience for experiments)."""
    steps = layer_steps(model, input_shape)
    return {s.name: list(f.size) for s, f in zip(steps, forward_analysis(steps, len(input_shape) - 1))}


__all__ = ["anatomy", "layer_steps", "forward_analysis", "backward_analysis", "exact_support",
           "gradient_maps", "support_mask", "parameter_counts", "receptive_field_of"]
