"""Anti-aliased pooling layers: shapes, the binomial low-pass, and polyphase sampling's exact invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from equivar.layers import Blur, PolyphaseDownsample, Pool, _pad_for_window, binomial_filter
from equivar.models import build_model
from equivar.transforms import shift

from support import target


def test_binomial_taps():
    np.testing.assert_allclose(binomial_filter(3), [0.25, 0.5, 0.25])
    np.testing.assert_allclose(binomial_filter(5), np.array([1, 4, 6, 4, 1]) / 16)


@pytest.mark.parametrize("padding,shape,stride,expected", [
    ("SAME", (2, 24, 3), (2,), (2, 12, 3)), ("CIRCULAR", (2, 23, 3), (2,), (2, 12, 3)),
    ("VALID", (2, 24, 3), (2,), (2, 11, 3)), ("SAME", (2, 9, 8, 3), (2, 2), (2, 5, 4, 3)),
    ("CIRCULAR", (1, 12, 12, 1), (3, 3), (1, 4, 4, 1))])
def test_blur_shapes(padding, shape, stride, expected):
    assert Blur(3, stride, padding)(jnp.ones(shape)).shape == expected


@pytest.mark.slow
def test_blur_is_a_depthwise_binomial_convolution():
    x = jax.random.normal(jax.random.key(0), (2, 10, 9, 3))
    taps = binomial_filter(3)
    kernel = jnp.tile((taps[:, None] * taps[None, :])[:, :, None, None], (1, 1, 1, 3))
    ref = jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                       feature_group_count=3)
    np.testing.assert_allclose(Blur(3, (2, 2), "SAME")(x), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(Blur(3, (1, 1), "SAME")(jnp.ones((1, 6, 6, 1)))[0, 2:4, 2:4, 0], 1.0, rtol=1e-6)


@pytest.mark.parametrize("kind,window,stride,padding,shape", [
    ("max", (2, 2), (1, 1), "VALID", (2, 9, 8, 3)), ("max", (3, 3), (2, 2), "SAME", (2, 9, 8, 3)),
    ("mean", (2, 2), (1, 1), "SAME", (2, 7, 7, 2)), ("max", (3,), (1,), "CIRCULAR", (2, 11, 3)),
    ("mean", (4,), (3,), "VALID", (2, 13, 3)), ("max", (5, 5), (1, 1), "VALID", (1, 9, 9, 2))])
def test_overlapping_pool_equals_reduce_window(kind, window, stride, padding, shape):
    """Overlapping windows are sliced taps (<= 16) or one reduce_window (more): the same pooling either way."""
    x = jax.random.normal(jax.random.key(1), shape)
    pool = Pool(kind, window, stride, padding)
    padded = x if padding == "VALID" else _pad_for_window(x, pool.geometry, -jnp.inf if kind == "max" else 0.0)
    op, init = (jax.lax.max, -jnp.inf) if kind == "max" else (jax.lax.add, 0.0)
    ref = jax.lax.reduce_window(padded, init, op, (1, *window, 1), (1, *stride, 1), "VALID")
    ref = ref if kind == "max" else ref / np.prod(window)
    np.testing.assert_allclose(pool(x), ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("window,stride,padding,shape", [((2, 2), (1, 1), "VALID", (2, 12, 12, 4)),
                                                       ((3,), (2,), "SAME", (3, 11, 2))])
def test_sliced_max_pool_has_reduce_window_gradient_bit_for_bit_even_on_ties(window, stride, padding, shape):
    """Each window's gradient goes to its first maximal tap, summed per input in select-and-scatter's order:
    on inputs full of ties (ReLU'd, rounded to halves) the JVP and the gradient are reduce_window's exactly."""
    x = jnp.round(jax.nn.relu(jax.random.normal(jax.random.key(2), shape)) * 2) / 2
    pool = Pool("max", window, stride, padding)

    def reference(v):
        padded = v if padding == "VALID" else _pad_for_window(v, pool.geometry, -jnp.inf)
        return jax.lax.reduce_window(padded, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *stride, 1), "VALID")

    cotangent = jax.random.normal(jax.random.key(3), reference(x).shape)
    grads = [jax.jit(jax.grad(lambda v, f=f: (f(v) * cotangent).sum()))(x) for f in (pool, reference)]
    np.testing.assert_array_equal(grads[0], grads[1])
    tangent = jax.random.normal(jax.random.key(4), x.shape)
    tangents = [jax.jvp(f, (x,), (tangent,))[1] for f in (pool, reference)]
    np.testing.assert_array_equal(tangents[0], tangents[1])
    assert float(jnp.mean(x == 0)) > 0.3  # the ties this test is about are there


@pytest.mark.parametrize("shape,stride,expected", [((2, 12, 4), (2,), (2, 6, 4)), ((2, 13, 4), (2,), (2, 6, 4)),
                                                   ((3, 8, 6, 2), (2, 3), (3, 4, 2, 2))])
def test_polyphase_shapes(shape, stride, expected):
    assert PolyphaseDownsample(stride)(jnp.ones(shape)).shape == expected


@pytest.mark.slow
def test_polyphase_keeps_the_largest_component_and_follows_circular_shifts():
    x = jax.random.normal(jax.random.key(1), (4, 12, 10, 3))
    aps = PolyphaseDownsample((2, 2))
    y = aps(x)
    components = [x[:, i::2, j::2] for i in range(2) for j in range(2)]
    norms = np.stack([np.sum(np.square(c), axis=(1, 2, 3)) for c in components], axis=1)
    for n, best in enumerate(norms.argmax(1)):
        np.testing.assert_array_equal(y[n], components[best][n])
    # any circular shift of the input: each example's output is a circular shift of its output (no aliasing)
    for offset in [(1, 0), (0, 1), (3, 5), (1, 1)]:
        ys = aps(shift(x, offset))
        for n in range(x.shape[0]):
            assert any(np.array_equal(ys[n], shift(y[n:n + 1], (a, b))[0]) for a in range(6) for b in range(5)), \
                (offset, n)
    # the control: fixed subsampling x[::2] does not follow an odd shift
    assert not any(np.array_equal(shift(x, (1, 0))[:, ::2, ::2], shift(x[:, ::2, ::2], (a, 0))) for a in range(6))


@pytest.mark.slow
def test_circular_aps_lenet_with_global_pool_is_exactly_invariant():
    """Circular convs + APS downsampling + global pooling: logits identical under every circular shift."""
    options = {"layers": [
        {"type": "conv", "features": 4, "kernel": 3, "padding": "CIRCULAR"}, {"type": "activation", "fn": "relu"},
        {"type": "pool", "kind": "max", "window": 2, "stride": 1, "padding": "CIRCULAR"},
        {"type": "polyphase", "stride": 2},
        {"type": "conv", "features": 6, "kernel": 3, "padding": "CIRCULAR"}, {"type": "activation", "fn": "relu"},
        {"type": "polyphase", "stride": 2},
        {"type": "global_pool", "kind": "mean"}]}
    model = build_model(target("stack"), (16, 16, 1), 5, options, nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(2), (3, 16, 16, 1))
    base = model(x)
    for offset in [(1, 0), (0, 3), (5, 7), (15, 15)]:
        np.testing.assert_allclose(model(shift(x, offset)), base, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["blurmax", "aps"])
@pytest.mark.parametrize("shape", [(28, 28, 1), (40, 1)])
def test_lenet_takes_anti_aliased_pooling(pool, shape):
    model = build_model(target("lenet"), shape, 10, {"pool": pool}, nnx.Rngs(0))
    assert model(jnp.ones((2, *shape))).shape == (2, 10)
    assert any(name.startswith("blur" if pool == "blurmax" else "aps") for name in model.layer_names)


@pytest.mark.slow
def test_pooling_invariance_on_trained_features_keeps_its_defining_facts(tmp_path):
    """Global pooling of circular features is exactly invariant and APS exactly equivariant, with trained
    weights too; the trained feature net is saved like any trained model."""
    from equivar.run import run_experiment

    from support import compose_raw
    raw = compose_raw(["experiment=pooling_invariance", "dataset=synthetic", "n_seeds=2", "train.epochs=1",
                       "pooling_invariance.features=trained", "pooling_invariance.n_examples=16",
                       "pooling_invariance.sizes=[2,4]", "shift.max=4", "pooling_invariance.channels=4"])
    metrics = run_experiment(raw, tmp_path).model_dump()
    pools = metrics["models"]
    assert max(pools["global_mean"]["error"]["mean"]) < 1e-6 and max(pools["global_max"]["error"]["mean"]) < 1e-6
    assert max(pools["aps4"]["shift_aligned_error"]["mean"]) < 1e-6 and max(pools["max4"]["error"]["mean"]) > 0.1
    assert metrics["features"]["weights"].startswith("trained")
    assert (tmp_path / "checkpoints" / "pooling_features.json").is_file()
