"""Rank-generic building blocks: pooling, flatten, activations and their geometry.

Every layer works on channels-last arrays ``(N, *spatial, C)`` with any number of spatial axes, so 1D
sequences and 2D images share one code path. Each layer also reports its geometry (kernel, stride, dilation,
padding per spatial axis), which the models use to size their dense layers and which receptive-field
analysis reads.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

PADDINGS = ("VALID", "SAME", "CIRCULAR")
POOL_KINDS = ("max", "mean")


@dataclasses.dataclass(frozen=True)
class Geometry:
    """How one layer maps input positions to output positions along each spatial axis."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: str  # one of PADDINGS

    def output_spatial(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Spatial output shape for a given spatial input shape (0 or less means the layer is impossible)."""
        out = []
        for size, k, s, d in zip(spatial, self.kernel, self.stride, self.dilation):
            if self.padding == "VALID":
                span = d * (k - 1) + 1
                out.append((size - span) // s + 1 if size >= span else 0)
            else:  # SAME and CIRCULAR keep ceil(size / stride) positions
                out.append(math.ceil(size / s))
        return tuple(out)


def as_tuple(value: int | Sequence[int], rank: int) -> tuple[int, ...]:
    """Broadcasts an int to a per-axis tuple, or checks a sequence has one entry per spatial axis."""
    if isinstance(value, int):
        return (value,) * rank
    value = tuple(int(v) for v in value)
    if len(value) != rank:
        raise ValueError(f"expected {rank} values (one per spatial axis), got {value}")
    return value


def conv_geometry(conv: nnx.Conv) -> Geometry:
    rank = len(conv.kernel_size)
    return Geometry(
        kernel=tuple(conv.kernel_size),
        stride=as_tuple(conv.strides, rank),
        dilation=as_tuple(conv.kernel_dilation, rank),
        padding=str(conv.padding),
    )


def _pad_for_window(x: jax.Array, window: tuple[int, ...], padding: str, fill: float) -> jax.Array:
    """Pads spatial axes so a 'SAME'/'CIRCULAR' window of stride 1 keeps every position."""
    pads = [(0, 0)] + [((w - 1) // 2, w // 2) for w in window] + [(0, 0)]
    if padding == "CIRCULAR":
        return jnp.pad(x, pads, mode="wrap")
    return jnp.pad(x, pads, constant_values=fill)


class Pool(nnx.Module):
    """Max or mean pooling over a window with a stride, on any number of spatial axes.

    The common case (window == stride, no padding) is written as crop + reshape + reduce: on CPU this is
    about twice as fast to differentiate as ``lax.reduce_window``, whose max backward pass dominates a
    LeNet step. Other cases fall back to ``lax.reduce_window``.
    """

    def __init__(self, kind: str, window: Sequence[int], stride: Sequence[int], padding: str = "VALID"):
        if kind not in POOL_KINDS:
            raise ValueError(f"unknown pooling kind {kind!r}; choose one of {POOL_KINDS}")
        if padding not in PADDINGS:
            raise ValueError(f"unknown pooling padding {padding!r}; choose one of {PADDINGS}")
        self.kind = kind
        self.window = tuple(window)
        self.stride = tuple(stride)
        self.padding = padding

    @property
    def geometry(self) -> Geometry:
        return Geometry(self.window, self.stride, (1,) * len(self.window), self.padding)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.window == self.stride and self.padding == "VALID":
            return self._pool_by_reshape(x)
        fill = -jnp.inf if self.kind == "max" else 0.0
        if self.padding != "VALID":
            x = _pad_for_window(x, self.window, self.padding, fill)
        dims = (1, *self.window, 1)
        strides = (1, *self.stride, 1)
        if self.kind == "max":
            return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, strides, "VALID")
        total = jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, "VALID")
        return total / math.prod(self.window)

    def _pool_by_reshape(self, x: jax.Array) -> jax.Array:
        spatial = x.shape[1:-1]
        kept = tuple((n // w) * w for n, w in zip(spatial, self.window))
        x = x[(slice(None), *(slice(0, k) for k in kept), slice(None))]
        split_shape = [x.shape[0]]
        for k, w in zip(kept, self.window):
            split_shape += [k // w, w]
        x = x.reshape(*split_shape, x.shape[-1])
        window_axes = tuple(2 + 2 * i for i in range(len(kept)))
        return x.max(axis=window_axes) if self.kind == "max" else x.mean(axis=window_axes)


class GlobalPool(nnx.Module):
    """Pools every spatial position into one vector: ``(N, *spatial, C) -> (N, C)``."""

    def __init__(self, kind: str):
        if kind not in POOL_KINDS:
            raise ValueError(f"unknown global pooling kind {kind!r}; choose one of {POOL_KINDS}")
        self.kind = kind

    def __call__(self, x: jax.Array) -> jax.Array:
        axes = tuple(range(1, x.ndim - 1))
        return x.max(axis=axes) if self.kind == "max" else x.mean(axis=axes)


class Flatten(nnx.Module):
    def __call__(self, x: jax.Array) -> jax.Array:
        return x.reshape(x.shape[0], -1)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
}


class Activation(nnx.Module):
    def __init__(self, name: str):
        if name not in ACTIVATIONS:
            raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
        self.name = name

    def __call__(self, x: jax.Array) -> jax.Array:
        return ACTIVATIONS[self.name](x)
