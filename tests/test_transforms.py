import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivar.transforms import shift, shift_each, shift_grid, shift_many


@pytest.fixture(params=[(2, 11, 3), (2, 7, 9, 2)], ids=["1d", "2d"])
def x(request):
    return jax.random.normal(jax.random.key(0), request.param)


def rank(x):
    return x.ndim - 2


@pytest.mark.parametrize("mode", ["roll", "zero"])
def test_zero_offset_is_identity(x, mode):
    np.testing.assert_array_equal(shift(x, jnp.zeros(rank(x), jnp.int32), mode), x)


def test_roll_inverse_and_composition(x):
    a = jnp.array([3, -2][: rank(x)])
    b = jnp.array([-5, 4][: rank(x)])
    np.testing.assert_array_equal(shift(shift(x, a), -a), x)
    np.testing.assert_array_equal(shift(shift(x, a), b), shift(x, a + b))
    # a full period is the identity
    period = jnp.array(x.shape[1:-1])
    np.testing.assert_array_equal(shift(x, period), x)


def test_roll_matches_numpy(x):
    a = [2, -3][: rank(x)]
    expected = np.roll(np.asarray(x), a, axis=tuple(range(1, 1 + rank(x))))
    np.testing.assert_array_equal(shift(x, jnp.array(a)), expected)


def test_zero_fill_drops_what_leaves_the_frame():
    x = jnp.arange(1.0, 7.0).reshape(1, 6, 1)
    np.testing.assert_array_equal(shift(x, jnp.array([2]), "zero")[0, :, 0], [0, 0, 1, 2, 3, 4])
    np.testing.assert_array_equal(shift(x, jnp.array([-2]), "zero")[0, :, 0], [3, 4, 5, 6, 0, 0])
    # lost content does not come back: zero shift is not invertible, roll is
    back = shift(shift(x, jnp.array([2]), "zero"), jnp.array([-2]), "zero")
    np.testing.assert_array_equal(back[0, :, 0], [1, 2, 3, 4, 0, 0])


def test_zero_fill_equals_roll_with_wrapped_positions_zeroed(x):
    a = jnp.array([2, -3][: rank(x)])
    rolled, zeroed = np.asarray(shift(x, a, "roll")), np.asarray(shift(x, a, "zero"))
    keep = zeroed != 0
    np.testing.assert_array_equal(zeroed[keep], rolled[keep])
    # exactly the wrapped band is zero: |a| positions along each axis
    spatial = x.shape[1:-1]
    inside = np.prod([s - abs(int(o)) for s, o in zip(spatial, a)])
    assert keep[0, ..., 0].sum() == inside


def test_shift_with_traced_offsets_under_jit(x):
    f = jax.jit(lambda x, o: shift(x, o, "zero"))
    a = jnp.array([1, 2][: rank(x)])
    np.testing.assert_array_equal(f(x, a), shift(x, a, "zero"))


def test_shift_many_and_each(x):
    offsets = jnp.array(shift_grid(2, rank(x)))
    many = shift_many(x, offsets, "roll")
    assert many.shape == (len(offsets),) + x.shape
    np.testing.assert_array_equal(many[3], shift(x, offsets[3]))
    per_example = offsets[: x.shape[0]]
    each = shift_each(x, per_example, "roll")
    for i in range(x.shape[0]):
        np.testing.assert_array_equal(each[i], shift(x[i:i + 1], per_example[i])[0])


def test_shift_grid_order_and_size():
    g1 = shift_grid(3, 1)
    assert g1[:, 0].tolist() == list(range(-3, 4))
    g2 = shift_grid(2, 2)
    assert g2.shape == (25, 2)
    assert g2[0].tolist() == [-2, -2] and g2[1].tolist() == [-2, -1] and g2[12].tolist() == [0, 0]
    with pytest.raises(ValueError):
        shift_grid(-1, 1)


def test_unknown_mode():
    with pytest.raises(ValueError, match="roll"):
        shift(jnp.zeros((1, 4, 1)), jnp.array([1]), "reflect")


@pytest.mark.parametrize("mode", ["roll", "zero", "fourier", "bilinear-zero"])
def test_an_unbatched_array_is_refused_in_one_line(mode):
    signal = jnp.arange(8.0)[:, None]  # (L, C): one sequence without its batch axis
    with pytest.raises(ValueError, match=r"takes a batch of shape \(N, \*spatial, C\), got an array of shape \(8, 1\)"):
        shift(signal, (1,), mode)
    np.testing.assert_allclose(shift(signal[None], (1,), mode)[0, 1:, 0], signal[:-1, 0], atol=1e-5)


def test_an_offset_per_spatial_axis_is_required():
    images = jnp.zeros((2, 4, 6, 1))
    with pytest.raises(ValueError, match=r"one value per spatial axis of the batch \(2 for shape \(2, 4, 6, 1\)\), got \(1,\)"):
        shift(images, (1,), "roll")
    with pytest.raises(ValueError, match="got a scalar"):
        shift(images, 1, "fourier")
    sequences = jnp.arange(6.0).reshape(1, 6, 1)
    np.testing.assert_array_equal(shift(sequences, 2, "roll"), shift(sequences, (2,), "roll"))  # rank 1: a scalar is the offset


@pytest.mark.parametrize("mode", ["roll", "zero", "fourier", "bilinear-zero", "bilinear-reflect", "bilinear-circular"])
def test_a_shift_keeps_the_input_dtype(mode):
    x = jnp.arange(12.0, dtype=jnp.bfloat16).reshape(1, 12, 1)
    assert shift(x, (1.5,) if mode.startswith(("fourier", "bilinear")) else (1,), mode).dtype == jnp.bfloat16


def test_shift_many_rolls_by_default():
    x = jnp.arange(6.0).reshape(1, 6, 1)
    offsets = jnp.array([[1], [-2]])
    np.testing.assert_array_equal(shift_many(x, offsets), shift_many(x, offsets, "roll"))
    np.testing.assert_array_equal(shift_many(x, offsets)[1, 0, :, 0], [2, 3, 4, 5, 0, 1])
