import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivar.data import Synthetic
from equivar.execution import plan_execution
from equivar.models import build_model
from equivar.train import SeedTrainer, TrainOptions, init_states, make_optimizer, seed_keys, take_seed

from support import target

SPEC = TrainOptions(epochs=2, batch_size=16, learning_rate=3e-3)


@pytest.fixture(scope="module")
def data():
    return Synthetic(rank=1, size=16, n_classes=3, n_train=64, n_test=32, seed=1).load()


def _train(data, kind, packing, n_seeds=2, base_seed=0, spec=SPEC, max_traces=None, steps_per_call=1,
           side_by_side_min_calls=None):
    build = lambda rngs: build_model(target(kind), data.input_shape, data.n_classes, {"channels": [4, 8],
                                                                              "hidden": [16]}
                                     if kind == "lenet" else {"hidden": [32]}, rngs)
    tx = make_optimizer(spec)
    keys = seed_keys(base_seed, n_seeds)
    graphdef, states = init_states(build, tx, keys)
    plan = plan_execution(packing, steps_per_call=steps_per_call)
    if side_by_side_min_calls is not None:
        plan = dataclasses.replace(plan, side_by_side_min_calls=side_by_side_min_calls)
    trainer = SeedTrainer(graphdef, tx, plan, max_traces=max_traces, augment_shift=spec.augment_shift)
    states, history = trainer.fit(states, jnp.asarray(data.x_train), jnp.asarray(data.y_train), keys, spec)
    return states, history, trainer


