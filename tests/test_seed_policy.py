"""The divergence guard records the first bad step and freezes the seed; one seed policy for every experiment
that trains (diverged seeds out of the means, per-seed status, run status, exit 3 when all diverged); seed
packings agree, augmentation streams included; the vmap evaluation path (the accelerators' default) on CPU."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import equivar.experiment as common
from equivar.config import load_experiment
from equivar.data import Synthetic
from equivar.evaluate import ShiftEvaluator
from equivar.execution import plan_execution
from equivar.experiment import read_result
from equivar.models import build_model
from equivar.results import RunStatus, SeedRecord
from equivar.run import run_experiment
from equivar.train import (
    SeedTrainer,
    TrainOptions,
    _order_key,
    epoch_order,
    init_states,
    make_optimizer,
    make_train_step,
    seed_keys,
    take_seed,
)
from equivar.transforms import shift_grid

from support import EXPERIMENT_NAMES, RUN_ELSEWHERE, TINY, compose_raw, target, validate_metrics


@pytest.fixture(scope="module")
def data():
    return Synthetic(rank=1, size=16, n_classes=3, n_train=64, n_test=32, seed=1).load()


SPEC = TrainOptions(epochs=2, batch_size=16, learning_rate=3e-3)


def _mlp(data, n_seeds=2, spec=SPEC):
    tx = make_optimizer(spec)
    keys = seed_keys(0, n_seeds)
    graphdef, states = init_states(
        lambda r: build_model(target("mlp"), data.input_shape, data.n_classes, {"hidden": [8]}, r), tx, keys)
    return graphdef, states, tx, keys, spec


def test_the_guard_records_the_first_non_finite_step_and_freezes_the_seed(data):
    """Steps 0..3 with batches finite, NaN, finite, NaN: diverged_at is 1 (not 3), and the parameters after
    the last step are those after step 0 (frozen: no later step, finite or not, moves them)."""
    graphdef, states, tx, _, _ = _mlp(data, n_seeds=1)
    state = take_seed(states, 0)
    step = jax.jit(make_train_step(graphdef, tx))
    x, y = jnp.asarray(data.x_train[:16]), jnp.asarray(data.y_train[:16])
    bad = x.at[3].set(jnp.nan)
    after = []
    for batch in ((x, y), (bad, y), (x, y), (bad, y)):
        state, _ = step(state, batch)
        after.append(jax.tree.map(np.asarray, state.params))
    assert int(state.diverged_at) == 1
    assert int(state.step) == 4
    for first, last in zip(jax.tree.leaves(after[0]), jax.tree.leaves(after[-1])):
        np.testing.assert_array_equal(first, last)
        assert np.isfinite(last).all()


def test_a_seed_that_diverges_at_step_0_stays_frozen(data):
    """With plain SGD (no optimizer state for the NaN to poison, as Adam's would), only the guard keeps the
    seed frozen after its first non-finite step."""
    graphdef, states, tx, _, _ = _mlp(data, n_seeds=1, spec=TrainOptions(optimizer="sgd", learning_rate=0.1))
    state = take_seed(states, 0)
    step = jax.jit(make_train_step(graphdef, tx))
    x, y = jnp.asarray(data.x_train[:16]), jnp.asarray(data.y_train[:16])
    new = state
    for batch in ((x.at[0].set(jnp.nan), y), (x, y), (x, y)):
        new, _ = step(new, batch)
    assert int(new.diverged_at) == 0
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params)):
        np.testing.assert_array_equal(a, b)


def test_the_guard_freezes_batchnorm_statistics_too():
    """A model with state beside its parameters (BatchNorm's running statistics): a finite step updates
    them, a non-finite one leaves them as they were, and the seed stays frozen."""
    from flax import nnx

    class Normed(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(4, 3, rngs=rngs)
            self.norm = nnx.BatchNorm(3, rngs=rngs)

        def __call__(self, x):
            return self.norm(self.dense(x))

    tx = make_optimizer(TrainOptions(learning_rate=1e-2))
    graphdef, states = init_states(lambda rngs: Normed(rngs), tx, seed_keys(0, 1))
    state = take_seed(states, 0)
    step = jax.jit(make_train_step(graphdef, tx))
    x = jax.random.normal(jax.random.key(1), (8, 4))
    y = jnp.arange(8) % 3
    healthy, _ = step(state, (x, y))
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.model_state),
                                                       jax.tree.leaves(healthy.model_state))]
    assert any(moved)  # the running statistics are state the step updates
    bad, _ = step(healthy, (x.at[0].set(jnp.nan), y))
    after, _ = step(bad, (x, y))
    assert int(after.diverged_at) == 1
    for a, b in zip(jax.tree.leaves(healthy.model_state), jax.tree.leaves(after.model_state)):
        a, b = np.asarray(a), np.asarray(b)
        if np.issubdtype(a.dtype, np.floating):
            np.testing.assert_array_equal(a, b)


def test_healthy_steps_move_the_parameters(data):
    """The freeze above is not a step that never updates: a finite batch changes every parameter array."""
    graphdef, states, tx, _, _ = _mlp(data, n_seeds=1)
    state = take_seed(states, 0)
    new, _ = jax.jit(make_train_step(graphdef, tx))(state, (jnp.asarray(data.x_train[:16]),
                                                             jnp.asarray(data.y_train[:16])))
    assert int(new.diverged_at) == -1
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params)):
        assert not np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
@pytest.mark.parametrize("steps_per_call", [1, 3])
def test_the_guard_is_the_same_under_scanned_steps(data, steps_per_call):
    """A NaN example poisons one batch per epoch: with 3 steps per call (a scan) the same first step is
    recorded as with one step per call, and the parameters stay finite."""
    graphdef, states, tx, keys, spec = _mlp(data)
    x = np.array(data.x_train)
    x[5] = np.nan
    trainer = SeedTrainer(graphdef, tx, plan_execution("loop", steps_per_call=steps_per_call))
    out, history = trainer.fit(states, jnp.asarray(x), jnp.asarray(data.y_train), keys, spec)
    reference = SeedTrainer(graphdef, tx, plan_execution("loop", steps_per_call=1)).fit(
        states, jnp.asarray(x), jnp.asarray(data.y_train), keys, spec)[1]
    np.testing.assert_array_equal(history.diverged_at, reference.diverged_at)
    assert (history.diverged_at >= 0).all() and (history.diverged_at < 4).all()
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(out.params))


def _poisoned_update_at(step: int):
    """An optax transformation that multiplies the update by inf at one step: finite loss and gradients, a
    non-finite parameter (the case the fast per-step guard leaves to the end-of-epoch replay)."""
    import optax

    def update(updates, count, params=None):
        poisoned = jax.tree.map(lambda u: jnp.where(count == step, u * jnp.inf, u), updates)
        return poisoned, count + 1

    return optax.GradientTransformation(lambda params: jnp.zeros((), jnp.int32), update)


@pytest.mark.parametrize("packing,steps_per_call", [  # scan and vmap in CI (--slow): the default run < 3 min
    ("loop", 1), pytest.param("loop", 3, marks=pytest.mark.slow), pytest.param("vmap", 1, marks=pytest.mark.slow)])
def test_a_non_finite_update_under_finite_gradients_freezes_the_seed_at_that_step(data, packing, steps_per_call):
    """The optimizer itself makes a parameter non-finite at step 5 (epoch 2 of 4-step epochs): the seed is
    recorded as diverged at step 5 with the finite parameters of step 4, exactly as the full per-step check
    (make_train_step with check_parameters) run step by step gives."""
    import optax

    graphdef, states, _, keys, _ = _mlp(data, n_seeds=2)
    spec = TrainOptions(epochs=3, batch_size=16)
    tx = optax.chain(optax.adam(1e-2), _poisoned_update_at(5))
    _, states = init_states(lambda r: build_model(target("mlp"), data.input_shape, data.n_classes,
                                                  {"hidden": [8]}, r), tx, keys)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    trainer = SeedTrainer(graphdef, tx, plan_execution(packing, steps_per_call=steps_per_call))
    out, history = trainer.fit(states, x, y, keys, spec)
    np.testing.assert_array_equal(history.diverged_at, [5, 5])
    # the reference: the full check, one step at a time, in the same data order
    full = jax.jit(make_train_step(graphdef, tx))
    for s in range(2):
        state = take_seed(states, s)
        for epoch in range(3):
            order = epoch_order(_order_key(keys[s], epoch), len(y), 16)
            for idx in np.asarray(order):
                state, _ = full(state, (x[idx], y[idx]))
        assert int(state.diverged_at) == 5
        for ours, ref in zip(jax.tree.leaves(take_seed(out.params, s)), jax.tree.leaves(state.params)):
            assert np.isfinite(np.asarray(ours)).all()
            np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-7)


class _SqrtOfC(nnx.Module):
    """A linear classifier plus ``0 * sqrt(c)``: at ``c = 0`` a finite loss whose gradient for ``c`` is NaN (0 times
    the infinite slope of sqrt at 0). ``c`` is 0, or with ``draw`` 0 or 1 at random per seed."""

    def __init__(self, n_in: int, n_classes: int, rngs: nnx.Rngs, draw: bool = False):
        self.dense = nnx.Linear(n_in, n_classes, rngs=rngs)
        c = jax.random.bernoulli(rngs.params()).astype(jnp.float32) if draw else jnp.zeros(())
        self.c = nnx.Param(c)

    def __call__(self, x):
        return self.dense(x.reshape(x.shape[0], -1)) + 0.0 * jnp.sqrt(self.c[...])


@pytest.mark.parametrize("packing", ["loop", pytest.param("vmap", marks=pytest.mark.slow)])
def test_a_non_finite_gradient_the_optimizer_discards_still_freezes_the_seed(data, packing):
    """The optimizer sets ``c``'s update to zero, so its NaN gradient never reaches a parameter or the loss:
    the seed still freezes at step 0, its first step with a non-finite gradient, with its initial parameters,
    as the full per-step check gives."""
    import optax

    tx = optax.multi_transform({"adam": optax.adam(1e-2), "frozen": optax.set_to_zero()},
                               lambda params: jax.tree.map_with_path(
                                   lambda path, _: "frozen" if jax.tree_util.keystr(path).startswith("['c']")
                                   else "adam",
                                   params))
    keys = seed_keys(0, 2)
    graphdef, states = init_states(lambda r: _SqrtOfC(int(np.prod(data.input_shape)), data.n_classes, r),
                                   tx, keys)
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    _, metrics = jax.jit(make_train_step(graphdef, tx))(take_seed(states, 0), (x[:16], y[:16]))
    assert np.isfinite(float(metrics["loss"]))  # the loss is finite: only the gradient is not
    out, history = SeedTrainer(graphdef, tx, plan_execution(packing)).fit(
        states, x, y, keys, TrainOptions(epochs=2, batch_size=16))
    np.testing.assert_array_equal(history.diverged_at, [0, 0])
    for ours, start in zip(jax.tree.leaves(out.params), jax.tree.leaves(states.params)):
        np.testing.assert_array_equal(ours, start)


def test_a_seed_frozen_beside_healthy_ones_keeps_its_parameters_in_later_epochs(data):
    """Seeds trained together (vmap): a seed frozen at step 0 keeps its initial parameters through the later
    epochs its healthy neighbours train, though its gradient is non-finite at every one of their steps."""
    keys = seed_keys(8, 4)  # base seed 8: two seeds draw c = 0, two draw 1
    tx = make_optimizer(TrainOptions(learning_rate=1e-2))
    graphdef, states = init_states(lambda r: _SqrtOfC(int(np.prod(data.input_shape)), data.n_classes, r, draw=True),
                                   tx, keys)
    drawn = np.asarray(states.params["c"][...])
    assert set(drawn) == {0.0, 1.0}  # both kinds of seed in the group
    x, y = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    out, history = SeedTrainer(graphdef, tx, plan_execution("vmap")).fit(
        states, x, y, keys, TrainOptions(epochs=3, batch_size=16))
    np.testing.assert_array_equal(history.diverged_at, np.where(drawn == 0, 0, -1))
    for ours, start in zip(jax.tree.leaves(out.params), jax.tree.leaves(states.params)):
        ours, start = np.asarray(ours), np.asarray(start)
        np.testing.assert_array_equal(ours[drawn == 0], start[drawn == 0])
        if ours.size > drawn.size:  # the dense weights (``c`` itself never moves: its gradient is zero or NaN)
            assert not np.array_equal(ours[drawn == 1], start[drawn == 1])


@pytest.mark.slow
def test_vmap_and_loop_draw_the_same_augmentation_per_seed(data):
    """With shift augmentation on, each seed's random offsets follow its own key, whatever the packing."""
    spec = TrainOptions(epochs=2, batch_size=16, learning_rate=3e-3, augment_shift=3)
    graphdef, states, tx, keys, _ = _mlp(data, n_seeds=3, spec=spec)
    results = {}
    for packing in ("loop", "vmap"):
        trainer = SeedTrainer(graphdef, tx, plan_execution(packing), augment_shift=3)
        results[packing] = trainer.fit(states, jnp.asarray(data.x_train), jnp.asarray(data.y_train), keys, spec)
    for a, b in zip(jax.tree.leaves(results["loop"][0].params), jax.tree.leaves(results["vmap"][0].params)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    seeds = jax.tree.leaves(results["loop"][0].params)[0]
    assert not np.allclose(seeds[0], seeds[1])  # the seeds differ: their streams are their own


def test_vmap_evaluation_equals_the_loop(data):
    graphdef, states, _, _, _ = _mlp(data, n_seeds=3)
    offsets = shift_grid(3, 1)
    preds = {p: ShiftEvaluator(graphdef, "roll", plan_execution(p)).predict(
        (states.params, states.model_state), data.x_test, offsets) for p in ("loop", "vmap")}
    assert preds["loop"].shape == (3, len(offsets), len(data.y_test))
    np.testing.assert_array_equal(preds["loop"], preds["vmap"])


def _poison(seeds):
    """Makes ``init_states`` give the chosen seeds NaN parameters: they diverge at step 0, the others train."""
    real = common.init_states

    def init(build, tx, keys):
        graphdef, states = real(build, tx, keys)
        mask = np.isin(np.arange(keys.shape[0]), seeds)

        def poison(a):
            shape = (-1,) + (1,) * (a.ndim - 1)
            return jnp.where(jnp.asarray(mask).reshape(shape), jnp.nan, a)
        return graphdef, states._replace(params=jax.tree.map(poison, states.params))
    return init


# The experiments that train, each with the models it trains (as its metrics' seed_status names them).
TRAINING = {
    "shift_test": ["models=[mlp]"],
    "padding_leak": [],
    "feature_pooling": [],
    "lie_derivative": ["models=[mlp]", "lie_derivative.per_layer=false"],
    "mnist1d_baselines": ["models=[mlp]"],
    "equivariance": ["models=[lenet]"],
    "pooling_invariance": ["pooling_invariance.features=trained"],
    "invariance_benchmark": ["models=[mlp]", "invariance_benchmark.augmented=[]"],
    "lee_scaling": ["models=[mlp]", "lee_scaling.augment=[0]"],
    # the transfer stage too: a seed poisoned at its start stays diverged through pretraining and fine-tuning
    "unseen_positions": ["models=[mlp]", "unseen_positions.regions=[2]", "unseen_positions.n_test=32"],
}


def test_every_experiment_is_run_tiny_somewhere():
    defining_facts = {"antialiased_shift_test", "feature_pooling", "pooling_invariance"}
    assert RUN_ELSEWHERE <= set(TRAINING) | defining_facts
    assert set(EXPERIMENT_NAMES) - RUN_ELSEWHERE  # the rest run in test_every_experiment_composes_and_runs_tiny


# Every seed diverged: checked where the summary and plots have their own code for it (the policy is shared).
ALL_DIVERGED = {"shift_test", "padding_leak", "feature_pooling", "pooling_invariance"}


def _summaries(tree):
    """Every mean ± std over seeds inside a record (its ``{"mean", "std", "n"}`` dicts)."""
    if isinstance(tree, dict):
        if {"mean", "std", "n"} <= set(tree):
            yield tree
            return
        for value in tree.values():
            yield from _summaries(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _summaries(value)


@pytest.mark.slow
@pytest.mark.parametrize("name", TRAINING)
def test_one_seed_policy_for_every_experiment_that_trains(name, tmp_path, monkeypatch):
    overrides = [f"experiment={name}", "dataset=synthetic", "n_seeds=3"] + TINY + TRAINING[name]
    monkeypatch.setattr(common, "init_states", _poison([1]))
    result = run_experiment(compose_raw(overrides), tmp_path / "partial")
    assert result.status is RunStatus.PARTIAL and result.models and not result.unmeasured
    for record in result.models.values():
        assert [s.text() for s in record.seeds] == ["ok", "diverged at step 0 (epoch 1)", "ok"]
        assert record.seeds_note() == " (1/3 seeds diverged)"
    validate_metrics(tmp_path / "partial")  # the published schema of this experiment's metrics.json
    written = read_result(tmp_path / "partial")
    assert written.status is RunStatus.PARTIAL and written.model_dump_json() == result.model_dump_json()
    assert json.loads((tmp_path / "partial" / "metrics.json").read_text())["status"] == "partial"
    assert written.experiment == compose_raw(overrides)["experiment_name"]
    assert list((tmp_path / "partial").glob("*.png")), "every experiment draws its plots"
    assert "(1/3 seeds diverged)" in load_experiment(result.module).summary(result)
    # every number of every record summarises the two healthy seeds, and none is NaN (the poisoned seed's
    # parameters are NaN, so it would show if it were averaged in)
    # (equivariance's untrained stage measures every initialisation: there is no training to diverge)
    dumps = [r.model_dump()["stages"]["trained"] if name == "equivariance" else r.model_dump()
             for r in result.models.values()]
    counts = [s["n"] for d in dumps for s in _summaries(d)]
    assert counts and set(counts) == {2}, (name, sorted(set(counts)))
    means = [np.asarray(s["mean"], dtype=float) for d in dumps for s in _summaries(d)]
    assert all(np.isfinite(m[~np.isnan(m)]).all() for m in means)
    assert name == "equivariance" or all(not np.isnan(m).any() for m in means)  # equivariance: no interior past J
    if name == "shift_test":  # the means are over the healthy seeds
        for model in result.models.values():
            assert model.per_seed.seeds == [0, 2]
            assert model.clean_accuracy.n == 2
            assert model.clean_accuracy.mean == pytest.approx(np.mean(model.per_seed.clean_accuracy))

    if name not in ALL_DIVERGED:
        return
    monkeypatch.setattr(common, "init_states", _poison([0, 1, 2]))
    result = run_experiment(compose_raw(overrides), tmp_path / "all")
    assert result.status is RunStatus.DIVERGED and not result.models and result.unmeasured
    assert "every seed diverged" in load_experiment(result.module).summary(result)
    validate_metrics(tmp_path / "all")
    status = json.loads((tmp_path / "all" / "status.json").read_text())
    assert status["status"] == "diverged"  # and the CLI exits 3 (test_reliability)
    assert (tmp_path / "all" / "metrics.json").is_file()  # plots and summary cope with nothing measured


@pytest.mark.slow
@pytest.mark.parametrize("name", ["equivariance", "feature_pooling", "padding_leak"])
def test_a_training_set_smaller_than_a_batch_is_an_error_before_training(name, tmp_path):
    from equivar.errors import ConfigError

    overrides = [f"experiment={name}", "dataset=synthetic", "dataset.n_train=16", "train.batch_size=64"]
    overrides += TINY
    if name == "padding_leak":
        overrides += ["padding_leak.n_train=8"]
    with pytest.raises(ConfigError, match=r"train.batch_size=64 exceeds the \d+ training examples"):
        run_experiment(compose_raw(overrides), tmp_path)
    assert not (tmp_path / "metrics.json").exists()


@pytest.mark.parametrize("mode", ["roll", "zero"])
@pytest.mark.parametrize("a", [1, 3])
def test_integer_augmentation_draws_every_offset_in_range(a, mode):
    from equivar.train import augmentation_offsets

    offsets = np.asarray(augmentation_offsets(jax.random.key(0), 4000, 2, a, mode))
    assert offsets.shape == (4000, 2) and np.issubdtype(offsets.dtype, np.integer)
    for axis in range(2):
        assert set(np.unique(offsets[:, axis])) == set(range(-a, a + 1))  # every offset, none outside


def test_subpixel_augmentation_draws_real_offsets_in_range():
    from equivar.train import augmentation_offsets

    offsets = np.asarray(augmentation_offsets(jax.random.key(0), 4000, 1, 2, "fourier"))
    assert offsets.shape == (4000, 1) and np.issubdtype(offsets.dtype, np.floating)
    assert offsets.min() >= -2 and offsets.max() <= 2 and offsets.min() < -1.9 and offsets.max() > 1.9
    assert not np.all(offsets == np.round(offsets))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["roll", "fourier"])
def test_an_augmented_step_is_a_plain_step_on_the_shifted_batch(data, mode):
    """The step shifts each example by its own draw from this seed's key at this step, then trains."""
    from equivar.train import augmentation_key, augmentation_offsets
    from equivar.transforms import shift_each

    graphdef, states, tx, _, _ = _mlp(data, n_seeds=1)
    state = take_seed(states, 0)
    x, y = jnp.asarray(data.x_train[:8]), jnp.asarray(data.y_train[:8])  # batch 8, length 16: shapes differ
    augmented, _ = jax.jit(make_train_step(graphdef, tx, augment_shift=2, augment_mode=mode))(state, (x, y))
    offsets = augmentation_offsets(augmentation_key(state.rng, state.step), 8, 1, 2, mode)
    assert np.abs(np.asarray(offsets)).max() > 0
    manual, _ = jax.jit(make_train_step(graphdef, tx))(state, (shift_each(x, offsets, mode), y))
    for a, b in zip(jax.tree.leaves(augmented.params), jax.tree.leaves(manual.params)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_the_step_reports_the_loss_and_accuracy_of_its_batch(data):
    """The metrics are those of the parameters before the update, on this batch; the unguarded step (only the
    benchmark's, to measure what the guard costs) takes the same step on finite data."""
    import optax

    from equivar.train import make_logits

    graphdef, states, tx, _, _ = _mlp(data, n_seeds=1)
    state = take_seed(states, 0)
    x, y = jnp.asarray(data.x_train[:16]), jnp.asarray(data.y_train[:16])
    logits = make_logits(graphdef)((state.params, state.model_state), x)
    new, metrics = jax.jit(make_train_step(graphdef, tx))(state, (x, y))
    assert float(metrics["accuracy"]) == pytest.approx(float((logits.argmax(-1) == y).mean()))
    assert float(metrics["loss"]) == pytest.approx(
        float(optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()), rel=1e-5)
    unguarded, _ = jax.jit(make_train_step(graphdef, tx, guard=False))(state, (x, y))
    assert jax.tree.structure(new) == jax.tree.structure(unguarded)
    for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(unguarded)):
        np.testing.assert_array_equal(np.asarray(jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key)
                                                 else a), np.asarray(jax.random.key_data(b) if jnp.issubdtype(
                                                     b.dtype, jax.dtypes.prng_key) else b))
    assert int(unguarded.step) == int(state.step) + 1


def test_the_guard_catches_non_finite_gradients_under_a_finite_loss():
    """sqrt(|Wx + b|) at Wx + b = 0: the loss is finite (log 3) but the gradients are not (d sqrt at 0)."""
    from flax import nnx

    class SqrtNet(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(4, 3, rngs=rngs)  # bias starts at zero

        def __call__(self, x):
            return jnp.sqrt(jnp.abs(self.dense(x)))

    tx = make_optimizer(TrainOptions(learning_rate=1e-2))
    graphdef, states = init_states(lambda rngs: SqrtNet(rngs), tx, seed_keys(0, 1))
    state = take_seed(states, 0)
    new, metrics = jax.jit(make_train_step(graphdef, tx))(state, (jnp.zeros((8, 4)), jnp.zeros(8, jnp.int32)))
    assert np.isfinite(float(metrics["loss"]))
    assert int(new.diverged_at) == 0
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_a_diverged_seed_stays_diverged_when_its_checkpoint_is_measured_again(tmp_path, monkeypatch):
    """load_from keeps each seed's training status: the diverged seed stays out of every number."""
    overrides = ["experiment=shift_test", "dataset=synthetic", "n_seeds=3", "models=[mlp]"] + TINY
    with monkeypatch.context() as m:
        m.setattr(common, "init_states", _poison([1]))
        trained = run_experiment(compose_raw(overrides), tmp_path / "trained")
    again = run_experiment(compose_raw(overrides + [f"load_from={tmp_path / 'trained'}"]), tmp_path / "again")
    assert again.status is RunStatus.PARTIAL
    first, second = trained.models["mlp"], again.models["mlp"]
    assert [s.text() for s in second.seeds] == ["ok", "diverged at step 0 (epoch 1)", "ok"]
    assert second.source == str((tmp_path / "trained").resolve()) and second.per_seed.seeds == [0, 2]
    assert second.per_seed == first.per_seed and second.clean_accuracy == first.clean_accuracy


def _record(status):
    from equivar.results import ModelRecord

    return ModelRecord(target="m", seeds=[SeedRecord.from_text(i, s) for i, s in enumerate(status)])


def test_the_run_is_diverged_only_when_every_seed_of_every_model_is():
    from equivar.results import ExperimentResult

    bad = "diverged at step 2 (epoch 1)"
    cases = [({"a": ["ok", "ok"]}, {}, RunStatus.OK),
             ({"a": ["ok", bad]}, {}, RunStatus.PARTIAL),
             ({"a": ["ok", "ok"]}, {"b": [bad, bad]}, RunStatus.PARTIAL),  # one model lost, the other measured
             ({}, {"a": [bad], "b": [bad, bad]}, RunStatus.DIVERGED),
             ({"anatomy-like": []}, {}, RunStatus.OK)]  # records without seeds do not count
    for measured, lost, want in cases:
        result = ExperimentResult(experiment="x", module="x", models={k: _record(v) for k, v in measured.items()},
                                  unmeasured={k: _record(v) for k, v in lost.items()})
        result.finish()
        assert result.status is want, (measured, lost)
