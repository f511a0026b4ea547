import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from equivar.errors import ConfigError
from equivar.introspect import layer_outputs
from equivar.layers import Pool
from equivar.models import build_model
from equivar.testing import assert_shift_invariant
from equivar.transforms import shift, shift_grid

from support import ZOO_PARAMS, target, zoo_options

SHAPES = {"1d": (40, 1), "2d": (28, 28, 1)}


def n_params(model):
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("kind", ZOO_PARAMS)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_output_shape(kind, shape):
    model = build_model(target(kind), shape, 10, {}, nnx.Rngs(0))
    x = jnp.ones((3,) + shape)
    assert model(x).shape == (3, 10)
    feats = layer_outputs(model, x)
    names = getattr(model, "layer_names", None) or list(feats)  # non-stack models: their layers in call order
    assert list(feats) == list(names) and feats[names[-1]].shape == (3, 10)


def test_lenet_is_the_lecture_problem_1():
    """28x28x1 input: conv5(16) 24x24, pool 12x12, conv5(32) 8x8, pool 4x4, flatten 512, fc 512, fc 10."""
    model = build_model(target("lenet"), (28, 28, 1), 10, {}, nnx.Rngs(0))
    shapes = {k: v.shape[1:] for k, v in layer_outputs(model, jnp.zeros((1, 28, 28, 1))).items()}
    assert shapes["conv1"] == (24, 24, 16) and shapes["pool1"] == (12, 12, 16)
    assert shapes["conv2"] == (8, 8, 32) and shapes["pool2"] == (4, 4, 32)
    assert shapes["flatten"] == (512,) and shapes["fc1"] == (512,) and shapes["logits"] == (10,)
    expected = (5 * 5 * 1 * 16 + 16) + (5 * 5 * 16 * 32 + 32) + (512 * 512 + 512) + (512 * 10 + 10)
    assert n_params(model) == expected == 281034


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(24, 2), (12, 10, 3)], ids=["1d", "2d"])
def test_cnn_gap_invariant_to_every_circular_shift(shape):
    """Relative logit change under every roll is at float32 rounding level (tolerance 1e-5)."""
    model = build_model(target("cnn_gap"), shape, 7, {"global_pool": "mean"}, nnx.Rngs(1))
    model_max = build_model(target("cnn_gap"), shape, 7, {}, nnx.Rngs(2))
    x = jax.random.normal(jax.random.key(3), (4,) + shape)
    grid = shift_grid(max(shape[:-1]), len(shape) - 1)
    for m in (model, model_max):
        assert_shift_invariant(m, x, grid, rtol=1e-5)


@pytest.mark.parametrize("shape", [(24, 2), pytest.param((16, 12, 1), marks=pytest.mark.slow)], ids=["1d", "2d"])
def test_cnn_aps_predicts_the_same_under_every_circular_shift(shape):
    """cnn_aps subsamples twice by 2 (adaptive polyphase) yet its logits are unchanged, to float32 rounding
    (1e-5 relative), by every roll of an input whose sides are multiples of 4."""
    model = build_model(target("cnn_aps"), shape, 7, zoo_options("cnn_aps", channels=[4, 4, 8, 8]), nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(3), (4,) + shape)
    assert_shift_invariant(model, x, shift_grid(max(shape[:-1]), len(shape) - 1), rtol=1e-5)


def test_cnn_aps_with_a_fixed_phase_is_not_invariant():
    """The same net keeping a fixed polyphase component (plain stride-2 subsampling) changes its logits under
    a one-position roll: the adaptive choice is what keeps the invariance."""
    from equivar.layers import PolyphaseDownsample

    shape = (24, 2)
    model = build_model(target("cnn_aps"), shape, 7, zoo_options("cnn_aps", channels=[4, 4, 8, 8]), nnx.Rngs(1))
    x = jax.random.normal(jax.random.key(3), (4,) + shape)
    one = jnp.array([1])
    adaptive = float(jnp.abs(model(shift(x, one)) - model(x)).max())
    # the same layers and weights with phase 0 always kept: every other position
    fixed_change = float(jnp.abs(_fixed_phase_forward(model, shift(x, one), PolyphaseDownsample)
                                 - _fixed_phase_forward(model, x, PolyphaseDownsample)).max())
    assert adaptive <= 1e-5 * float(jnp.abs(model(x)).max()) and fixed_change > 1e-3


def _fixed_phase_forward(model, x, downsample_type):
    for _, layer in model.layers():
        x = x[:, ::2] if isinstance(layer, downsample_type) else layer(x)
    return x


def test_lenet_is_not_shift_invariant():
    """The invariance test above can fail: LeNet's logits do change under a roll."""
    model = build_model(target("lenet"), (28, 28, 1), 10, {}, nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (2, 28, 28, 1))
    ref = model(x)
    err = jnp.abs(model(shift(x, jnp.array([1, 3]))) - ref).max() / jnp.abs(ref).max()
    assert float(err) > 1e-2


@pytest.mark.parametrize("kind", ["max", "mean"])
@pytest.mark.parametrize("window,stride,padding", [((2,), (2,), "VALID"), ((3,), (2,), "VALID"),
                                                   ((3,), (1,), "CIRCULAR"), ((2,), (1,), "SAME")])
