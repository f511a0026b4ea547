"""Integer translations of channels-last arrays along every spatial axis.

Positive offsets move content towards higher indices, as ``np.roll`` does. Two modes:

* ``roll``: circular; content leaving one side re-enters on the other (a group action: exact inverses and
  composition).
* ``zero``: content leaving the frame is lost and the vacated positions are filled with zeros.

All functions are pure and jittable; offsets may be traced values.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

SHIFT_MODES = ("roll", "zero")


def shift(x: jax.Array, offset: jax.Array, mode: str = "roll") -> jax.Array:
    """Translates a batch ``x`` of shape ``(N, *spatial, C)`` by ``offset`` (one integer per spatial axis)."""
    if mode not in SHIFT_MODES:
        raise ValueError(f"unknown shift mode {mode!r}; choose one of {SHIFT_MODES}")
    offset = jnp.asarray(offset, dtype=jnp.int32)
    rank = x.ndim - 2
    out = x
    for axis in range(rank):
        out = jnp.roll(out, offset[axis], axis=axis + 1)
    if mode == "zero":
        out = out * _inside_mask(x.shape[1:-1], offset).astype(x.dtype)[None, ..., None]
    return out


def _inside_mask(spatial: tuple[int, ...], offset: jax.Array) -> jax.Array:
    """True where the shifted output position came from inside the original frame."""
    mask = jnp.ones(spatial, dtype=bool)
    for axis, size in enumerate(spatial):
        source = jnp.arange(size) - offset[axis]
        keep = (source >= 0) & (source < size)
        shape = [1] * len(spatial)
        shape[axis] = size
        mask = mask & keep.reshape(shape)
    return mask


def shift_many(x: jax.Array, offsets: jax.Array, mode: str = "roll") -> jax.Array:
    """Applies each of ``offsets`` (``(S, rank)``) to the whole batch: returns ``(S, N, *spatial, C)``."""
    return jax.vmap(lambda o: shift(x, o, mode))(offsets)


def shift_each(x: jax.Array, offsets: jax.Array, mode: str = "roll") -> jax.Array:
    """Shifts example i of ``x`` by ``offsets[i]`` (``(N, rank)``), e.g. for augmentation."""
    return jax.vmap(lambda xi, o: shift(xi[None], o, mode)[0])(x, offsets)


def shift_grid(max_shift: int, rank: int, step: int = 1) -> np.ndarray:
    """Every offset in ``[-max_shift, max_shift]`` (by ``step``) along each axis: ``(n_shifts, rank)``.

    Ordered lexicographically by axis, so for rank 2 the row index is ``iy * n + ix`` with offsets (dy, dx).
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    axis_values = list(range(-max_shift, max_shift + 1, step))
    if 0 not in axis_values:
        raise ValueError(f"shift grid with step {step} must contain 0")
    return np.array(list(itertools.product(axis_values, repeat=rank)), dtype=np.int32).reshape(-1, rank)
