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

Every operation works on channels-last arrays ``(N, *spatial, C)`` of any spatial rank, axis by axis, with
real FFTs (float32 at least, as ``fourier_shift``).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def _spatial_axes(x: jax.Array) -> range:
    return range(1, x.ndim - 1)


def _compute_dtype(x: jax.Array) -> jnp.dtype:
    return jnp.result_type(x.dtype, jnp.float32)


def band_limit(x: jax.Array) -> jax.Array:
    """``x`` with the Nyquist bin of every even-length spatial axis set to zero (strictly below Nyquist)."""
    out = x.astype(_compute_dtype(x))
    for axis in _spatial_axes(x):
        n = x.shape[axis]
        if n % 2:
            continue
        out = jnp.fft.irfft(_without_last_bin(jnp.fft.rfft(out, axis=axis), axis), n=n, axis=axis)
    return out.astype(x.dtype)


def fourier_upsample(x: jax.Array, factor: int = 2) -> jax.Array:
    """Ideal (band-limited) interpolation to ``factor`` times as many samples on every spatial axis: the
    spectrum is kept, the new bins are zeros. Exact for inputs strictly below Nyquist."""
    out = x.astype(_compute_dtype(x))
    for axis in _spatial_axes(x):
        n = x.shape[axis]
        spectrum = jnp.fft.rfft(out, axis=axis)
        if n % 2 == 0:  # the Nyquist bin has no place on the finer grid: it would split into two bins
            spectrum = _without_last_bin(spectrum, axis)
        pad = [(0, 0)] * x.ndim
        pad[axis] = (0, (factor * n) // 2 + 1 - spectrum.shape[axis])
        out = jnp.fft.irfft(jnp.pad(spectrum, pad), n=factor * n, axis=axis) * factor
    return out.astype(x.dtype)


def fourier_downsample(x: jax.Array, factor: int = 2) -> jax.Array:
    """An ideal low-pass to ``1 / factor`` of the band (the new Nyquist bin zeroed), then every ``factor``-th
    sample, on every spatial axis (each length must be a multiple of ``factor``)."""
    out = x.astype(_compute_dtype(x))
    for axis in _spatial_axes(x):
        n = x.shape[axis]
        if n % factor:
            raise ValueError(f"ideal downsampling by {factor} needs spatial sizes divisible by {factor}, got "
                             f"{x.shape[1:-1]}")
        m = n // factor
        spectrum = jax.lax.slice_in_dim(jnp.fft.rfft(out, axis=axis), 0, m // 2 + 1, axis=axis)
        if m % 2 == 0:  # zero the new Nyquist bin: keeping its real part breaks the equivariance
            spectrum = _without_last_bin(spectrum, axis)
        out = jnp.fft.irfft(spectrum, n=m, axis=axis) / factor
    return out.astype(x.dtype)


def _without_last_bin(spectrum: jax.Array, axis: int) -> jax.Array:
    """``spectrum`` with its last bin along ``axis`` (an even length's Nyquist bin) set to zero."""
    shape = [1] * spectrum.ndim
    shape[axis] = -1
    keep = jnp.ones(spectrum.shape[axis], bool).at[-1].set(False)
    return spectrum * keep.reshape(shape)


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
