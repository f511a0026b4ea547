"""The theory the equivariance experiments rest on, pinned down on small random nets (float32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from equivar.anatomy import Field
from equivar.equivariance import interior_mask, layer_shift_errors, transform_errors
from equivar.models import build_model
from equivar.testing import assert_shift_invariant

from support import target

TOL = 1e-5  # relative error float32 stacks must stay under where the theory says "exact"


def _stack(layers, shape, seed=0):
    return build_model(target("stack"), shape, 3, {"layers": layers}, nnx.Rngs(seed))


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(20, 2), (12, 10, 1)])
def test_circular_conv_stacks_commute_with_every_roll(shape):
    rng = np.random.default_rng(0)
    layers = []
    for _ in range(3):
        layers += [{"type": "conv", "features": int(rng.integers(2, 5)), "kernel": int(rng.integers(1, 6)),
                    "dilation": int(rng.integers(1, 4)), "padding": "CIRCULAR"}, {"type": "activation", "fn": "relu"}]
    model = _stack(layers, shape)
    x = jax.random.normal(jax.random.key(0), (4, *shape))
    errors = layer_shift_errors(model, x, max_shift=min(shape[:-1]) - 1, mode="roll")
    for name, row in errors.items():
        if row["role"] == "equivariance":
            assert max(row["full"]) <= TOL, (name, row["full"])


def test_stride_two_commutes_with_even_shifts_only():
    model = _stack([{"type": "conv", "features": 3, "kernel": 3, "stride": 2, "padding": "CIRCULAR"}], (24, 1))
    x = jax.random.normal(jax.random.key(1), (8, 24, 1))
    row = layer_shift_errors(model, x, max_shift=8, mode="roll")["conv1"]
    assert row["jump"] == [2]
    for s, err, divisible in zip(row["shift"], row["full"], row["divisible"]):
        assert divisible == (s % 2 == 0)
        assert (err <= TOL) if divisible else (err > 0.05), (s, err)


def test_zero_padding_errs_only_near_the_border():
    model = _stack([{"type": "conv", "features": 4, "kernel": 5, "padding": "SAME"},
                    {"type": "activation", "fn": "relu"},
                    {"type": "conv", "features": 4, "kernel": 3, "padding": "SAME"}], (32, 1))
    x = jax.random.normal(jax.random.key(2), (8, 32, 1))
    for mode in ("roll", "zero"):
        row = layer_shift_errors(model, x, max_shift=6, mode=mode)["conv3"]
        assert all(e <= TOL for e in row["interior"]), row["interior"]
        assert all(e > 0.01 for e in row["full"][1:]), row["full"]  # the border is not exact


def test_interior_mask_excludes_fields_that_touch_a_border():
    field = Field(size=(5,), start=(-2,), jump=(1,))  # a SAME 5-tap conv on 10 positions
    mask = interior_mask(field, (10,), (10,), grid_shift=(1,), jump=(1,))
    # unit u sees [u-2, u+2]; after a shift of 1 it must also see [u-3, u+1] inside [0, 9]
    np.testing.assert_array_equal(np.nonzero(mask)[0], [3, 4, 5, 6, 7])


@pytest.mark.slow
def test_global_pooling_over_a_circular_net_is_invariant_to_every_roll():
    model = build_model(target("cnn_gap"), (16, 16, 1), 4, {"channels": [3, 4], "dilations": [1, 2]}, nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (2, 16, 16, 1))
    assert_shift_invariant(model, x, [(dy, dx) for dy in range(16) for dx in range(0, 16, 3)], rtol=TOL)


@pytest.mark.slow
@pytest.mark.parametrize("shape,transforms", [((16, 16, 1), ["rotate90", "scale2"]), ((32, 1), ["flip", "scale2"])])
def test_rotation_reflection_and_scaling_are_not_equivariances(shape, transforms):
    model = _stack([{"type": "conv", "features": 4, "kernel": 3, "padding": "CIRCULAR"}], shape)
    x = jax.random.normal(jax.random.key(4), (4, *shape))
    for t in transforms:
        assert transform_errors(model, x, t)["conv1"] > 0.1, t
    # the control: a kernel symmetric under the transform commutes with it
    model.conv1.kernel[...] = jnp.ones_like(model.conv1.kernel[...])
    assert transform_errors(model, x, transforms[0])["conv1"] <= TOL


@pytest.mark.slow
@pytest.mark.parametrize("shape,transform", [((12, 12, 1), lambda x: jnp.rot90(x, 1, axes=(1, 2))),
                                             ((20, 1), lambda x: jnp.flip(x, 1))])
def test_pooling_over_rotated_copies_is_invariant_and_its_absence_is_not(shape, transform):
    x = jax.random.normal(jax.random.key(5), (3, *shape))
    options = {"channels": [3, 4], "dilations": [1, 2]}
    pooled = build_model(target("group_pool"), shape, 5, options, nnx.Rngs(0))
    np.testing.assert_allclose(pooled(transform(x)), pooled(x), rtol=TOL, atol=TOL)
    unpooled = build_model(target("group_pool"), shape, 5, dict(options, pool_copies=False), nnx.Rngs(0))
    assert not np.allclose(unpooled(transform(x)), unpooled(x), atol=1e-3)


@pytest.mark.slow
def test_the_full_2d_grid_is_exact_exactly_where_the_jump_divides_both_offsets():
    """Circular LeNet, roll: pool2 (J=4) commutes with (dy, dx) iff 4 divides both, off the diagonal too."""
    model = build_model(target("lenet"), (16, 16, 1), 3, {"channels": [2, 3], "kernel": 3, "hidden": [4],
                                                          "padding": "CIRCULAR", "pool_padding": "CIRCULAR"},
                        nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 1))
    grid = np.asarray(layer_shift_errors(model, x, 4, "roll", grid=True)["pool2"]["grid"])
    exact = grid < 1e-6
    expected = np.zeros((5, 5), bool)
    expected[np.ix_([0, 4], [0, 4])] = True
    np.testing.assert_array_equal(exact, expected)
    assert grid[0, 1] > 1e-2 and grid[4, 1] > 1e-2
