"""Lie derivatives of a model's output under continuous transformations of its input, exactly, with ``jax.jvp``.

For a one-parameter family of input transformations ``T_t`` (translation by ``t`` pixels along an axis,
rotation by ``t`` radians or scaling by ``e^t`` about the centre), the Lie derivative of a classifier ``f`` is
``L f(x) = d/dt f(T_t x) at t = 0`` (Gruver et al. 2023); an invariant ``f`` has ``L f = 0``. The
transformation acts on a band-limited, periodic reading of the image (its Fourier interpolant), so the
input's tangent is exact: ``A x = -v . grad x`` with ``v`` the transformation's vector field (translation:
``v = e_axis``; rotation: ``v(p) = J (p - c)``; scaling: ``v(p) = p - c``) and ``grad x`` the spectral
gradient. For translations this is the derivative of ``equivar.transforms.fourier_shift`` at 0 (its Nyquist
bin has zero derivative). ``L f(x)`` is then one ``jax.jvp`` of ``f`` at ``x`` along ``A x``.

Layer by layer (translations): with ``h_i = g_i(h_{i-1})`` and ``A_i`` the translation's action on layer
``i``'s output (``-(1/J_i) d/dp`` for a spatial map with cumulative stride ``J_i``; 0 after flatten or global
pooling, where the output should be invariant), layer ``i``'s own Lie derivative is
``D_i = J_{g_i}(A_{i-1} h_{i-1}) - A_i h_i`` (zero for an equivariant layer) and its contribution to the output
is ``C_i = J_{g_{n}...g_{i+1}}(D_i)``. The contributions sum to ``L f(x)`` exactly (a telescoping sum).

Units: translation, per pixel (position); rotation, per radian; scaling, per unit of log-scale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

GENERATORS_1D = ("translate_x",)
GENERATORS_2D = ("translate_y", "translate_x", "rotate", "scale")


def generators(rank: int) -> tuple[str, ...]:
    """The transformations measured on data of this spatial rank."""
    return GENERATORS_2D if rank == 2 else GENERATORS_1D if rank == 1 else ()


def spectral_derivative(h: jax.Array, axis: int) -> jax.Array:
    """``d h / d p`` along spatial ``axis`` (0-based over the spatial axes) of the periodic, band-limited
    interpolant of ``h`` (``(N, *spatial, C)``); the Nyquist bin of an even length has zero derivative."""
    a = axis + 1
    n = h.shape[a]
    spectrum = jnp.fft.rfft(h, axis=a)
    k = jnp.arange(spectrum.shape[a])
    factor = 2j * jnp.pi * k / n
    if n % 2 == 0:
        factor = factor.at[-1].set(0)
    shape = [1] * h.ndim
    shape[a] = -1
    return jnp.fft.irfft(spectrum * factor.reshape(shape), n=n, axis=a).astype(h.dtype)


def input_tangent(x: jax.Array, generator: str) -> jax.Array:
    """``A x = d/dt T_t x at t = 0`` for ``x`` of shape ``(N, *spatial, C)``."""
    rank = x.ndim - 2
    if generator.startswith("translate_"):
        axis = {"translate_x": rank - 1, "translate_y": 0}[generator]
        return -spectral_derivative(x, axis)
    if rank != 2:
        raise ValueError(f"{generator} is defined for 2D inputs")
    dy, dx = spectral_derivative(x, 0), spectral_derivative(x, 1)
    h, w = x.shape[1:3]
    py = (jnp.arange(h) - (h - 1) / 2)[:, None, None]
    px = (jnp.arange(w) - (w - 1) / 2)[None, :, None]
    if generator == "rotate":  # v(p) = (-p_x, p_y) in (row, column) order: counter-clockwise on screen
        vy, vx = -px, py
    elif generator == "scale":
        vy, vx = py, px
    else:
        raise ValueError(f"unknown generator {generator!r}; choose one of {GENERATORS_2D}")
    return -(vy * dy + vx * dx)


def lie_derivative(f: Callable[[jax.Array], jax.Array], x: jax.Array, generator: str) -> jax.Array:
    """``d/dt f(T_t x) at t = 0``, exactly (one ``jax.jvp``)."""
    return jax.jvp(f, (x,), (input_tangent(x, generator),))[1]


def _translation_action(h: jax.Array, axis: int, jump: Sequence[int] | None, rank: int) -> jax.Array:
    """``A_i h``: how a translation by one input pixel moves layer output ``h`` (zero when the layer has no
    spatial axes left: its output is meant to be invariant)."""
    if jump is None or h.ndim != rank + 2:
        return jnp.zeros_like(h)
    return -spectral_derivative(h, axis) / jump[axis]


def layer_contributions(layers: Sequence[tuple[str, Callable[[jax.Array], jax.Array]]],
                        jumps: Sequence[Sequence[int] | None], x: jax.Array, axis: int
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The translation Lie derivative of the chain ``layers`` (applied in order) along spatial ``axis`` and
    each layer's contribution to it (see the module docstring); the contributions sum to the first.

    Args:
        layers: ``(name, fn)`` in order; the chain's output is the last layer's.
        jumps: per layer, its output's cumulative stride per spatial axis (None: no spatial axes).
        x: inputs ``(N, *spatial, C)``.
        axis: the spatial axis translated along (0-based).
    """
    rank = x.ndim - 2
    outputs, h = [], x
    for _, fn in layers:
        h = fn(h)
        outputs.append(h)
    total = jax.jvp(lambda v: _chain(layers, 0, v), (x,), (-spectral_derivative(x, axis),))[1]
    contributions = {}
    previous, previous_action = x, -spectral_derivative(x, axis)
    for i, (name, fn) in enumerate(layers):
        pushed = jax.jvp(fn, (previous,), (previous_action,))[1]
        action = _translation_action(outputs[i], axis, jumps[i], rank)
        own = pushed - action  # this layer's own Lie derivative: zero when it is equivariant
        contributions[name] = jax.jvp(lambda v, i=i: _chain(layers, i + 1, v), (outputs[i],), (own,))[1]
        previous, previous_action = outputs[i], action
    return total, contributions


def _chain(layers: Sequence[tuple[str, Callable]], start: int, h: jax.Array) -> jax.Array:
    for _, fn in layers[start:]:
        h = fn(h)
    return h
