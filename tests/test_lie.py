"""Lie derivatives (float32, stated tolerances): exact jvp against finite differences on smooth models, zero
for equivariant pieces, the per-layer split summing to the whole, and the experiment end to end."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from equivar.alias_free import band_limit
from equivar.equivariance import layer_geometry_of
from equivar.introspect import to_inference, trace_layers
from equivar.lie import input_tangent, layer_contributions, lie_derivative, spectral_derivative
from equivar.models import build_model
from equivar.testing import assert_shift_equivariant, assert_shift_invariant
from equivar.transforms import fourier_shift


def _stack(shape, layers, seed=0):
    return to_inference(build_model("equivar.models.Stack", shape, 5, {"layers": layers}, nnx.Rngs(seed)))


SMOOTH = [{"type": "conv", "features": 4, "kernel": 3, "padding": "CIRCULAR"}, {"type": "activation", "fn": "tanh"},
          {"type": "conv", "features": 6, "kernel": 3, "stride": 2, "padding": "SAME"},
          {"type": "activation", "fn": "tanh"}, {"type": "pool", "kind": "mean", "window": 2}]


def _rel(a, b):
    return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(24, 2), (12, 10, 1)])
def test_jvp_matches_central_differences_on_a_smooth_model(shape):
    """Finite differences are no reference for ReLU/max-pool nets (kinks), so the model is smooth: tanh,
    mean pooling."""
    model = _stack(shape, SMOOTH)
    x = jax.random.normal(jax.random.key(1), (3, *shape))
    h = 1e-2
    for axis in range(len(shape) - 1):
        e = jnp.zeros(len(shape) - 1).at[axis].set(h)
        fd = (model(fourier_shift(x, e)) - model(fourier_shift(x, -e))) / (2 * h)
        exact = lie_derivative(model, x, "translate_x" if axis == len(shape) - 2 else "translate_y")
        assert _rel(exact, fd) < 1e-3


@pytest.mark.slow
def test_the_translation_tangent_is_the_derivative_of_the_fourier_shift():
    x = jax.random.normal(jax.random.key(0), (2, 12, 9, 3))
    for axis, gen in ((0, "translate_y"), (1, "translate_x")):
        e = jnp.zeros(2).at[axis].set(1.0)
        along = jax.jvp(lambda t, e=e: fourier_shift(x, t * e), (jnp.float32(0),), (jnp.float32(1),))[1]
        np.testing.assert_allclose(input_tangent(x, gen), along, atol=1e-5)


def test_rotation_and_scaling_fields_on_a_centred_blob():
    """A centred radial image is unchanged by rotation (tangent ~ 0) but not by scaling."""
    n = 32
    p = jnp.arange(n) - (n - 1) / 2
    blob = jnp.exp(-(p[:, None] ** 2 + p[None, :] ** 2) / (2 * 3.0 ** 2))[None, :, :, None]
    assert float(jnp.abs(input_tangent(blob, "rotate")).max()) < 1e-4
    # scaling moves it: d/dt g(e^-t r) = -r g'(r) = (r / sigma)^2 g for g = exp(-r^2 / (2 sigma^2))
    r2 = (p[:, None] ** 2 + p[None, :] ** 2)[None, :, :, None]
    np.testing.assert_allclose(input_tangent(blob, "scale"), r2 / 3.0 ** 2 * blob, atol=2e-4)


@pytest.mark.slow
def test_a_linear_circular_convolution_commutes_and_relu_after_it_does_not():
    x = jax.random.normal(jax.random.key(2), (4, 20, 3))
    conv = _stack((20, 3), [{"type": "conv", "features": 4, "kernel": 5, "padding": "CIRCULAR"}]).conv1
    a_x = -spectral_derivative(x, 0)
    h = conv(x)
    own_conv = jax.jvp(conv, (x,), (a_x,))[1] - (-spectral_derivative(h, 0))
    assert float(jnp.linalg.norm(own_conv) / jnp.linalg.norm(spectral_derivative(h, 0))) < 1e-6
    own_relu = jax.jvp(jax.nn.relu, (h,), (-spectral_derivative(h, 0),))[1] - (
        -spectral_derivative(jax.nn.relu(h), 0))
    assert float(jnp.linalg.norm(own_relu) / jnp.linalg.norm(spectral_derivative(h, 0))) > 1e-2
    # the finite counterpart of both: the convolution commutes with sub-pixel shifts, ReLU after it does not
    xb = band_limit(x)
    assert_shift_equivariant(conv, xb, [0.5, 0.25, 1.75], rtol=1e-5)
    with pytest.raises(AssertionError, match=r"worst shift \("):
        assert_shift_equivariant(lambda v: jax.nn.relu(conv(v)), xb, [0.5, 0.25, 1.75], rtol=1e-5)


@pytest.mark.parametrize("shape", [(24, 1), pytest.param((12, 12, 1), marks=pytest.mark.slow)])
def test_a_circular_linear_net_with_global_pooling_has_zero_lee(shape):
    layers = [{"type": "conv", "features": 4, "kernel": 3, "padding": "CIRCULAR"},
              {"type": "conv", "features": 4, "kernel": 3, "dilation": 2, "padding": "CIRCULAR"},
              {"type": "global_pool", "kind": "mean"}]
    model = _stack(shape, layers)
    x = jax.random.normal(jax.random.key(3), (5, *shape))
    for gen in ("translate_x",) if len(shape) == 2 else ("translate_y", "translate_x"):
        d = lie_derivative(model, x, gen)
        scale = jnp.linalg.norm(jax.jvp(lambda v: model.conv1(v), (x,), (input_tangent(x, gen),))[1])
        assert float(jnp.linalg.norm(d) / scale) < 1e-6
    # zero Lie derivative, and invariant to finite shifts too: every roll, and half a sample
    rank = len(shape) - 1
    assert_shift_invariant(model, x, [(s,) * rank for s in range(1, shape[0])], rtol=1e-5)
    assert_shift_invariant(model, x, [(0.5,) * rank], mode="fourier", rtol=1e-5)


@pytest.mark.parametrize("kind,shape,options", [
    pytest.param("equivar.models.LeNet", (28, 1), {"channels": [4, 6], "kernel": 3, "hidden": [16]},
                 marks=pytest.mark.slow),
    pytest.param("equivar.models.LeNet", (12, 12, 1), {"channels": [3, 4], "kernel": 3, "hidden": [8],
                                                       "pool": "blurmax"}, marks=pytest.mark.slow),
    pytest.param("equivar.models.CNNGap", (20, 2), {"channels": [4, 4], "dilations": [1, 2]},
                 marks=pytest.mark.slow),
    ("equivar.models.MLP", (10, 1), {"hidden": [16]}),
])
def test_layer_contributions_sum_to_the_end_to_end_derivative(kind, shape, options):
    model = to_inference(build_model(kind, shape, 5, options, nnx.Rngs(4)))
    x = jax.random.normal(jax.random.key(5), (6, *shape))
    names, jumps, _ = layer_geometry_of(model, shape)
    trace = trace_layers(model, shape)
    for axis in range(len(shape) - 1):
        total, parts = layer_contributions(trace.layers, [jumps[n] for n in names], x, axis)
        gen = "translate_x" if axis == len(shape) - 2 else "translate_y"
        np.testing.assert_allclose(total, lie_derivative(model, x, gen), atol=1e-5)
        assert _rel(sum(parts.values()), total) < 1e-4
    if kind.endswith("CNNGap"):  # circular stride-1 convolutions commute: only ReLU and global max pool break it
        assert all(float(jnp.abs(parts[n]).max()) < 1e-5 for n in parts if n.startswith("conv"))


@pytest.mark.parametrize("name,shape,between", [
    ("ListSeqNet", (16, 1), "model: add+reduce max"),  # nnx.List blocks, functional max, nnx.Sequential head
    ("LinenSeq", (16, 1), "net.layers_1 (relu)"),  # Linen nn.Sequential: read entry by entry, nn.relu a layer
    pytest.param("ListSeqNet", (8, 8, 1), "model: add+reduce max", marks=pytest.mark.slow),
    ("equivar.attention.ViT", (16, 1), "softmax"),  # reshapes into heads, softmax, residual sums: between layers
    ("LinenViT", (16, 1), "softmax"),  # Linen: nn.MultiHeadDotProductAttention, residual sums in the model's body
    pytest.param("equivar.attention.ViT", (8, 8, 1), "softmax", marks=pytest.mark.slow),
])
def test_any_model_splits_into_rows_that_sum_to_its_derivative(name, shape, between):
    """Models whose forward pass computes between their layers: the computation between layers is a row of its
    own, named by what it does, and the rows' contributions add up to the model's derivative (float32)."""
    import sys

    from equivar.dataflow import contributions, model_split

    sys.path.insert(0, str(Path(__file__).parent / "user_models"))
    options = {"patch": 2, "dim": 8, "depth": 2, "heads": 2} if name.endswith("ViT") else {}
    model = to_inference(build_model(name if "." in name else f"mylab.nets.{name}", shape, 5, options,
                                     nnx.Rngs(4)))
    x = jax.random.normal(jax.random.key(5), (6, *shape))
    rows = [r.name for r in model_split(model, x).rows]
    between = next(r for r in rows if r == between or (between in r and not r.endswith(")")))  # a row between layers
    for axis in range(len(shape) - 1):
        total, parts = jax.jit(lambda v, a=axis: contributions(model_split(model, v), v, a))(x)
        assert set(parts) == set(rows)  # (a jitted dict comes back in key order)
        gen = "translate_x" if axis == len(shape) - 2 else "translate_y"
        np.testing.assert_allclose(total, lie_derivative(model, x, gen), atol=1e-5)
        assert _rel(sum(parts.values()), total) < 1e-4
        without = sum(p for k, p in parts.items() if k != between)  # the row between layers carries part of it
        assert _rel(without, total) > 1e-2


@pytest.mark.slow
def test_lie_derivative_experiment_tiny(tmp_path, figures):
    from equivar.run import run_experiment

    from support import compose_raw
    raw = compose_raw(["experiment=lie_derivative", "dataset=synthetic", "n_seeds=2", "train.epochs=1",
                       "models=[lenet,cnn_gap]", "zoo.lenet.channels=[4,8]", "zoo.lenet.kernel=3",
                       "zoo.lenet.hidden=[16]", "zoo.cnn_gap.channels=[4,8]", "zoo.cnn_gap.dilations=[1,2]",
                       "lie_derivative.n_examples=16", "lie_derivative.sawtooth_inputs=2",
                       "lie_derivative.sawtooth_step=0.25"])
    metrics = run_experiment(raw, tmp_path).model_dump()
    gap = metrics["models"]["cnn_gap"]
    assert gap["consistency"]["mean"] == 1.0  # exactly invariant to integer rolls...
    lee = gap["lee"]["translate_x"]["probs"]["mse"]  # ...but not to sub-pixel shifts; the mean is the seeds'
    assert lee["n"] == 2 and lee["mean"] == pytest.approx(
        np.mean([s["translate_x"]["probs"]["mse"] for s in gap["per_seed"]["lee"]])) and lee["mean"] > 1e-6
    assert gap["layer_sum_residual"] < 1e-4 and metrics["models"]["lenet"]["layer_sum_residual"] < 1e-4
    assert list(gap["layers"]["translate_x"]["logits"])[:2] == ["conv1 (Conv)", "act1 (Activation)"]  # call order
    assert len(gap["sawtooth"]["probability"]) == 2 and len(gap["sawtooth"]["shifts"]) == 9
    assert {"lie_layers.png", "lie_sawtooth.png", "lie_vs_consistency.png"} <= {p.name for p in tmp_path.glob("*.png")}
    lines = (tmp_path / "summary.md").read_text().splitlines()  # one table row per model under its header
    header = next(i for i, line in enumerate(lines) if line.startswith("| model |"))
    assert lines[header] == ("| model | clean acc | consistency (roll shifts) | LEE translate_x | "
                             "largest layer contribution (translate_x) |")
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in lines[header + 2:]}
    assert set(rows) == {"lenet", "cnn_gap"} and all(len(r) == 5 for r in rows.values())
    top = max(gap["layers"]["translate_x"]["probs"], key=lambda k: gap["layers"]["translate_x"]["probs"][k]["mean"])
    assert rows["cnn_gap"][4].startswith(f"{top} (")
    scatter = figures["lie_vs_consistency.png"].axes  # each model a point with its seeds' spread on both axes
    bars = [c for ax in scatter for c in ax.containers]
    assert len(bars) == 4 and all(c.has_xerr and c.has_yerr for c in bars)
    for ax in figures["lie_layers.png"].axes:  # a squared norm: the axis starts at 0, the bars stay inside
        bottom, top = ax.get_ylim()
        assert bottom == 0 and top > max(p.get_height() for p in ax.patches)


def test_the_generators_measured_per_spatial_rank():
    from equivar.lie import generators

    assert generators(1) == ("translate_x",)
    assert generators(2) == ("translate_y", "translate_x", "rotate", "scale")
    assert generators(3) == ()
