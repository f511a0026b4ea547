"""Receptive fields three ways (forward, backward, gradient support) and parameter counts."""

import jax
import numpy as np
import pytest
from flax import nnx

from equivar.anatomy import anatomy, exact_support, layer_steps
from equivar.errors import ConfigError
from equivar.models import build_model

from support import ZOO_PARAMS, target

PADDINGS = ["VALID", "SAME", "CIRCULAR"]


def random_stack(rng: np.random.Generator, rank: int) -> tuple[list[dict], tuple[int, ...]]:
    """1-4 windowed layers with random kernels, strides, dilations, paddings and pooling types."""
    layers = []
    for _ in range(rng.integers(1, 5)):
        if rng.random() < 0.6:
            layers.append({"type": "conv", "features": int(rng.integers(1, 4)), "kernel": int(rng.integers(1, 5)),
                           "stride": int(rng.integers(1, 3)), "dilation": int(rng.integers(1, 3)),
                           "padding": str(rng.choice(PADDINGS))})
            layers.append({"type": "activation", "fn": "relu"})
        else:
            layers.append({"type": "pool", "kind": str(rng.choice(["max", "mean"])),
                           "window": int(rng.integers(1, 4)), "stride": int(rng.integers(1, 4)),
                           "padding": str(rng.choice(PADDINGS))})
    size = int(rng.integers(12, 31)) if rank == 1 else int(rng.integers(9, 17))
    return layers, (size,) * rank + (int(rng.integers(1, 3)),)


@pytest.mark.slow
@pytest.mark.parametrize("rank", [1, 2])
def test_analytic_field_equals_gradient_support_on_random_stacks(rank):
    """For every layer of random stacks: forward = backward analysis, and the exact analytic support (holes
    of dilation, zero-padding cut-offs, circular wrap-around) equals the support of the input gradient."""
    rng = np.random.default_rng(rank)
    checked = 0
    while checked < (4 if rank == 1 else 3):
        layers, shape = random_stack(rng, rank)
        try:
            model = build_model(target("stack"), shape, 3, {"layers": layers}, nnx.Rngs(int(rng.integers(1 << 20))))
        except ConfigError:  # an impossible shape (the stack shrank the input to nothing): draw again
            continue
        result = anatomy(model, shape, jax.random.key(checked), n_inputs=512)
        for row in result["layers"]:
            assert row["forward_equals_backward"], (layers, shape, row)
            assert row["empirical_equals_analytic"], (layers, shape, row)
        checked += 1


@pytest.mark.slow
def test_the_lectures_problem_1_answers():
    """28x28x1, two [5x5 conv, ReLU, 2x2 max-pool] blocks with 16 and 32 channels, dense 512, dense 10."""
    model = build_model(target("lenet"), (28, 28, 1), 10, {}, nnx.Rngs(0))
    rows = {r["layer"]: r for r in anatomy(model, (28, 28, 1))["layers"]}
    expected = {  # layer: (output shape, parameters, receptive field, jump)
        "conv1": ([24, 24, 16], 5 * 5 * 1 * 16 + 16, 5, 1),
        "pool1": ([12, 12, 16], 0, 6, 2),
        "conv2": ([8, 8, 32], 5 * 5 * 16 * 32 + 32, 14, 2),
        "pool2": ([4, 4, 32], 0, 16, 4),
        "flatten": ([512], 0, 16, 4),
        "fc1": ([512], 512 * 512 + 512, 28, None),
        "logits": ([10], 512 * 10 + 10, 28, None),
    }
    for name, (shape, params, rf, jump) in expected.items():
        row = rows[name]
        assert row["output_shape"] == shape and row["params"] == params, row
        assert row["rf_forward"] == [rf, rf] == row["rf_backward"], row
        assert row["jump"] == (None if jump is None else [jump, jump]), row


@pytest.mark.slow
@pytest.mark.parametrize("kind", ZOO_PARAMS)
@pytest.mark.parametrize("shape", [(28, 28, 1), (40, 1)])
def test_parameter_counts_equal_the_models_own_totals(kind, shape):
    options = {"layers": [{"type": "conv", "features": 4, "kernel": 3}]} if kind == "stack" else {}
    model = build_model(target(kind), shape, 10, options, nnx.Rngs(0))
    result = anatomy(model, shape)
    assert result["total_params"] == result["model_param_total"]
    if kind == "paper_mlp" or target(kind).startswith("equivar.attention."):  # residual sums: no chain
        assert "analytic_unavailable" in result
    elif kind == "alias_free":  # Fourier resampling: every output sample depends on every input sample
        assert "every output sample depends on every input sample" in result["analytic_unavailable"]
    else:
        assert result["forward_equals_backward"]


@pytest.mark.slow
def test_local_model_has_lenets_fields_without_sharing():
    lenet = anatomy(build_model(target("lenet"), (28, 28, 1), 10, {}, nnx.Rngs(0)), (28, 28, 1))
    local = anatomy(build_model(target("local"), (28, 28, 1), 10, {}, nnx.Rngs(0)), (28, 28, 1))
    assert [r["rf_forward"] for r in lenet["layers"]] == [r["rf_forward"] for r in local["layers"]]
    conv1 = {r["layer"]: r for r in local["layers"]}["conv1"]
    assert conv1["params"] == 24 * 24 * (5 * 5 * 16 + 16)  # one kernel and bias per output position
    assert local["total_params"] == 1_328_650


@pytest.mark.slow
def test_positions_no_window_reaches_are_outside_every_field():
    """On 29x29 the last row and column fall off both 2x2 poolings: no unit depends on them."""
    model = build_model(target("lenet"), (29, 29, 1), 10, {}, nnx.Rngs(0))
    steps = layer_steps(model, (29, 29, 1))
    logits = exact_support(steps, len(steps) - 1, (29, 29))
    assert [len(a) for a in logits] == [28, 28]
    result = anatomy(model, (29, 29, 1), jax.random.key(0))
    assert result["empirical_equals_analytic"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlp", "lenet", "local", "cnn_gap"])
def test_every_zoo_model_gradient_support_equals_its_analytic_field(kind):
    """The zoo at its default options on MNIST-1D's 40x1 (the 28x28 case is in test_experiments)."""
    model = build_model(target(kind), (40, 1), 10, {}, nnx.Rngs(0))
    result = anatomy(model, (40, 1), jax.random.key(0))
    assert result["forward_equals_backward"] and result["empirical_equals_analytic"]
