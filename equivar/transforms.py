"""Translations of channels-last arrays along every spatial axis, by integer or fractional offsets.

Positive offsets move content towards higher indices, as ``np.roll`` does. Modes:

* ``roll``: circular, integer offsets; content leaving one side re-enters on the other (a group action: exact
  inverses and composition).
* ``zero``: integer offsets; content leaving the frame is lost and the vacated positions are filled with zeros.
* ``fourier``: circular and band-limited, any real offset: every frequency's phase turns by ``-2 pi k t / N``.
  Convention for even lengths: the Nyquist bin keeps a real phase, ``cos(pi t)``, so the output stays real and
  an integer offset equals ``roll`` exactly; the price is that composition (shift by a, then b, equals shift by
  a + b) holds exactly only for signals with no energy at the Nyquist frequency.
* ``bilinear-zero``, ``bilinear-reflect``, ``bilinear-circular``: linear interpolation between the two nearest
  integer shifts along each axis (bilinear in 2D), with that border; at integer offsets they equal ``zero``,
  a reflecting shift, and ``roll``.

All functions are pure and jittable; offsets may be traced values.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from pydantic import Field, model_validator

from equivar.errors import ConfigError
from equivar.schema import Float, Options

ShiftMode = Literal["roll", "zero", "fourier", "bilinear-zero", "bilinear-reflect", "bilinear-circular"]
SHIFT_MODES: tuple[str, ...] = get_args(ShiftMode)
INTEGER_MODES = SHIFT_MODES[:2]
SUBPIXEL_MODES = SHIFT_MODES[2:]
Offset = ArrayLike | Sequence[float]  # one translation per spatial axis
# Crop shifts (Shifman & Weiss 2024): the input placed in a larger canvas and a window of its size cropped at
# the shifted place; content leaving the window is lost and the canvas shows where it was. A zero canvas is
# the ``zero`` shift; a reflect canvas is the reflecting shift (``bilinear-reflect`` at integer offsets).
CROP_CANVASES = {"zero": "zero", "reflect": "bilinear-reflect"}
MAX_SHIFTS_PER_AXIS = 1001  # a finer grid is a typo (shift.step=0.0001), not a measurement


class ShiftGrid(Options):
    """``shift.*``: the translations every experiment that shifts inputs measures under: ``-max..max`` (or
    ``0..max`` where an experiment measures one direction) by ``step`` along every spatial axis, applied by
    ``mode``. The one bounds rule: ``max`` is smaller than the input's shortest side."""

    max: Float = Field(4, ge=0, description="shifts up to max positions along every spatial axis; smaller than "
                                            "the input's side")
    step: Float = Field(1, gt=0, description="grid spacing; e.g. 0.25 with a sub-pixel mode")
    mode: ShiftMode | list[ShiftMode] = Field(
        "roll", description="roll (circular), zero (content leaving the frame is lost), or sub-pixel: fourier, "
                            "bilinear-zero|reflect|circular; experiments that compare modes take a list")

    @model_validator(mode="after")
    def _grid_is_whole(self) -> ShiftGrid:
        if isinstance(self.mode, list) and not self.mode:
            raise ValueError("shift.mode must not be an empty list")
        integer = [m for m in self.modes if m in INTEGER_MODES]
        if integer and not (float(self.step).is_integer() and float(self.max).is_integer()):
            raise ValueError(f"shift.mode={integer[0]} shifts by whole positions, but shift.step={self.step:g} and "
                             f"shift.max={self.max:g}; use shift.mode=fourier or bilinear-zero|reflect|circular for "
                             "sub-pixel grids")
        n = round(self.max / self.step)
        if abs(n * self.step - self.max) > 1e-9 * max(1.0, self.max):
            raise ValueError(f"shift.max={self.max:g} is not a whole number of shift.step={self.step:g}")
        if 2 * n + 1 > MAX_SHIFTS_PER_AXIS:
            raise ValueError(f"shift.max={self.max:g} with shift.step={self.step:g} gives {2 * n + 1} shifts per "
                             f"axis; at most {MAX_SHIFTS_PER_AXIS}: use a larger shift.step")
        return self

    @property
    def modes(self) -> tuple[str, ...]:
        """Every mode asked for (one, or several for experiments that compare them)."""
        return tuple(self.mode) if isinstance(self.mode, list) else (self.mode,)

    @property
    def integer(self) -> bool:
        """Whether every shift of the grid is a whole number of positions."""
        return float(self.step).is_integer() and float(self.max).is_integer()

    def one_mode(self, experiment: str, allowed: tuple[str, ...] = SHIFT_MODES) -> str:
        """The single mode an experiment that measures one mode at a time uses (a ConfigError otherwise)."""
        if len(self.modes) != 1:
            raise ConfigError(f"shift.mode={list(self.modes)}: {experiment} measures one mode at a time; give one "
                              f"(sweep several with -m shift.mode={','.join(self.modes)})")
        if self.modes[0] not in allowed:
            raise ConfigError(f"shift.mode={self.modes[0]}: {experiment} takes {' or '.join(allowed)}")
        return self.modes[0]

    def check_fits(self, spatial: tuple[int, ...]) -> None:
        """The bounds rule, once the input's spatial size is known: ``max`` below its shortest side."""
        if self.max >= min(spatial):
            raise ConfigError(f"shift.max={self.max:g} must be smaller than the input's spatial size "
                              f"{tuple(spatial)}; use shift.max <= {min(spatial) - 1}")

    def values(self) -> list[float]:
        """The one-sided values ``0, step, ..., max`` (ints for an integer grid)."""
        n = round(self.max / self.step)
        return [int(i * self.step) if self.integer else i * self.step for i in range(n + 1)]

    def offsets(self, rank: int) -> np.ndarray:
        """Every offset of the symmetric grid ``-max..max`` on every axis: ``(n_shifts, rank)``."""
        return shift_grid(self.max, rank, self.step)


