"""equivar.testing, the shift checks users run on their own layers: they pass on what is equivariant (to float32
rounding, rtol 1e-5), and a planted layer that is not fails them with its worst shift named."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from equivar.alias_free import band_limit
from equivar.testing import assert_shift_equivariant, assert_shift_invariant, shift_errors


class PositionBias(nnx.Module):
    """A circular convolution plus a bias that grows along the first axis: equivariant except for that bias,
    which is largest at the last position."""

    def __init__(self, rank: int):
        self.conv = nnx.Conv(2, 3, (3,) * rank, padding="CIRCULAR", rngs=nnx.Rngs(0))

    def __call__(self, x):
        y = self.conv(x)
        ramp = jnp.arange(y.shape[1], dtype=y.dtype) * 0.1
        return y + ramp.reshape((1, -1) + (1,) * (y.ndim - 2))


def _x(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize("shape", [(3, 12, 2), (2, 8, 6, 2)])
def test_a_circular_convolution_passes_on_integer_and_subpixel_shifts(shape):
    conv = nnx.Conv(2, 3, (3,) * (len(shape) - 2), padding="CIRCULAR", rngs=nnx.Rngs(1))
    errors = assert_shift_equivariant(conv, _x(shape))
    assert len(errors) >= 5 and max(errors.values()) < 1e-5
    rank = len(shape) - 2
    assert_shift_equivariant(conv, band_limit(_x(shape)), shifts=[(0.5,) * rank, (1.25,) * rank])


def test_a_planted_position_dependent_layer_fails_with_its_worst_shift_named():
    layer = PositionBias(1)
    x = _x((2, 10, 2))
    with pytest.raises(AssertionError) as failure:
        assert_shift_equivariant(layer, x, shifts=[1, 2, 5])
    message = str(failure.value)
    # the ramp rolled by s of 10 positions differs from itself by up to 0.1 * max(s, 10 - s): most for s = 1
    assert "PositionBias is not shift-equivariant" in message and "worst shift (1,)" in message
    assert "3 of 3 shifts over the tolerance" in message
    # and the same layer without the ramp, its convolution alone, passes
    assert_shift_equivariant(layer.conv, x, shifts=[1, 2, 5])


def test_zero_padding_fails_and_a_looser_tolerance_is_honoured():
    conv = nnx.Conv(2, 2, (5,), padding="SAME", rngs=nnx.Rngs(0))
    x = _x((2, 16, 2))
    with pytest.raises(AssertionError, match="Conv is not shift-equivariant"):
        assert_shift_equivariant(conv, x)
    assert_shift_equivariant(conv, x, atol=1e3)  # the tolerance is the caller's


def test_a_strided_layer_moves_its_output_by_the_shift_over_the_stride():
    conv = nnx.Conv(2, 3, (3,), strides=2, padding="CIRCULAR", rngs=nnx.Rngs(0))
    x = _x((2, 12, 2))
    errors = assert_shift_equivariant(conv, x)
    assert all(s[0] % 2 == 0 for s in errors)  # the default offsets are multiples of the stride
    with pytest.raises(ValueError, match="not by whole positions: use multiples of \\(2,\\)"):
        assert_shift_equivariant(conv, x, shifts=[1])
    with pytest.raises(AssertionError, match="worst shift"):  # half a stride: aliasing, not equivariance
        assert_shift_equivariant(conv, band_limit(x), shifts=[0.5])


def test_invariance_of_global_pooling_and_its_failure_for_a_flatten():
    conv = nnx.Conv(1, 4, (3, 3), padding="CIRCULAR", rngs=nnx.Rngs(0))
    dense = nnx.Linear(8 * 8 * 4, 3, rngs=nnx.Rngs(0))
    x = _x((2, 8, 8, 1))
    assert_shift_invariant(lambda v: conv(v).mean(axis=(1, 2)), x, shifts=[(1, 0), (3, 5), (-2, 7)])
    with pytest.raises(AssertionError, match=r"not shift-invariant .* worst shift \("):
        assert_shift_invariant(lambda v: dense(conv(v).reshape(len(v), -1)), x)


def test_misuse_is_named():
    conv = nnx.Conv(1, 1, (3,), padding="CIRCULAR", rngs=nnx.Rngs(0))
    x = _x((2, 12, 1))
    with pytest.raises(ValueError, match="use assert_shift_invariant"):
        assert_shift_equivariant(lambda v: conv(v).mean(axis=1), x)
    with pytest.raises(ValueError, match="one value per spatial axis"):
        assert_shift_equivariant(conv, x, shifts=[(1, 1)])
    with pytest.raises(ValueError, match=r"\(N, \*spatial, C\)"):
        assert_shift_invariant(conv, x[0, :, 0])


def test_shift_errors_measures_without_asserting_and_batching_changes_nothing():
    layer = PositionBias(2)
    x = _x((2, 6, 5, 2))
    shifts = [(1, 0), (0, 2), (3, 4)]
    batched = shift_errors(layer, x, shifts)
    one_by_one = shift_errors(layer, x, shifts, batched=False)
    assert batched.keys() == one_by_one.keys() == set(shifts)
    assert all(abs(batched[s] - one_by_one[s]) < 1e-6 for s in shifts)
    assert batched[(0, 2)] < 1e-5 < batched[(1, 0)]  # the ramp runs along the first axis only
