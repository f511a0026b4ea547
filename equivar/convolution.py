"""Convolution from its definition, next to the libraries people use, and as a fully connected layer.

* :func:`conv1d_loop` is the lecture's problem 2: true convolution (the kernel is flipped), one loop over
  output positions, no padding. :func:`conv1d_vectorised` is the same in JAX without a loop.
* :func:`correlate_definition` is the multi-channel cross-correlation with bias written from the lecture's
  scalar formula, ``q[i, g] = sum_{f, u} p[i + u, f] w[u, f, g] + b[g]``, for any number of spatial axes.
* :func:`conv_matrix` builds the matrix of a convolution layer: a fully connected layer whose weights are zero
  outside the kernel's window (Toeplitz for zero padding, circulant for circular). ``M @ x.ravel()`` equals
  the convolution: the lecture's "convolution is a fully connected layer with all other weights zeroed".
* :func:`classify` tells, from outputs alone, whether an implementation computes convolution or
  cross-correlation, where its output is aligned, and which border mode fills the outside.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from equivar.layers import Geometry, padding_before


def conv1d_loop(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """True 1D convolution, 'valid' part only, with one loop over output positions (lecture, problem 2)."""
    n, k = x.shape[0], w.shape[0]
    out = np.zeros(n - k + 1, dtype=np.result_type(x, w))
    flipped = np.flip(w)
    for i in range(n - k + 1):
        out[i] = np.sum(x[i:i + k] * flipped)
    return out


def conv1d_vectorised(x: jax.Array, w: jax.Array) -> jax.Array:
    """The same without a loop: gather every window with index arithmetic, then one matrix-vector product."""
    n, k = x.shape[0], w.shape[0]
    windows = x[jnp.arange(n - k + 1)[:, None] + jnp.arange(k)[None, :]]
    return windows @ w[::-1]


def correlate_definition(p: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Multi-channel cross-correlation with bias from the scalar formula, 'valid' part, any spatial rank.

    Args:
        p: input ``(*spatial, F)``.
        w: kernel ``(*kernel, F, G)``.
        b: bias ``(G,)`` or None.
    Returns:
        ``(*out_spatial, G)`` with ``out = spatial - kernel + 1`` per axis.
    """
    kernel = w.shape[:-2]
    out_spatial = tuple(n - k + 1 for n, k in zip(p.shape[:-1], kernel))
    q = np.zeros((*out_spatial, w.shape[-1]), dtype=np.float64)
    for offset in itertools.product(*(range(k) for k in kernel)):  # sum over kernel offsets u
        window = p[tuple(slice(u, u + o) for u, o in zip(offset, out_spatial))]
        q += window.astype(np.float64) @ w[offset].astype(np.float64)  # sum over input maps f
    if b is not None:
        q += b
    return q


def conv_matrix(w: np.ndarray, in_spatial: Sequence[int], padding: str = "VALID",
                stride: Sequence[int] | None = None, dilation: Sequence[int] | None = None) -> np.ndarray:
    """The matrix ``M`` of a convolution layer (cross-correlation, as deep-learning layers compute it).

    ``M @ x.ravel()`` equals the layer's output ravelled, for channels-last ``x`` of shape
    ``(*in_spatial, F)`` and a kernel ``w`` of shape ``(*kernel, F, G)``; padding as flax pads (VALID, SAME
    zero padding, CIRCULAR). Entries outside every window stay exactly zero.
    """
    kernel = w.shape[:-2]
    rank = len(kernel)
    f_in, g_out = w.shape[-2:]
    geometry = Geometry(tuple(kernel), tuple(stride or (1,) * rank), tuple(dilation or (1,) * rank), padding)
    out_spatial = geometry.output_spatial(in_spatial)
    pads = [padding_before(geometry, n, a) for a, n in enumerate(in_spatial)]
    m = np.zeros((math.prod(out_spatial) * g_out, math.prod(in_spatial) * f_in), dtype=w.dtype)
    for out_pos in itertools.product(*(range(o) for o in out_spatial)):
        row = np.ravel_multi_index(out_pos, out_spatial) * g_out
        for tap in itertools.product(*(range(k) for k in kernel)):
            pos = [o * s - p + t * d for o, s, p, t, d in
                   zip(out_pos, geometry.stride, pads, tap, geometry.dilation)]
            if padding == "CIRCULAR":
                pos = [q % n for q, n in zip(pos, in_spatial)]
            elif any(q < 0 or q >= n for q, n in zip(pos, in_spatial)):
                continue  # a zero-padded position: no weight
            col = np.ravel_multi_index(tuple(pos), tuple(in_spatial)) * f_in
            m[row:row + g_out, col:col + f_in] += w[tap].T
    return m


BORDER_MODES: dict[str, Any] = {  # name used in tables -> numpy.pad mode
    "zeros": "constant",
    "nearest (edge)": "edge",
    "reflect (edge sample repeated)": "symmetric",
    "mirror (edge sample not repeated)": "reflect",
    "wrap (circular)": "wrap",
}


def valid_correlate(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Reference 1D cross-correlation, 'valid' part (convolution: pass the flipped kernel)."""
    k = len(w)
    return np.array([np.dot(x[i:i + k], w) for i in range(len(x) - k + 1)])


def classify(fn: Callable[[np.ndarray, np.ndarray], Any], n: int = 17, k: int = 4,
             seed: int = 0, atol: float = 1e-4) -> dict[str, object]:
    """What a 1D implementation computes, found from its outputs on a random input and asymmetric kernel.

    Returns the operation (``convolution``, ``cross-correlation`` or ``other``), the output length, the offset
    of its 'valid' part, and which border modes reproduce the positions outside that part.
    """
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    w = rng.normal(size=k)
    out = np.asarray(fn(x, w), dtype=np.float64).ravel()
    result: dict[str, object] = {"output_length": int(out.size), "operation": "other", "valid_offset": None,
                                 "border": None}
    for operation, kernel in (("convolution", w[::-1]), ("cross-correlation", w)):
        valid = valid_correlate(x, kernel)
        for offset in range(out.size - valid.size + 1):
            if np.allclose(out[offset:offset + valid.size], valid, atol=atol):
                result.update(operation=operation, valid_offset=offset)
                left, right = offset, out.size - offset - valid.size
                if left == right == 0:
                    result["border"] = "none (valid part only)"
                else:
                    fits = [name for name, mode in BORDER_MODES.items()
                            if np.allclose(valid_correlate(np.pad(x, (left, right), mode=mode), kernel), out,
                                           atol=atol)]
                    result["border"] = ", ".join(fits) if fits else "unrecognised"
                return result
    return result