def _batch_offset(x: jax.Array, offset: Offset, dtype: Any) -> jax.Array:
    """``offset`` as one value per spatial axis of the batch ``x`` (``(N, *spatial, C)``), or a one-line error:
    an unbatched array would otherwise be read as a batch of something else, or left unchanged."""
    if x.ndim < 3:
        raise ValueError(f"a shift takes a batch of shape (N, *spatial, C), got an array of shape {tuple(x.shape)}; "
                         "add the batch axis (x[None]) and, for one channel, the channel axis (x[..., None])")
    rank = x.ndim - 2
    out = jnp.asarray(offset, dtype=dtype)
    if out.ndim == 0 and rank == 1:
        out = out[None]
    if out.shape != (rank,):
        raise ValueError(f"the offset must hold one value per spatial axis of the batch ({rank} for shape "
                         f"{tuple(x.shape)}), got {tuple(out.shape) or 'a scalar'}")
    return out


def shift(x: jax.Array, offset: Offset, mode: str = "roll") -> jax.Array:
    """Translates a batch ``x`` of shape ``(N, *spatial, C)`` by ``offset`` (one value per spatial axis;
    integers for ``roll`` and ``zero``, any real number for the sub-pixel modes)."""
    if mode not in SHIFT_MODES:
        raise ValueError(f"unknown shift mode {mode!r}; choose one of {SHIFT_MODES}")
    if mode == "fourier":
        return fourier_shift(x, offset)
    if mode.startswith("bilinear-"):
        return bilinear_shift(x, offset, mode.split("-", 1)[1])
    offset = _batch_offset(x, offset, jnp.int32)
    rank = x.ndim - 2
    out = x
    for axis in range(rank):
        out = jnp.roll(out, offset[axis], axis=axis + 1)
    if mode == "zero":
        out = out * _inside_mask(x.shape[1:-1], offset).astype(x.dtype)[None, ..., None]
    return out


