"""Layer-wise equivariance and invariance errors of a model's features under shifts and other transforms.

For a layer with cumulative stride ("jump") ``J`` and an input shift ``s`` that ``J`` divides, equivariance
means ``f(T_s x) = T_{s/J} f(x)``; the relative error is ``||f(T_s x) - T_{s/J} f(x)|| / ||f(x)||`` per
example (norms over positions and channels), averaged over examples. Shifts ``J`` does not divide cannot
commute exactly; for them the target is the better of the two nearest grid shifts. Layers without spatial
axes (after flatten or global pooling) are measured for invariance, ``||f(T_s x) - f(x)|| / ||f(x)||``.

The interior error counts only output positions whose receptive field, before and after the shift, lies
inside the input: there no padding, wrap-around or lost content can reach the unit, so convolution and
pooling commute with the shift exactly whatever the padding. The gap between the full and the interior error
is the border's share.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from equivar.anatomy import FLATTEN, GLOBAL, Field, NoFixedField, forward_analysis, layer_steps
from equivar.introspect import layer_outputs, trace_layers
from equivar.layers import LayerStack, LocallyConnected, layer_geometry
from equivar.transforms import SUBPIXEL_MODES
from equivar.transforms import shift as shift_array

_TINY = 1e-30


def relative_error(value: jax.Array, target: jax.Array, reference: jax.Array,
                   mask: jax.Array | None = None) -> jax.Array:
    """Per example ``||value - target|| / ||reference||`` over all non-batch axes (restricted to ``mask``)."""
    diff = jnp.square(value - target)
    ref = jnp.square(reference)
    if mask is not None:
        diff, ref = diff * mask, ref * mask
    axes = tuple(range(1, value.ndim))
    return jnp.sqrt(diff.sum(axes)) / jnp.sqrt(jnp.maximum(ref.sum(axes), _TINY))


def interior_mask(field: Field, in_spatial: Sequence[int], out_spatial: Sequence[int],
                  grid_shift: Sequence[float], jump: Sequence[int]) -> np.ndarray:
    """Output positions ``u`` whose field, at ``u`` and at ``u - s/J``, lies inside the input (``s`` = grid
    shift x jump): the units no border can reach under this shift."""
    mask = np.ones((), dtype=bool)
    for a, (n_in, n_out) in enumerate(zip(in_spatial, out_spatial)):
        u = np.arange(n_out)
        lo = field.start[a] + u * jump[a]
        hi = lo + field.size[a] - 1
        s = grid_shift[a] * jump[a]
        ok = (lo >= 0) & (hi <= n_in - 1) & (lo - s >= 0) & (hi - s <= n_in - 1)
        ok &= (u - grid_shift[a] >= 0) & (u - grid_shift[a] < n_out)
        mask = np.logical_and.outer(mask, ok)
    return mask


def _shift_vectors(max_shift: float, rank: int, step: float = 1) -> list[tuple[float, ...]]:
    """Shifts 0..max_shift by ``step`` along every axis at once (the diagonal in 2D)."""
    values = [i * step for i in range(int(round(max_shift / step)) + 1)]
    return [(int(v) if float(v).is_integer() and float(step).is_integer() else float(v),) * rank for v in values]


def layer_geometry_of(model: nnx.Module, input_shape: tuple[int, ...]
                      ) -> tuple[list[str], dict[str, tuple[int, ...] | None], dict[str, Field | None]]:
    """Layer names in call order; per layer its cumulative stride ("jump", None after a collapse) and its
    receptive field (None where the model's layers are not an exact chain of known layers).

    Without an exact analysis the jump is the product of every layer's stride: the stride of a layer of known
    geometry (``nnx.Conv``, equivar's windowed layers), else ``round(its input size / its output size)``, and
    ``round(previous output size / this input size)`` for functional downsampling between two layers."""
    rank = len(input_shape) - 1
    try:
        steps = layer_steps(model, input_shape)
    except NoFixedField:
        trace = trace_layers(model, input_shape)
        names = [n for n, _ in trace.layers]
        jumps: dict[str, tuple[int, ...] | None] = {}
        collapsed = False
        jump, previous = [1] * rank, tuple(input_shape)
        for n, module in trace.layers:
            shape, seen = trace.out_shapes[n], trace.in_shapes[n]
            collapsed = collapsed or len(shape) != rank + 1
            if collapsed:
                jumps[n] = None
                continue
            if seen is not None and len(seen) == rank + 1:  # functional downsampling since the last layer
                jump = [j * max(1, round(p / s)) for j, p, s in zip(jump, previous[:-1], seen[:-1])]
            geometry = layer_geometry(module)
            own = geometry.stride if geometry is not None else tuple(
                max(1, round(i / o)) for i, o in zip((seen or previous)[:-1], shape[:-1]))
            jump = [j * s for j, s in zip(jump, own)]
            jumps[n], previous = tuple(jump), shape
        return names, jumps, {n: None for n in names}
    fields = forward_analysis(steps, rank)
    collapsed, jumps = False, {}
    for step, field in zip(steps, fields):
        collapsed = collapsed or step.kind in (FLATTEN, GLOBAL)
        jumps[step.name] = None if collapsed else field.jump
    return [s.name for s in steps], jumps, {s.name: f for s, f in zip(steps, fields)}


def layer_shift_errors(model: nnx.Module, x: jax.Array, max_shift: float, mode: str, grid: bool = False,
                       step: float = 1) -> dict[str, dict[str, Any]]:
    """Per layer: error per shift along the diagonal ``(s, ..., s)`` (full, and interior where the receptive
    fields are known), whether the layer's jump divides the shift, and the layer's role (``equivariance`` for
    spatial maps, ``invariance`` after a collapse). With ``grid`` (2D inputs), also ``grid``: the full error
    at every ``(dy, dx)`` in ``0..max_shift`` on both axes, rows indexed by dy. Sub-pixel modes (``fourier``,
    ``bilinear-*``) take fractional shifts (``step``); their target moves each map by exactly ``s / J``
    (a sub-pixel shift of the map itself), and no interior error is defined."""
    input_shape = tuple(x.shape[1:])
    rank = len(input_shape) - 1
    names, jumps, fields = layer_geometry_of(model, input_shape)
    outputs = jax.jit(lambda v: layer_outputs(model, v))
    feats_x = outputs(x)
    cache: dict[tuple[float, ...], dict[str, jax.Array]] = {}

    def error_at(name: str, s: tuple[float, ...]) -> tuple[float, float, bool]:
        """(full, interior, divisible) of layer ``name`` at input shift ``s``."""
        if s not in cache:
            cache[s] = outputs(shift_array(x, s, mode))
        fx, f_shifted, jump = feats_x[name], cache[s][name], jumps[name]
        if jump is None:
            return float(relative_error(f_shifted, fx, fx).mean()), float("nan"), True
        if mode in SUBPIXEL_MODES:
            candidates = [tuple(v / j for v, j in zip(s, jump))]
        else:
            candidates = [tuple(g) for g in itertools.product(*({v // j, -(-v // j)} for v, j in zip(s, jump)))]
        best_full, best_interior = np.inf, float("nan")
        for g in candidates:
            target = shift_array(fx, g, mode)
            full = float(relative_error(f_shifted, target, fx).mean())
            interior = float("nan")
            field = fields[name]
            if field is not None and mode not in SUBPIXEL_MODES:
                mask = interior_mask(field, input_shape[:-1], fx.shape[1:-1], g, jump)
                m = jnp.asarray(mask, fx.dtype)[None, ..., None]
                interior = float(relative_error(f_shifted, target, fx, m).mean()) if mask.any() else interior
            if full < best_full:
                best_full, best_interior = full, interior
        return best_full, best_interior, all(float(v / j).is_integer() for v, j in zip(s, jump))

    shifts = _shift_vectors(max_shift, rank, step)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        rows: dict[str, Any] = {"shift": [s[0] for s in shifts], "full": [], "interior": [], "divisible": []}
        for s in shifts:
            full, interior, divisible = error_at(name, s)
            rows["full"].append(full)
            rows["divisible"].append(divisible)
            if jumps[name] is not None and fields[name] is not None and mode not in SUBPIXEL_MODES:
                rows["interior"].append(interior)
        if jumps[name] is None:
            rows["role"] = "invariance"
        else:
            rows["role"] = "equivariance"
            rows["jump"] = list(jumps[name] or ())
        if grid and rank == 2:
            side = int(max_shift) + 1
            rows["grid"] = [[error_at(name, (dy, dx))[0] for dx in range(side)] for dy in range(side)]
        out[name] = rows
    return out


def spatial_features(model: nnx.Module, x: jax.Array) -> dict[str, jax.Array]:
    """The outputs of the layers that keep the input's spatial rank, up to the first that does not. Layer
    stacks run layer by layer, stopping before a locally connected layer (it only takes its own input
    size), so inputs of other sizes work too."""
    out = {}
    if isinstance(model, LayerStack):
        for name, layer in model.layers():
            if isinstance(layer, LocallyConnected):
                break
            y = layer(x)
            if y.ndim != x.ndim:
                break
            out[name] = x = y
        return out
    for name, y in layer_outputs(model, x).items():
        if y.ndim != x.ndim:
            break
        out[name] = y
    return out


def _upsample(x: jax.Array, factor: int = 2) -> jax.Array:
    for axis in range(1, x.ndim - 1):
        x = jnp.repeat(x, factor, axis=axis)
    return x


def _crop_common(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    shape = [min(p, q) for p, q in zip(a.shape, b.shape)]
    idx = tuple(slice(0, n) for n in shape)
    return a[idx], b[idx]


TRANSFORMS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "rotate90": lambda x: jnp.rot90(x, k=1, axes=(1, 2)),  # 2D: a quarter turn of the image plane
    "flip": lambda x: jnp.flip(x, axis=tuple(range(1, x.ndim - 1))),  # 1D: reversal (2D: point reflection)
    "scale2": _upsample,  # nearest-neighbour magnification by 2
}


def accepts(fn: Callable[[jax.Array], Any], x: jax.Array) -> bool:
    """Whether ``fn`` runs on an input of ``x``'s shape, checked abstractly (no computation). A model refuses a
    shape it was not built for in its own way (NNX: TypeError or ValueError from a dense layer; Linen:
    ``ScopeParamShapeError``; a user's own check: anything), so any exception while tracing means no."""
    try:
        jax.eval_shape(fn, jax.ShapeDtypeStruct(x.shape, x.dtype))
    except Exception:  # noqa: BLE001  (see above: the refusal's type is the model's own)
        return False
    return True


def transform_errors(model: nnx.Module, x: jax.Array, name: str) -> dict[str, float]:
    """``||f(R x) - R f(x)|| / ||f(x)||`` per spatial layer for a transform R that convolutions do NOT
    commute with (rotation, reflection, scaling); outputs are cropped to a common size where R changes it."""
    transform = TRANSFORMS[name]
    base = spatial_features(model, x)
    if not accepts(lambda v: spatial_features(model, v), transform(x)):
        return {}  # a model that only takes its own input size (e.g. dense layers inside)
    moved = spatial_features(model, transform(x))
    errors = {}
    for layer, fx in base.items():
        if layer not in moved:
            break
        target, value = transform(fx), moved[layer]
        if name == "scale2":
            value, target = _crop_common(value, target)
            reference = target
        else:
            reference = fx
        errors[layer] = float(relative_error(value, target, reference).mean())
    return errors
