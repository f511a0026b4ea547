"""Divergence is caught per seed, recorded and reported; results are reproducible."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivar.data import Synthetic
from equivar.execution import plan_execution
from equivar.models import build_model
from equivar.run import run_experiment
from equivar.train import SeedTrainer, TrainOptions, init_states, make_optimizer, seed_keys

from support import TINY, cli, compose_raw, target


@pytest.mark.slow
def test_a_non_finite_loss_freezes_that_seed_and_records_the_step():
    data = Synthetic(rank=1, size=16, n_classes=3, n_train=64, n_test=16, seed=0).load()
    spec = TrainOptions(epochs=3, batch_size=16, learning_rate=1e-3)
    tx = make_optimizer(spec)
    keys = seed_keys(0, 2)
    graphdef, states = init_states(lambda r: build_model(target("mlp"), data.input_shape, 3, {"hidden": [8]}, r), tx, keys)
    x = np.array(data.x_train)
    x[5] = np.nan  # example 5 poisons whichever batch holds it, in both seeds' first epoch
    for packing in ("loop", "vmap"):
        out, history = SeedTrainer(graphdef, tx, plan_execution(packing)).fit(
            states, jnp.asarray(x), jnp.asarray(data.y_train), keys, spec)
        assert (history.diverged_at >= 0).all() and (history.diverged_at < 4).all()  # first epoch has 4 steps
        assert all(s.startswith("diverged at step") and s.endswith("(epoch 1)") for s in history.status())
        for leaf in jax.tree.leaves(out.params):
            assert np.isfinite(np.asarray(leaf)).all()  # frozen at the last finite parameters


@pytest.mark.slow
def test_forced_divergence_is_reported_and_exits_non_zero(tmp_path):
    proc = cli(["experiment=shift_test", "dataset=synthetic", "models=[mlp]", "train.learning_rate=1e12",
                 "train.optimizer=sgd", "n_seeds=2", "train.epochs=2"], tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "every seed diverged" in proc.stderr and "Traceback" not in proc.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["status"] == "diverged" and not metrics["models"]
    assert [s["status"] for s in metrics["unmeasured"]["mlp"]["seeds"]] == ["diverged", "diverged"]
    assert all(s["diverged_at_step"] >= 0 for s in metrics["unmeasured"]["mlp"]["seeds"])


def _numbers(metrics):
    """metrics.json without timings and the environment record."""
    out = json.loads(json.dumps(metrics))
    out.pop("environment")
    for model in out["models"].values():
        model.pop("eval_seconds", None)
        for timing in ("seconds", "epoch_seconds", "steady_epoch_seconds"):
            model["training"].pop(timing, None)
    return out


@pytest.mark.slow
def test_the_same_config_twice_gives_identical_metrics(tmp_path):
    overrides = ["experiment=shift_test", "dataset=synthetic", "models=[mlp,cnn_gap]"] + TINY
    run_experiment(compose_raw(overrides), tmp_path / "a")
    run_experiment(compose_raw(overrides), tmp_path / "b")
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    assert json.dumps(_numbers(a), sort_keys=True) == json.dumps(_numbers(b), sort_keys=True)


@pytest.mark.slow
def test_n_seeds_at_once_equals_single_seed_runs(tmp_path):
    base = ["experiment=shift_test", "dataset=synthetic", "models=[mlp]"] + TINY
    both = run_experiment(compose_raw(base + ["n_seeds=2", "seed=3"]), tmp_path / "both")
    for i in range(2):
        one = run_experiment(compose_raw(base + ["n_seeds=1", f"seed={3 + i}"]), tmp_path / f"one{i}")
        assert one.models["mlp"].per_seed.clean_accuracy[0] == both.models["mlp"].per_seed.clean_accuracy[i]
