"""Alias-free layers: every map stays band-limited, so the network commutes with sub-pixel (Fourier) shifts.

After Michaeli, Michaeli & Soudry, "Alias-Free Convnets: Fractional Shift Invariance via Polynomial
Activations" (CVPR 2023). A signal sampled on ``n`` points whose spectrum is zero at and above the Nyquist bin
is the samples of one periodic band-limited function; shifting that function by any real ``s`` is
``equivar.transforms.fourier_shift``. A layer is *alias-free* when it maps such signals to such signals and
commutes with every such shift:

* a circular convolution (and its bias, and any per-channel scale) multiplies the spectrum: it commutes;
* ``BandLimit`` zeros the Nyquist bin of an even length: the input must be strictly below Nyquist, because a
  real band-limited shift cannot move the Nyquist component (it is a cosine whose phase a real signal cannot
  carry);
* ``PolyActivation``: a polynomial of degree 2 at twice the sampling rate. The square of a signal below
  ``n / 2`` has frequencies below ``n``; upsampled ideally to ``2n`` points it is computed without aliasing,
  then ideally low-passed back to ``n`` points (the new Nyquist bin zeroed, not kept). ReLU has an infinite
  spectrum and cannot be made exact this way;
* ``FourierDownsample``: an ideal low-pass to the new band (its Nyquist bin zeroed), then every second sample;
* ``RMSNorm`` divides each example by its root mean square over positions and channels, which a circular
  shift of a band-limited signal leaves unchanged (Parseval), and scales each channel;
* the mean over positions is the DC coefficient: invariant.

Every operation works on channels-last arrays ``(N, *spatial, C)`` of any spatial rank, axis by axis: each
resampling is the linear map of a real FFT, an edited spectrum and the inverse FFT, applied as a small real
matrix (float32 at least, as ``fourier_shift``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def _spatial_axes(x: jax.Array) -> range:
    return range(1, x.ndim - 1)


def _compute_dtype(x: jax.Array) -> jnp.dtype:
    return jnp.result_type(x.dtype, jnp.float32)


def band_limit(x: jax.Array) -> jax.Array:
    """``x`` with the Nyquist bin of every even-length spatial axis set to zero (strictly below Nyquist)."""
    return _resample(x, "band_limit", 1)


def fourier_upsample(x: jax.Array, factor: int = 2) -> jax.Array:
    """Ideal (band-limited) interpolation to ``factor`` times as many samples on every spatial axis: the
    spectrum is kept, the new bins are zeros. Exact for inputs strictly below Nyquist."""
    return _resample(x, "up", factor)


def fourier_downsample(x: jax.Array, factor: int = 2) -> jax.Array:
    """An ideal low-pass to ``1 / factor`` of the band (the new Nyquist bin zeroed), then every ``factor``-th
    sample, on every spatial axis (each length must be a multiple of ``factor``)."""
    for n in x.shape[1:-1]:
        if n % factor:
            raise ValueError(f"ideal downsampling by {factor} needs spatial sizes divisible by {factor}, got "
                             f"{x.shape[1:-1]}")
    return _resample(x, "down", factor)


def _resample(x: jax.Array, kind: str, factor: int) -> jax.Array:
    """One of the ideal resamplings, axis by axis, as a small real matrix per axis (:func:`resampling_matrix`).

    The same linear map as rfft -> edit the spectrum -> irfft, computed once in float64; applied as a matrix
    product it is the same numbers to float32 rounding and, on CPU, an alias-free convnet trains 2x faster than
    through XLA's FFTs, whose small batched transforms and their gradients run far below the matmul rate.
    ``HIGHEST`` precision keeps the float32 products exact on accelerators that would round them to TF32.
    """
    out = x.astype(_compute_dtype(x))
    for axis in _spatial_axes(x):
        if kind == "band_limit" and x.shape[axis] % 2:
            continue  # an odd length has no Nyquist bin: nothing to remove
        matrix = jnp.asarray(resampling_matrix(kind, x.shape[axis], factor), out.dtype)
        out = jnp.moveaxis(jnp.tensordot(out, matrix, axes=([axis], [1]), precision=jax.lax.Precision.HIGHEST),
                           -1, axis)
    return out.astype(x.dtype)


@functools.cache
def resampling_matrix(kind: str, n: int, factor: int) -> np.ndarray:
    """The ``(m, n)`` float64 matrix of an ideal resampling of ``n`` samples along one axis, column ``j`` the
    image of the ``j``-th unit impulse: ``band_limit`` (m = n, an even length's Nyquist bin zeroed), ``up``
    (m = factor * n: the spectrum kept, new bins zero, the Nyquist bin of an even ``n`` dropped since it would
    split into two) or ``down`` (m = n / factor: the bins below the new Nyquist kept, that bin zeroed)."""
    spectrum = np.fft.rfft(np.eye(n), axis=0)  # (n // 2 + 1, n): the spectrum of every impulse
    if kind == "band_limit":
        m, scale, keep = n, 1.0, n // 2 + 1 - (n % 2 == 0)
    elif kind == "up":
        m, scale, keep = factor * n, float(factor), n // 2 + 1 - (n % 2 == 0)
    elif kind == "down":
        m, scale = n // factor, 1.0 / factor
        keep = m // 2 + 1 - (m % 2 == 0)  # zero the new Nyquist bin: keeping its real part breaks equivariance
    else:
        raise ValueError(f"unknown resampling {kind!r}")
    kept = np.zeros((m // 2 + 1, n), complex)
    kept[:keep] = spectrum[:keep]
    return np.fft.irfft(kept, n=m, axis=0) * scale


class BandLimit(nnx.Module):
    """Zeros the Nyquist bin of the input (the first layer of an alias-free net)."""

    no_fixed_field = "filters in the Fourier domain: every output sample depends on every input sample"

    def __call__(self, x: jax.Array) -> jax.Array:
        return band_limit(x)


class PolyActivation(nnx.Module):
    """``c0 + c1 x + c2 x²`` per channel, evaluated alias-free at twice the sampling rate (``up=True``), or
    directly on the samples (``up=False``: aliases, a counter-example). The coefficients are learnt, from
    ``(0, 0.5, 0.25)``, a quadratic close to GELU on [-2, 2]."""

    no_fixed_field = "resamples in the Fourier domain: every output sample depends on every input sample"

    def __init__(self, channels: int, *, up: bool = True):
        self.coefficients = nnx.Param(jnp.tile(jnp.array([0.0, 0.5, 0.25], jnp.float32), (channels, 1)))
        self.up = up

    def _poly(self, x: jax.Array) -> jax.Array:
        c = self.coefficients[...].astype(x.dtype)
        return c[:, 0] + c[:, 1] * x + c[:, 2] * x * x

    def __call__(self, x: jax.Array) -> jax.Array:
        if not self.up:
            return self._poly(x)
        return fourier_downsample(self._poly(fourier_upsample(x, 2)), 2)


class FourierDownsample(nnx.Module):
    """Ideal low-pass, then subsampling by ``factor`` on every spatial axis."""

    no_fixed_field = "low-passes in the Fourier domain: every output sample depends on every input sample"

    def __init__(self, factor: int = 2):
        self.factor = factor

    def __call__(self, x: jax.Array) -> jax.Array:
        return fourier_downsample(x, self.factor)


class Subsample(nnx.Module):
    """Every ``factor``-th sample, nothing else (aliases: the counter-example to ``FourierDownsample``)."""

    def __init__(self, factor: int = 2):
        self.factor = factor

    def __call__(self, x: jax.Array) -> jax.Array:
        return x[(slice(None), *(slice(None, None, self.factor) for _ in _spatial_axes(x)), slice(None))]


class RMSNorm(nnx.Module):
    """Each example divided by its root mean square over every position and channel, then a learnt scale per
    channel: shift-invariant, so alias-free (no mean is subtracted per position, no statistics are kept)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        self.scale = nnx.Param(jnp.ones((channels,), jnp.float32))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        axes = tuple(range(1, x.ndim))
        rms = jnp.sqrt(jnp.mean(jnp.square(x), axis=axes, keepdims=True) + self.eps)
        return x / rms * self.scale[...].astype(x.dtype)


def check_even_path(spatial: Sequence[int], downsamples: Sequence[bool]) -> None:
    """Every downsampling by 2 needs an even length on every axis at that point."""
    sizes = list(spatial)
    for i, down in enumerate(downsamples):
        if down:
            if any(n % 2 for n in sizes):
                raise ValueError(f"block {i + 1} downsamples by 2, but its input has spatial size {tuple(sizes)}; "
                                 "alias-free downsampling needs even sizes (pad the input or downsample less)")
            sizes = [n // 2 for n in sizes]
