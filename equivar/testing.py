"""Shift checks for your own tests: is your layer or model shift-equivariant, or invariant?

    from equivar.testing import assert_shift_equivariant, assert_shift_invariant

    assert_shift_equivariant(my_conv, x)                    # integer circular shifts (rolls)
    assert_shift_equivariant(my_layer, x, shifts=[0.5, 1.25])  # sub-pixel: band-limited (Fourier) shifts
    assert_shift_invariant(my_model, x, shifts=[(1, 0), (3, 2)])

``fn`` is any function of a batch ``x`` of shape ``(N, *spatial, C)``: an NNX module, a Linen module bound
with ``lambda x: model.apply(variables, x)``, or a plain function. Equivariance compares ``fn(shift(x, s))``
with ``shift(fn(x), s * out / in)``, so a layer that halves a side (stride 2) must move its output by half the
shift; invariance compares ``fn(shift(x, s))`` with ``fn(x)``.

Integer offsets move ``x`` with ``mode`` (``roll``: circular, the shift a circular network commutes with exactly;
``zero``; ``fourier``: every offset, and the output's, by the Fourier shift); non-integer offsets with the
Fourier shift, exact only on band-limited inputs (``equivar.alias_free.band_limit``).

Tolerance: an offset passes when ``max |a - b| <= atol + rtol * max |b|``, ``b`` the expected output. The
default ``rtol=1e-5`` is float32 arithmetic: a few dozen roundings of 6e-8 each, well under it; a layer that
is not equivariant errs at 1e-2 and more. On failure the message names the worst offset and its error; on
success the functions return every offset's error (relative to the largest expected value);
:func:`shift_errors` returns them without asserting. Every shifted copy goes through ``fn`` in one call, stacked
along the batch axis (``batched=False``: one call per offset, for a function whose examples interact).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from equivar.transforms import shift

Offsets = Sequence[float | Sequence[float]]
DEFAULT_RTOL = 1e-5


def _offsets(shifts: Offsets | None, rank: int, step: Sequence[int], spatial: Sequence[int]) -> list[tuple]:
    """``shifts`` as one tuple per offset; by default 1-4 steps along each axis, one step back, the diagonal."""
    if shifts is not None:
        out = [tuple(float(v) for v in np.atleast_1d(s)) for s in shifts]
        for s in out:
            if len(s) != rank:
                raise ValueError(f"each shift needs one value per spatial axis ({rank}), got {s}")
        return [tuple(int(v) if float(v).is_integer() else v for v in s) for s in out]
    n_steps = [max(1, min(4, (n - 1) // k)) for n, k in zip(spatial, step)]
    offsets: list[tuple] = []
    for axis in range(rank):
        for i in [*range(1, n_steps[axis] + 1), -1]:
            offsets.append(tuple(i * step[axis] if a == axis else 0 for a in range(rank)))
    if rank > 1:
        offsets += [tuple(i * k for k in step) for i in range(1, min(n_steps) + 1)]
    return offsets


def _move(x: jax.Array, offset: tuple, mode: str) -> jax.Array:
    integer = all(float(v).is_integer() for v in offset)
    return shift(x, tuple(int(v) for v in offset) if integer else offset, mode if integer else "fourier")


def _error(got: jax.Array, expected: jax.Array) -> tuple[float, float]:
    """(largest absolute difference, largest absolute expected value)."""
    a, b = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"the output's shape changed under the shift: {a.shape} vs {b.shape}")
    return float(np.abs(a - b).max(initial=0.0)), float(np.abs(b).max(initial=0.0))


def _apply(fn: Callable, inputs: list[jax.Array], batched: bool) -> list[jax.Array]:
    """``fn`` of each input; batched: one call on all of them stacked along the batch axis."""
    if not batched or len(inputs) < 2:
        return [fn(v) for v in inputs]
    n = inputs[0].shape[0]
    out = fn(jnp.concatenate(inputs))
    return [out[i * n:(i + 1) * n] for i in range(len(inputs))]


def _pairs(fn: Callable, x: jax.Array, shifts: Offsets | None, mode: str, invariant: bool,
           batched: bool) -> list[tuple[tuple, jax.Array, jax.Array]]:
    """(offset, fn of the shifted input, what it should equal) for each offset."""
    x = jnp.asarray(x)
    if x.ndim < 3:
        raise ValueError(f"x must be a batch of shape (N, *spatial, C), got {tuple(x.shape)}")
    rank = x.ndim - 2
    y = fn(x)
    if invariant:
        offsets = _offsets(shifts, rank, [1] * rank, x.shape[1:-1])
        return list(zip(offsets, _apply(fn, [_move(x, o, mode) for o in offsets], batched), [y] * len(offsets)))
    if getattr(y, "ndim", None) != x.ndim:
        raise ValueError(f"an equivariant output keeps the input's layout (N, *spatial, C): input {tuple(x.shape)}, "
                         f"output {tuple(np.shape(y))}; for a function that pools space away use "
                         "assert_shift_invariant")
    spatial_in, spatial_out = x.shape[1:-1], y.shape[1:-1]
    for i, o in zip(spatial_in, spatial_out):
        if i % o and o % i:
            raise ValueError(f"the output's spatial shape {spatial_out} is no whole fraction or multiple of the "
                             f"input's {spatial_in}: there is no shift of the output to compare with")
    ratio = [o / i for i, o in zip(spatial_in, spatial_out)]
    step = [max(1, round(1 / r)) for r in ratio]
    offsets = _offsets(shifts, rank, step, spatial_in)
    expected = []
    for offset in offsets:
        moved = tuple(v * r for v, r in zip(offset, ratio))
        whole = all(float(v).is_integer() for v in offset)
        if mode != "fourier" and whole and not all(float(v).is_integer() for v in moved):
            raise ValueError(f"the shift {offset} moves the output (spatial {spatial_out} for input {spatial_in}) "
                             f"by {moved}, not by whole positions: use multiples of {tuple(step)}, or "
                             "mode='fourier' for a sub-pixel check")
        expected.append(_move(y, moved, mode))
    return list(zip(offsets, _apply(fn, [_move(x, o, mode) for o in offsets], batched), expected))


def shift_errors(fn: Callable[[jax.Array], jax.Array], x: jax.Array, shifts: Offsets | None = None, *,
                 invariant: bool = False, mode: str = "roll", batched: bool = True) -> dict[tuple, float]:
    """Each offset's error, ``max |a - b| / max |b|``, without asserting anything: ``b`` is ``fn(x)``
    (``invariant``) or ``fn(x)`` shifted to match (equivariance). ``batched``: every shifted copy in one call
    of ``fn``, stacked along the batch axis (``fn`` must treat examples independently, as in inference)."""
    return {offset: diff / scale if scale > 0 else diff
            for offset, (diff, scale) in _measure(_pairs(fn, x, shifts, mode, invariant, batched)).items()}


def _measure(pairs: list[tuple[tuple, jax.Array, jax.Array]]) -> dict[tuple, tuple[float, float]]:
    """Each offset's (largest absolute difference, largest absolute expected value)."""
    return {offset: _error(got, expected) for offset, got, expected in pairs}


