"""What a new user meets first: models written the usual way (Linen ``nn.Sequential``, a plain list of blocks,
a mode switched by a field, a class in ``__main__``), overrides written without ``+``, a piped stdout, an
interrupted run, the help pages and the printouts of the Python API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from equivar.errors import ConfigError
from equivar.models import build_model, check_model
from equivar.tools.reference_docs import message_for

from support import ROOT, TINY, compose_raw

sys.path.insert(0, str(Path(__file__).parent / "user_models"))
SMALL = [*TINY, "n_seeds=1", "dataset=synthetic", "shift.max=2"]


class Block(nnx.Module):
    def __init__(self, c: int, rngs: nnx.Rngs):
        self.conv = nnx.Conv(c, c, (3,), rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.conv(x))


class PlainListNet(nnx.Module):
    """Blocks kept in a plain Python list, which flax 0.12 refuses."""

    def __init__(self, input_shape, n_classes, *, rngs: nnx.Rngs):
        self.blocks = [Block(input_shape[-1], rngs) for _ in range(2)]
        self.head = nnx.Linear(input_shape[-1], n_classes, rngs=rngs)

    def __call__(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(1))


class RowConvNet(nnx.Module):
    """A 1D kernel whatever the data: on images flax would convolve each row alone (rows as batch)."""

    def __init__(self, input_shape, n_classes, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(input_shape[-1], 4, (3,), rngs=rngs)
        self.head = nnx.Linear(4, n_classes, rngs=rngs)

    def __call__(self, x):
        y = nnx.relu(self.conv(x))
        return self.head(y.mean(axis=tuple(range(1, y.ndim - 1))))


class FieldDropout(nn.Module):
    """Linen Dropout switched by a field, not by a __call__ argument."""

    num_classes: int
    deterministic: bool = False

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(8, (3,) * (x.ndim - 2))(x))
        x = nn.Dropout(0.5, deterministic=self.deterministic)(x)
        return nn.Dense(self.num_classes)(x.mean(axis=tuple(range(1, x.ndim - 1))))


def test_linen_sequential_is_read_entry_by_entry_and_skipped_where_it_takes_one_size():
    from equivar.equivariance import transform_errors
    from equivar.introspect import to_inference, trace_layers

    model = to_inference(build_model("mylab.nets.LinenSeq", (16, 1), 5, {}, nnx.Rngs(0)))
    trace = trace_layers(model, (16, 1))
    assert [n for n, _ in trace.layers] == [f"net.layers_{i}" for i in range(6)]  # nn.relu and the lambda too
    assert trace.chained
    x = jax.random.normal(jax.random.key(1), (4, 16, 1))
    assert transform_errors(model, x, "scale2") == {}  # its Dense takes one input size: skipped, not a crash
    flipped = transform_errors(model, x, "flip")
    assert set(flipped) == {"net.layers_0", "net.layers_1"} and flipped["net.layers_0"] > 0.01  # not symmetric


def test_a_plain_list_of_blocks_gets_the_fix_in_one_line():
    with pytest.raises(ConfigError) as err:
        check_model(PlainListNet, (16, 1), 3, {}, "zoo.mine")
    text = str(err.value)
    assert "\n" not in text and "'blocks'" in text and "nnx.List([...])" in text


def test_a_kernel_of_lower_rank_than_the_data_is_refused_before_training():
    check_model(RowConvNet, (16, 1), 3, {}, "zoo.mine")  # 1D data: fine
    with pytest.raises(ConfigError, match=r"layer 'conv' \(Conv\) has a 1D kernel \(3,\) but gets 2D input \(8, 8\)"):
        check_model(RowConvNet, (8, 8, 1), 3, {}, "zoo.rows")


def test_a_linen_mode_field_switches_dropout_in_training_only():
    from equivar.introspect import to_inference

    model = build_model(FieldDropout, (16, 1), 3, {}, nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 16, 1))
    train_a, train_b = model(x), model(x)
    assert not np.allclose(train_a, train_b)  # a fresh dropout mask per training call
    infer = to_inference(model)
    np.testing.assert_array_equal(infer(x), infer(x))  # inference: no key asked for, no mask
    reference = FieldDropout(3, deterministic=True).apply(model.variables(), x)
    np.testing.assert_allclose(infer(x), reference, atol=1e-6)


@pytest.mark.parametrize("overrides,expected", [
    (["experiment=shift_test", "model=lenet"], "models=[lenet,...]"),
    (["shift_test"], "experiment=shift_test"),
    (["experiment=shift_test", "zoo.mine._target_=equivar.models.LeNet", "models=[mine]"],
     "write +zoo.mine._target_=equivar.models.LeNet"),
    (["experiment=shift_test", "+zoo.mine._target_=equivar.models.LeNet", "+zoo.mine.width=3"],
     "models=[mlp,lenet,local,cnn_aps,mine]"),
    (["experiment=shift_test", "lie_derivative.n_examples=3"], "the options of experiment=lie_derivative"),
    (["experiment=shift_test", "n_seed=3"], "did you mean n_seeds?"),
    (["experiment=shift_test", "+preset=tiny"], "+preset=tiny adds a group the config already has: write preset=tiny"),
])
def test_overrides_without_plus_get_the_hint_the_plus_form_gets(overrides, expected):
    code, line = message_for(overrides)
    assert code == 2 and "\n" not in line and expected in line, line


def test_a_run_folder_the_system_refuses_is_one_line():
    from equivar.run import check_run_folder

    if not Path("/proc/self").is_dir():
        pytest.skip("no /proc here")
    with pytest.raises(ConfigError, match="cannot be created: /proc refuses new folders"):
        check_run_folder(["hydra.run.dir=/proc/equivar-run"])


def test_load_from_a_run_without_an_experiments_own_models_says_it_trains_them(tmp_path):
    run = tmp_path / "earlier"
    (run / "checkpoints" / "lenet").mkdir(parents=True)
    (run / "checkpoints" / "lenet.json").write_text("{}")
    code, line = message_for(["experiment=unseen_positions", "models=[lenet]", f"load_from={run}"])
    assert code == 2 and "measures models it trains itself (lenet_region1" in line and "drop load_from" in line


def test_a_class_from_main_says_how_to_make_it_loadable():
    from equivar.checkpoints import moved_from_main
    from equivar.targets import locate

    with pytest.raises(ConfigError, match="script or notebook .* mylab/nets.py"):
        locate("__main__.NetFromANotebook", "zoo.mine._target_")
    assert moved_from_main("__main__.Net", "mylab.nets.Net") and not moved_from_main("__main__.Net", "mylab.Other")
    assert not moved_from_main("mylab.nets.Net", "other.Net")


def test_each_experiment_has_its_own_help_page():
    from equivar.help_page import experiment_help
    from equivar.run import CONFIG_DIR, compose_config

    lie = experiment_help(Path(CONFIG_DIR), "lie_derivative", compose_config(["experiment=lie_derivative"]))
    pooling = experiment_help(Path(CONFIG_DIR), "pooling_invariance",
                              compose_config(["experiment=pooling_invariance"]))
    assert "lie_derivative.n_examples=256" in lie and "pooling_invariance." not in lie
    assert "pooling_invariance." in pooling and "lie_derivative." not in pooling
    assert lie.splitlines()[0].startswith("equivar experiment=lie_derivative: How far")


class _ClosedPipe:
    """A stdout whose reader has gone."""

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")

    def fileno(self):
        raise ValueError("no descriptor")


def test_a_reader_that_leaves_does_not_fail_a_finished_run(tmp_path, monkeypatch):
    from equivar.run import ReaderMayLeave, run_experiment

    monkeypatch.setattr(sys, "stdout", ReaderMayLeave(_ClosedPipe()))
    run_experiment(compose_raw(["experiment=shift_test", "models=[mlp]", *SMALL]), tmp_path)
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "complete"
    assert sys.stdout.reader_left


@pytest.mark.slow  # a CLI process: about 15 s
def test_piping_the_cli_into_head_exits_0_with_the_run_complete(tmp_path):
    env = {**os.environ, "EQUIVAR_JAX_CACHE": "off"}
    proc = subprocess.Popen([sys.executable, "-m", "equivar.run", "experiment=shift_test", "models=[mlp]", *SMALL,
                             f"hydra.run.dir={tmp_path / 'run'}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd=ROOT, env=env)
    assert proc.stdout is not None and proc.stdout.readline()  # the first line, as `| head -1` reads it
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b"BrokenPipeError" not in err and b"Logging error" not in err
    assert json.loads((tmp_path / "run" / "status.json").read_text())["status"] == "complete"


@pytest.mark.slow  # two tiny runs: about 15 s
def test_an_interrupted_run_keeps_its_complete_models_and_a_model_prints_short(tmp_path, caplog):
    """Run again in the same folder after an interruption: the models whose checkpoints were complete load
    (with their curves), the others train; the result is the one an uninterrupted run gives."""
    from equivar.api import load_models
    from equivar.run import run_experiment

    raw = compose_raw(["experiment=shift_test", "models=[mlp,lenet]", *SMALL])
    first = run_experiment(raw, tmp_path)
    status = json.loads((tmp_path / "status.json").read_text())
    (tmp_path / "status.json").write_text(json.dumps({**status, "status": "interrupted"}))
    (tmp_path / "metrics.json").unlink()
    (tmp_path / "checkpoints" / "lenet.json").unlink()  # lenet's checkpoint never completed
    caplog.set_level("INFO")
    again = run_experiment(raw, tmp_path)
    assert "mlp: its checkpoint from the interrupted attempt is complete; not trained again" in caplog.text
    assert "lenet: its checkpoint" not in caplog.text
    for name in ("mlp", "lenet"):
        assert again.models[name].source == "trained"
        for curve in ("loss", "accuracy", "heldout_loss", "heldout_accuracy"):  # (not the seconds)
            assert getattr(again.models[name].training, curve) == getattr(first.models[name].training, curve)
        assert again.models[name].clean_accuracy == first.models[name].clean_accuracy
    assert again.models["mlp"].training == first.models["mlp"].training  # loaded: the very record, seconds too
    text = repr(load_models(tmp_path)["mlp"])
    assert len(text) < 400 and "n_params=" in text and "Array" not in text


def test_seconds_per_epoch_leaves_out_compilation_and_evaluation():
    from equivar.train import History

    def history(times):
        return History(loss=np.zeros((1, len(times))), accuracy=np.zeros((1, len(times))), seconds=sum(times),
                       diverged_at=np.array([-1]), epoch_seconds=times)

    assert history([9.0, 1.0, 3.0, 2.0]).steady_epoch_seconds() == 2.0  # the first epoch compiles
    assert history([4.0]).steady_epoch_seconds() == 4.0
    assert history([]).steady_epoch_seconds() is None


def test_training_records_each_epochs_steps_without_the_heldout_evaluation():
    from equivar.execution import plan_execution
    from equivar.train import SeedTrainer, TrainOptions, init_states, make_optimizer, seed_keys

    tx = make_optimizer(TrainOptions(epochs=3, batch_size=16, learning_rate=1e-3, min_steps=0))
    graphdef, states = init_states(lambda r: build_model("equivar.models.MLP", (8, 1), 3, {"hidden": [8]}, r),
                                   tx, seed_keys(0, 1))
    x = jnp.ones((64, 8, 1))
    y = jnp.zeros((64,), jnp.int32)
    spec = TrainOptions(epochs=3, batch_size=16, learning_rate=1e-3, min_steps=0)
    _, history = SeedTrainer(graphdef, tx, plan_execution("loop")).fit(states, x, y, seed_keys(0, 1), spec,
                                                                      heldout=(np.ones((8, 8, 1)), np.zeros(8, int)))
    assert len(history.epoch_seconds) == 3 and all(t > 0 for t in history.epoch_seconds)
    assert sum(history.epoch_seconds) <= history.seconds
