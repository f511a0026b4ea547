"""Evaluation chunking: calls sized by the model's largest activation, the same predictions whatever the size."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from equivar.evaluate import ShiftEvaluator, largest_activation_bytes
from equivar.execution import EVAL_MIN_IMAGES_PER_CALL, eval_images_per_call, plan_execution
from equivar.models import build_model
from equivar.train import make_predict
from equivar.transforms import shift_grid

from support import target


def _lenet(shape, **options):
    model = build_model(target("lenet"), shape, 10, options, nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, (params, rest)


def test_largest_activation_is_lenets_first_conv_output():
    """LeNet on 28x28: conv1's 24x24x16 float32 output (36,864 bytes) is its largest array per image."""
    graphdef, variables = _lenet((28, 28, 1))
    example = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
    assert largest_activation_bytes(make_predict(graphdef), variables, example) == 24 * 24 * 16 * 4
    graphdef, variables = _lenet((28, 28, 1), channels=[8, 32])  # now conv2's 8x8x32 is not larger: 24x24x8
    assert largest_activation_bytes(make_predict(graphdef), variables, example) == 24 * 24 * 8 * 4


def test_images_per_call_follow_the_activation_size_within_bounds():
    plan = plan_execution(backend="cpu")
    assert eval_images_per_call(plan, plan.eval_bytes_per_call // 100) == 100
    assert eval_images_per_call(plan, 1) == plan.eval_images_per_call  # tiny activations: the cap
    assert eval_images_per_call(plan, plan.eval_bytes_per_call * 10) == EVAL_MIN_IMAGES_PER_CALL
    unbounded = dataclasses.replace(plan, eval_bytes_per_call=None)  # accelerators: a fixed number of images
    assert eval_images_per_call(unbounded, 10**6) == plan.eval_images_per_call


def test_largest_activation_looks_inside_nested_programs():
    """The largest array may live inside a jitted function or a rematerialised block (whose jaxpr is bare)."""
    example = jax.ShapeDtypeStruct((1, 8), jnp.float32)
    wide = lambda y: jnp.tile(y, (1, 64)).sum(axis=1)  # (1, 512) float32 inside, (1,) outside
    assert largest_activation_bytes(jax.jit(wide), example) == 512 * 4
    assert largest_activation_bytes(jax.checkpoint(wide), example) == 512 * 4


@pytest.mark.slow
@pytest.mark.parametrize("packing", ["loop", "vmap"])
def test_predictions_do_not_depend_on_the_call_size(packing):
    """The grid cut into 32-image calls (with padding) gives exactly the predictions of larger calls."""
    graphdef, (params, rest) = _lenet((12, 12, 1), channels=[4, 8], kernel=3, hidden=[16])
    stacked = jax.tree.map(lambda a: jnp.stack([a, a * 0.5]), (params, rest))  # two seeds
    x = np.asarray(jax.random.normal(jax.random.key(0), (40, 12, 12, 1)))
    offsets = shift_grid(1, 2)
    plan = plan_execution(packing, backend="cpu")
    small = dataclasses.replace(plan, eval_bytes_per_call=1)  # every call at the 32-image minimum
    big = dataclasses.replace(plan, eval_bytes_per_call=None)
    preds = [ShiftEvaluator(graphdef, "roll", p).predict(stacked, x, offsets) for p in (small, big)]
    assert preds[0].shape == (2, len(offsets), 40)
    np.testing.assert_array_equal(preds[0], preds[1])
    assert ShiftEvaluator(graphdef, "roll", small)._images_per_call(stacked, x) == EVAL_MIN_IMAGES_PER_CALL


@pytest.mark.parametrize("packing", [pytest.param("loop", marks=pytest.mark.slow), "vmap"])
def test_probabilities_are_the_softmax_of_each_shifted_input_in_any_chunking(packing):
    """With probabilities=True the classes are unchanged and every (shift, input) gets the softmax of the
    model's logits on that shifted input, however the grid is cut into calls."""
    graphdef, (params, rest) = _lenet((12, 12, 1), channels=[4, 8], kernel=3, hidden=[16])
    stacked = jax.tree.map(lambda a: jnp.stack([a, a * 0.5]), (params, rest))
    x = np.asarray(jax.random.normal(jax.random.key(1), (37, 12, 12, 1)))
    offsets = shift_grid(1, 2)
    plan = dataclasses.replace(plan_execution(packing, backend="cpu"), eval_bytes_per_call=1)
    evaluator = ShiftEvaluator(graphdef, "roll", plan, probabilities=True)
    classes, probs = evaluator.predict_with_probabilities(stacked, x, offsets)
    assert probs.shape == (2, len(offsets), 37, 10)
    np.testing.assert_array_equal(classes, ShiftEvaluator(graphdef, "roll", plan).predict(stacked, x, offsets))
    model = nnx.merge(graphdef, *jax.tree.map(lambda a: a[1], stacked))
    for s in (0, 5, len(offsets) - 1):
        expected = jax.nn.softmax(model(jnp.roll(x, tuple(offsets[s]), axis=(1, 2))))
        np.testing.assert_allclose(probs[1, s], expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="probabilities=True"):
        ShiftEvaluator(graphdef, "roll", plan).predict_with_probabilities(stacked, x, offsets)