def _check(kind: str, fn: Callable, pairs: list[tuple[tuple, jax.Array, jax.Array]], rtol: float,
           atol: float) -> dict[tuple, float]:
    measured = _measure(pairs)
    errors = {offset: diff / scale if scale > 0 else diff for offset, (diff, scale) in measured.items()}
    failed = [offset for offset, (diff, scale) in measured.items() if diff > atol + rtol * scale]
    if failed:
        worst = max(failed, key=lambda o: errors[o])
        name = getattr(fn, "__name__", None) or type(fn).__name__
        listed = ", ".join(f"{o}: {errors[o]:.3g}" for o in sorted(failed, key=lambda o: -errors[o])[:6])
        raise AssertionError(
            f"{name} is not shift-{kind} (rtol={rtol:g}, atol={atol:g}): worst shift {worst} errs by "
            f"{errors[worst]:.3g} of the largest expected value; {len(failed)} of {len(pairs)} shifts over the "
            f"tolerance ({listed})")
    return errors


def assert_shift_equivariant(fn: Callable[[jax.Array], jax.Array], x: jax.Array, shifts: Offsets | None = None, *,
                             mode: str = "roll", rtol: float = DEFAULT_RTOL, atol: float = 0.0,
                             batched: bool = True) -> dict[tuple, float]:
    """Asserts ``fn(shift(x, s)) == shift(fn(x), s * out / in)`` for every offset ``s`` in ``shifts``.

    ``fn``'s output keeps the layout ``(N, *spatial', C')``; each spatial side may be a whole fraction or multiple
    of the input's (strided or upsampling layers), and then integer offsets must move the output by whole
    positions (by default they are multiples of the stride). ``batched``: as in :func:`shift_errors`. Returns
    each offset's relative error.
    """
    return _check("equivariant", fn, _pairs(fn, x, shifts, mode, False, batched), rtol, atol)


def assert_shift_invariant(fn: Callable[[jax.Array], jax.Array], x: jax.Array, shifts: Offsets | None = None, *,
                           mode: str = "roll", rtol: float = DEFAULT_RTOL, atol: float = 0.0,
                           batched: bool = True) -> dict[tuple, float]:
    """Asserts ``fn(shift(x, s)) == fn(x)`` for every offset ``s`` in ``shifts`` (any output shape). Returns each
    offset's relative error."""
    return _check("invariant", fn, _pairs(fn, x, shifts, mode, True, batched), rtol, atol)