@pytest.mark.slow
def test_training_reduces_the_loss():
    aligned = Synthetic(rank=1, size=16, n_classes=3, n_train=64, n_test=32, max_offset=0, seed=1).load()
    _, history, _ = _train(aligned, "mlp", "loop", spec=TrainOptions(epochs=15, batch_size=16, learning_rate=1e-2))
    assert history.loss.shape == (2, 15)
    assert np.all(history.loss[:, -1] < 0.5 * history.loss[:, 0])


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlp", "lenet"])
def test_vmapped_seeds_equal_seeds_trained_alone(data, kind):
    """The same seeds, packed with vmap or trained one by one, give the same parameters (float tolerance)."""
    packed, h_packed, _ = _train(data, kind, "vmap", n_seeds=2)
    for s in range(2):
        alone, h_alone, _ = _train(data, kind, "loop", n_seeds=1, base_seed=s)
        for a, b in zip(jax.tree.leaves(take_seed(packed.params, s)), jax.tree.leaves(alone.params)):
            np.testing.assert_allclose(a, b[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(h_packed.loss[s], h_alone.loss[0], rtol=1e-4)


def test_seeds_differ(data):
    states, _, _ = _train(data, "mlp", "loop", n_seeds=2)
    a, b = (jax.tree.leaves(take_seed(states.params, s))[0] for s in range(2))
    assert not np.allclose(a, b)


@pytest.mark.slow
def test_training_is_deterministic(data):
    a, ha, _ = _train(data, "mlp", "loop")
    b, hb, _ = _train(data, "mlp", "loop")
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(ha.loss, hb.loss)


@pytest.mark.parametrize("packing", ["loop", pytest.param("vmap", marks=pytest.mark.slow)])
def test_step_compiles_once(data, packing):
    """Every seed and epoch reuses one traced step (chex raises on a second trace), compiled once per device
    the seeds run on (loop packing spreads them over the CPU's devices; vmap runs them as one)."""
    chex.clear_trace_counter()  # the counter is global per function; other tests traced it already
    _, _, trainer = _train(data, "lenet", packing, n_seeds=2, max_traces=1)
    devices = 1  # a short run: one device (long ones spread the seeds, compiling once per device)
    assert trainer.step._cache_size() == devices


@pytest.mark.slow
@pytest.mark.parametrize("packing", ["loop", "vmap"])
def test_steps_scanned_in_one_call_equal_steps_called_one_by_one(data, packing):
    """steps_per_call=3 on 4 steps per epoch (a scan of 3, then a remainder of 1) gives the same training."""
    stepwise, h_stepwise, _ = _train(data, "lenet", packing)
    scanned, h_scanned, trainer = _train(data, "lenet", packing, steps_per_call=3)
    for a, b in zip(jax.tree.leaves(stepwise.params), jax.tree.leaves(scanned.params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(h_stepwise.loss, h_scanned.loss, rtol=1e-4)
    np.testing.assert_allclose(h_stepwise.accuracy, h_scanned.accuracy, atol=1e-6)
    assert trainer.multi_step._cache_size() == 2  # the full chunk and the remainder


@pytest.mark.slow
def test_shift_augmentation_draws_per_seed_and_step_and_min_steps_adds_epochs(data):
    """Augmented training differs from plain training, is reproducible, and min_steps stretches epochs."""
    aug = TrainOptions(epochs=2, batch_size=16, learning_rate=3e-3, augment_shift=3)
    plain, _, _ = _train(data, "mlp", "loop")
    a, _, _ = _train(data, "mlp", "loop", spec=aug)
    b, _, _ = _train(data, "mlp", "loop", spec=aug)
    leaves = lambda s: jax.tree.leaves(s.params)  # noqa: E731
    assert not np.allclose(leaves(plain)[0], leaves(a)[0])
    for x, y in zip(leaves(a), leaves(b)):
        np.testing.assert_array_equal(x, y)
    longer = TrainOptions(epochs=2, batch_size=16, min_steps=20)
    assert longer.epochs_for(64) == 5 and longer.epochs_for(1000) == 2
    _, history, _ = _train(data, "mlp", "loop", spec=longer)
    assert history.loss.shape == (2, 5)


def test_long_jobs_spread_seeds_over_the_cpu_devices_short_ones_stay_on_one():
    plan = plan_execution("loop")
    assert len(plan.seed_devices(3, calls_per_seed=10)) == 1
    assert len(plan.seed_devices(3, calls_per_seed=10**4)) == min(3, plan.n_devices, len(jax.local_devices()))
    assert len(plan.seed_devices(1, calls_per_seed=10**4)) == 1


@pytest.mark.slow
@pytest.mark.skipif(len(jax.local_devices()) < 2, reason="needs two devices (EQUIVAR_CPU_DEVICES=2, the default)")
def test_seeds_side_by_side_on_two_devices_equal_seeds_on_one(data):
    """Seed i on device i, steps interleaved: bit for bit the models and losses of one device."""
    one, h_one, _ = _train(data, "lenet", "loop")
    two, h_two, trainer = _train(data, "lenet", "loop", side_by_side_min_calls=1)  # this short run spreads too
    assert trainer.step._cache_size() == 2  # the step compiled on each device: the seeds did spread
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(h_one.loss, h_two.loss)


def test_a_second_training_of_the_same_architecture_reuses_the_first_ones_programs(monkeypatch):
    """trainer_for: one SeedTrainer per (architecture, optimizer, plan) in a process, so its jitted steps are
    traced once; other parameters (another seed, another region) are the same program, another learning rate
    is another optimizer."""
    from flax import nnx

    from equivar.train import trainer_for

    plan = plan_execution("loop")
    spec = TrainOptions(epochs=1, batch_size=8)
    first = nnx.split(build_model("equivar.models.MLP", (12, 1), 3, {"hidden": [5]}, nnx.Rngs(0)))[0]
    again = nnx.split(build_model("equivar.models.MLP", (12, 1), 3, {"hidden": [5]}, nnx.Rngs(7)))[0]
    wider = nnx.split(build_model("equivar.models.MLP", (12, 1), 3, {"hidden": [6]}, nnx.Rngs(0)))[0]
    trainer = trainer_for(first, spec, plan)
    assert trainer_for(again, spec.model_copy(update={"epochs": 5}), plan) is trainer
    assert trainer_for(wider, spec, plan) is not trainer
    assert trainer_for(first, spec.model_copy(update={"learning_rate": 0.5}), plan) is not trainer
    assert trainer_for(first, spec, plan_execution("vmap")) is not trainer
    # and the reused trainer trains: two fits of fresh seeds trace its step once
    x, y = jnp.ones((16, 12, 1)), jnp.zeros((16,), jnp.int32)
    tx = make_optimizer(spec)
    traced = []
    step = trainer.step
    monkeypatch.setattr(trainer, "step", lambda *a: traced.append(step._cache_size()) or step(*a))
    for seed in (0, 1):
        _, states = init_states(lambda r: build_model("equivar.models.MLP", (12, 1), 3, {"hidden": [5]}, r), tx,
                                seed_keys(seed, 1))
        trainer.fit(states, x, y, seed_keys(seed, 1), spec)
    assert traced and max(traced) == 1