def test_pool_matches_reference(kind, window, stride, padding):
    x = jax.random.normal(jax.random.key(0), (2, 9, 3))
    out = Pool(kind, window, stride, padding)(x)
    xp = np.asarray(x)
    w, s = window[0], stride[0]
    if padding == "CIRCULAR":
        xp = np.pad(xp, [(0, 0), ((w - 1) // 2, w // 2), (0, 0)], mode="wrap")
    elif padding == "SAME":
        fill = -np.inf if kind == "max" else 0.0
        xp = np.pad(xp, [(0, 0), ((w - 1) // 2, w // 2), (0, 0)], constant_values=fill)
    n_out = (xp.shape[1] - w) // s + 1
    reduce = np.max if kind == "max" else np.mean
    expected = np.stack([reduce(xp[:, i * s:i * s + w], axis=1) for i in range(n_out)], axis=1)
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    assert Pool(kind, window, stride, padding).geometry.output_spatial((9,)) == (n_out,)


def test_2d_reshape_pool_crops_like_valid_reduce_window():
    x = jax.random.normal(jax.random.key(0), (2, 7, 9, 3))
    fast = Pool("max", (2, 2), (2, 2))(x)
    slow = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    np.testing.assert_array_equal(fast, slow)


def test_impossible_shape_names_the_layer():
    with pytest.raises(ConfigError, match="conv2"):
        build_model(target("lenet"), (12, 1), 10, {}, nnx.Rngs(0))


def test_unknown_model_and_option():
    with pytest.raises(ConfigError, match=r"zoo.x._target_='equivar.models.ResNet' cannot be imported"):
        build_model("equivar.models.ResNet", (8, 1), 2, {}, nnx.Rngs(0), where="zoo.x")
    with pytest.raises(ConfigError, match=r"zoo.x._target_='nosuchpackage.Net' cannot be imported"):
        build_model("nosuchpackage.Net", (8, 1), 2, {}, nnx.Rngs(0), where="zoo.x")
    with pytest.raises(ConfigError, match="is a function, not a model class"):
        build_model("equivar.models.build_model", (8, 1), 2, {}, nnx.Rngs(0), where="zoo.x")
    with pytest.raises(ConfigError, match=r"zoo.lenet \(LeNet\) has no option 'chanels' \(did you mean 'channels'\?\)"):
        build_model(target("lenet"), (28, 28, 1), 2, {"chanels": [3]}, nnx.Rngs(0), where="zoo.lenet")


def test_bench_counts_the_lenet_forward_flops_from_its_layers():
    """2 FLOPs per multiply-add: conv1 24*24*25*1*16, conv2 8*8*25*16*32, dense 512*512 and 512*10."""
    from equivar.tools.bench import forward_flops
    model = build_model(target("lenet"), (28, 28, 1), 10, {}, nnx.Rngs(0))
    expected = 2 * (24 * 24 * 25 * 16 + 8 * 8 * 25 * 16 * 32 + 512 * 512 + 512 * 10)
    assert forward_flops(model, (28, 28, 1)) == expected


@pytest.mark.slow
@pytest.mark.parametrize("padding", ["VALID", "SAME", "CIRCULAR"])
@pytest.mark.parametrize("shape,kernel,stride,dilation", [((11, 3), (3,), (1,), (2,)), ((9, 7, 3), (3, 2), (2, 1), (1, 2))])
def test_locally_connected_with_tied_weights_is_the_convolution(padding, shape, kernel, stride, dilation):
    """Copy one conv kernel to every position of a locally connected layer: outputs match to 1e-5, so the two
    differ only by weight sharing (and then in parameter count: one kernel per output position)."""
    from equivar.layers import LocallyConnected
    conv = nnx.Conv(3, 4, kernel, strides=stride, kernel_dilation=dilation, padding=padding, rngs=nnx.Rngs(0))
    local = LocallyConnected(3, 4, kernel, shape[:-1], stride=stride, dilation=dilation, padding=padding,
                             rngs=nnx.Rngs(1))
    rank = len(kernel)
    patch_major = jnp.transpose(conv.kernel[...], (rank, *range(rank), rank + 1)).reshape(-1, 4)  # (C, k..)
    local.kernel[...] = jnp.broadcast_to(patch_major, local.kernel[...].shape)
    local.bias[...] = jnp.broadcast_to(conv.bias[...], local.bias[...].shape)
    x = jax.random.normal(jax.random.key(2), (2, *shape))
    np.testing.assert_allclose(local(x), conv(x), rtol=1e-5, atol=1e-5)
    n_positions = int(np.prod(local.kernel[...].shape[:rank]))
    assert local.kernel[...].size == n_positions * conv.kernel[...].size


def test_locally_connected_positions_are_independent():
    """Without sharing, a kernel at one position does not respond like the kernel at another: the layer is
    not shift-equivariant (a control for the test above)."""
    from equivar.layers import LocallyConnected
    local = LocallyConnected(1, 2, (3,), (16,), stride=(1,), dilation=(1,), padding="CIRCULAR", rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (1, 16, 1))
    assert not np.allclose(local(shift(x, (3,))), shift(local(x), (3,)), atol=1e-3)


@pytest.mark.slow
def test_cnn_aps_downsampling_ingredients_can_be_swapped():
    """downsample_mode swaps cnn_aps's adaptive polyphase sampling for a blur, an ideal low-pass or plain
    subsampling (to see each ingredient's share); only the adaptive one keeps exact roll invariance."""
    options = zoo_options("cnn_aps", channels=[4, 4, 8, 8])
    x = jax.random.normal(jax.random.key(0), (8, 40, 1))
    for mode, exact in (("aps", True), ("blur", False), ("fourier", False), ("subsample", False)):
        model = build_model(target("cnn_aps"), (40, 1), 10, dict(options, downsample_mode=mode), nnx.Rngs(0))
        y = model(x)
        moved = float(jnp.abs(model(jnp.roll(x, 1, axis=1)) - y).max())
        assert (moved == 0.0) == exact, mode
