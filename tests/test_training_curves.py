"""Training curves: per-epoch training and held-out loss and accuracy per seed, in metrics.json, in
training.png and as TensorBoard events (read back with TensorBoard's own reader)."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from equivar import train as train_module
from equivar.data import Synthetic
from equivar.execution import plan_execution
from equivar.models import build_model
from equivar.run import run_experiment
from equivar.train import SeedTrainer, TrainOptions, init_states, make_logits, make_optimizer, seed_keys, take_seed

from support import compose_raw, target


@pytest.fixture(scope="module")
def data():
    return Synthetic(rank=1, size=16, n_classes=3, n_train=64, n_test=37, seed=1).load()


def _fit(data, packing, spec, on_epoch=None, n_seeds=2):
    build = lambda rngs: build_model(target("mlp"), data.input_shape, data.n_classes, {"hidden": [16]}, rngs)
    tx = make_optimizer(spec)
    keys = seed_keys(0, n_seeds)
    graphdef, states = init_states(build, tx, keys)
    trainer = SeedTrainer(graphdef, tx, plan_execution(packing))
    states, history = trainer.fit(states, jnp.asarray(data.x_train), jnp.asarray(data.y_train), keys, spec,
                                  heldout=(data.x_test, data.y_test), on_epoch=on_epoch)
    return graphdef, states, history


@pytest.mark.parametrize("packing", ["loop", pytest.param("vmap", marks=pytest.mark.slow)])
def test_heldout_curve_is_the_final_models_test_loss_and_accuracy(data, packing, monkeypatch):
    """The last held-out point is the trained model's loss and accuracy on those examples in inference mode,
    whatever the chunking (37 examples in chunks of 16: the last chunk is padded and must not count)."""
    monkeypatch.setattr(train_module, "HELDOUT_CHUNK", 16)
    seen = []
    spec = TrainOptions(epochs=3, batch_size=16, learning_rate=3e-3)
    graphdef, states, history = _fit(data, packing, spec, on_epoch=lambda e, n: seen.append((e, n)))
    assert history.heldout_loss.shape == history.heldout_accuracy.shape == (2, 3)
    assert history.heldout_examples == 37
    logits = make_logits(graphdef)
    for s in range(2):
        out = logits((take_seed(states.params, s), take_seed(states.model_state, s)), jnp.asarray(data.x_test))
        loss = float(optax.softmax_cross_entropy_with_integer_labels(out, jnp.asarray(data.y_test)).mean())
        acc = float((np.asarray(out.argmax(-1)) == data.y_test).mean())
        np.testing.assert_allclose(history.heldout_loss[s, -1], loss, rtol=1e-5)
        assert history.heldout_accuracy[s, -1] == pytest.approx(acc, abs=1e-9)
    # The callback saw every epoch with the same numbers the history keeps.
    assert [e for e, _ in seen] == [0, 1, 2]
    for e, numbers in seen:
        np.testing.assert_allclose(numbers["train_loss"], history.loss[:, e], rtol=1e-6)
        np.testing.assert_allclose(numbers["heldout_accuracy"], history.heldout_accuracy[:, e])


@pytest.mark.slow
def test_a_diverged_seed_has_no_heldout_points_after_it_diverged(data):
    spec = TrainOptions(epochs=3, batch_size=16, optimizer="sgd", learning_rate=1e30)
    _, _, history = _fit(data, "loop", spec, n_seeds=1)
    assert (history.diverged_at >= 0).all()
    assert np.isnan(history.heldout_loss[0, -1]) and np.isnan(history.heldout_accuracy[0, -1])


def test_a_run_records_plots_and_logs_its_curves(tmp_path):
    """metrics.json holds the curves per seed; training.png is drawn; the TensorBoard events, read back by
    TensorBoard's own reader, hold the same numbers; the held-out accuracy after the last epoch, on the whole
    test set, is the run's clean accuracy of that seed."""
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    raw = compose_raw(["experiment=shift_test", "dataset=synthetic", "dataset.n_test=64", "n_seeds=2",
                       "train.epochs=2", "train.batch_size=32", "shift.max=1", "models=[mlp]",
                       "zoo.mlp.hidden=[16]", "train.heldout_examples=100000"])
    run_experiment(raw, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    training = metrics["models"]["mlp"]["training"]
    assert training["heldout_examples"] == 64
    assert np.shape(training["heldout_accuracy"]) == np.shape(training["loss"]) == (2, 2)
    assert training["heldout_accuracy"][0][-1] == metrics["models"]["mlp"]["per_seed"]["clean_accuracy"][0]
    assert (tmp_path / "training.png").stat().st_size > 10_000
    for i, seed in enumerate(metrics["seeds"]):
        events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard" / "mlp" / f"seed_{seed}"))
        events.Reload()
        assert set(events.Tags()["scalars"]) == {"train/loss", "train/accuracy", "heldout/loss", "heldout/accuracy"}
        for tag, key in (("train/loss", "loss"), ("heldout/accuracy", "heldout_accuracy")):
            points = events.Scalars(tag)
            assert [p.step for p in points] == [1, 2]
            np.testing.assert_allclose([p.value for p in points], training[key][i], rtol=1e-6)


@pytest.mark.slow
def test_tensorboard_off_writes_no_events(tmp_path):
    raw = compose_raw(["experiment=shift_test", "dataset=synthetic", "n_seeds=1", "train.epochs=1",
                       "shift.max=1", "models=[mlp]", "zoo.mlp.hidden=[8]", "train.tensorboard=false",
                       "train.heldout_examples=0"])
    run_experiment(raw, tmp_path)
    assert not (tmp_path / "tensorboard").exists()
    training = json.loads((tmp_path / "metrics.json").read_text())["models"]["mlp"]["training"]
    assert training["heldout_loss"] is None and training["heldout_examples"] == 0
    assert (tmp_path / "training.png").exists()  # the training curve alone


def _fake_result(n_trainings, n_classes=10):
    from types import SimpleNamespace
    curve = [[0.5, 0.7, 0.8], [0.4, 0.6, 0.9]]  # 2 seeds x 3 epochs
    training = SimpleNamespace(loss=curve, accuracy=curve, heldout_loss=curve, heldout_accuracy=curve,
                               heldout_examples=50, seconds=1.0)
    models = {f"net{i}": SimpleNamespace(training=training, model="lenet") for i in range(n_trainings)}
    models["net0"].classes = [5, 6, 7, 8, 9]  # trained on half the classes: chance 1/5 in its panel
    return SimpleNamespace(models=models, unmeasured={}, dataset=SimpleNamespace(name="toy", n_classes=n_classes))


@pytest.mark.parametrize("n_trainings", [pytest.param(2, marks=pytest.mark.slow), 12])  # 2: the shared panels
def test_training_figure_stays_readable_for_many_trainings(n_trainings, tmp_path, monkeypatch):
    """A few trainings share a loss and an accuracy panel (a legend entry per curve); many get one accuracy
    panel each, titled by the training, with the chance of the classes it was trained on."""
    from equivar import plot
    drawn = []
    monkeypatch.setattr(plot, "save", lambda fig, path: drawn.append(fig) or path)
    plot.training_figure(_fake_result(n_trainings), tmp_path)
    axes = [ax for ax in drawn[0].axes if ax.get_visible()]
    if n_trainings <= plot.FEW_TRAININGS:
        assert len(axes) == 2 and len(axes[1].get_legend().get_texts()) == 2 * n_trainings + 1  # + chance
    else:
        assert [ax.get_title() for ax in axes] == [f"net{i}" for i in range(n_trainings)]
        chance = [[line.get_ydata()[0] for line in ax.get_lines() if line.get_label() == "chance"] for ax in axes]
        assert chance[0] == [pytest.approx(0.2)] and chance[1] == [pytest.approx(0.1)]
        assert all(len([line for line in ax.get_lines() if line.get_label() != "chance"]) == 2 for ax in axes)