def fourier_shift(x: jax.Array, offset: Offset) -> jax.Array:
    """Band-limited circular translation by real ``offset`` per spatial axis (see the module docstring for
    the Nyquist convention)."""
    offset = _batch_offset(x, offset, jnp.float32)
    compute = jnp.result_type(x.dtype, jnp.float32)  # the FFT takes float32 or float64: half precision goes up
    out = x.astype(compute)
    for axis in range(x.ndim - 2):
        n = x.shape[axis + 1]
        spectrum = jnp.fft.rfft(out, axis=axis + 1)
        k = jnp.arange(spectrum.shape[axis + 1])
        phase = jnp.exp(-2j * jnp.pi * k * offset[axis] / n)
        if n % 2 == 0:  # the Nyquist bin: a real phase keeps the signal real and integer shifts exact
            phase = phase.at[-1].set(jnp.cos(jnp.pi * offset[axis]))
        shape = [1] * x.ndim
        shape[axis + 1] = -1
        out = jnp.fft.irfft(spectrum * phase.reshape(shape), n=n, axis=axis + 1)  # real, of dtype compute
    return out.astype(x.dtype)


def _integer_shift_axis(x: jax.Array, amount: jax.Array, axis: int, border: str) -> jax.Array:
    """``x`` moved by an integer ``amount`` along ``axis``: output position i reads position i - amount, whose
    index outside the frame is wrapped (circular), reflected (reflect, edge not repeated) or zero."""
    n = x.shape[axis]
    source = jnp.arange(n) - amount
    if border == "circular":
        index = jnp.mod(source, n)
    elif border == "reflect":
        period = 2 * (n - 1) if n > 1 else 1
        folded = jnp.mod(source, period)
        index = jnp.where(folded < n, folded, period - folded)
    else:
        index = jnp.clip(source, 0, n - 1)
    out = jnp.take(x, index, axis=axis)
    if border == "zero":
        inside = (source >= 0) & (source < n)
        shape = [1] * x.ndim
        shape[axis] = n
        out = out * inside.reshape(shape).astype(x.dtype)
    return out


def bilinear_shift(x: jax.Array, offset: Offset, border: str = "zero") -> jax.Array:
    """Translation by real ``offset`` per axis with linear interpolation along each axis (bilinear in 2D):
    ``(1 - f) T_floor(t) x + f T_floor(t)+1 x`` with ``f`` the fractional part. Differentiable in ``offset``."""
    if border not in ("zero", "reflect", "circular"):
        raise ValueError(f"unknown bilinear border {border!r}; choose one of zero, reflect, circular")
    offset = _batch_offset(x, offset, jnp.float32)
    out = x
    for axis in range(x.ndim - 2):
        low = jnp.floor(offset[axis])
        frac = (offset[axis] - low).astype(x.dtype)
        low = low.astype(jnp.int32)
        out = ((1 - frac) * _integer_shift_axis(out, low, axis + 1, border)
               + frac * _integer_shift_axis(out, low + 1, axis + 1, border))
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


def shift_grid(max_shift: float, rank: int, step: float = 1) -> np.ndarray:
    """Every offset in ``[-max_shift, max_shift]`` by ``step`` along each axis: ``(n_shifts, rank)``, int32 for
    integer grids and float32 for fractional ones (``step=0.25``: sub-pixel).

    Ordered lexicographically by axis, so for rank 2 the row index is ``iy * n + ix`` with offsets (dy, dx).
    """
    if max_shift < 0:
        raise ValueError(f"max_shift must be >= 0, got {max_shift}")
    if step <= 0:
        raise ValueError(f"step must be > 0, got {step}")
    n = int(round(max_shift / step))
    if abs(n * step - max_shift) > 1e-9:
        raise ValueError(f"max_shift={max_shift} is not a whole number of steps of {step}")
    axis_values = np.arange(-n, n + 1) * step
    integer = float(step).is_integer() and float(max_shift).is_integer()
    grid = np.array(list(itertools.product(axis_values, repeat=rank))).reshape(-1, rank)
    return grid.astype(np.int32 if integer else np.float32)
