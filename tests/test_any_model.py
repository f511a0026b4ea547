"""Any Flax NNX model by ``_target_``, the Python API, and checkpoints: a user's model (with BatchNorm and
Dropout) written in a temp module trains, is measured by shift_test, equivariance and anatomy, and comes back
from its checkpoint with identical predictions."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import equivar
from equivar import checkpoints
from equivar.errors import ConfigError
from equivar.introspect import capture, trace_layers

from support import TINY, cli

USER_MODULE = textwrap.dedent('''
    """A user's models: nothing from equivar but the constructor contract."""
    import jax.numpy as jnp
    from flax import nnx


    class BNNet(nnx.Module):
        """conv -> BatchNorm -> functional relu -> conv -> mean over positions -> dropout -> linear."""

        def __init__(self, input_shape, n_classes, *, width=8, rngs):
            rank = len(input_shape) - 1
            self.conv1 = nnx.Conv(input_shape[-1], width, (3,) * rank, padding="CIRCULAR", rngs=rngs)
            self.bn = nnx.BatchNorm(width, rngs=rngs)
            self.conv2 = nnx.Conv(width, width, (3,) * rank, strides=2, padding="SAME", rngs=rngs)
            self.drop = nnx.Dropout(0.5, rngs=rngs)
            self.head = nnx.Linear(width, n_classes, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.bn(self.conv1(x)))
            x = nnx.relu(self.conv2(x))
            x = x.mean(axis=tuple(range(1, x.ndim - 1)))
            return self.head(self.drop(x))


    class Chain(nnx.Module):
        """Layers called strictly one after another: receptive fields can be derived exactly."""

        def __init__(self, input_shape, n_classes, *, rngs):
            from equivar.layers import GlobalPool
            rank = len(input_shape) - 1
            self.conv = nnx.Conv(input_shape[-1], 4, (3,) * rank, padding="SAME", rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)
            self.pool = GlobalPool("mean")
            self.head = nnx.Linear(4, n_classes, rngs=rngs)

        def __call__(self, x):
            return self.head(self.pool(self.bn(self.conv(x))))


    class WrongOut(nnx.Module):
        """Returns one logit too many."""

        def __init__(self, input_shape, n_classes, *, rngs):
            self.head = nnx.Linear(input_shape[-1], n_classes + 1, rngs=rngs)

        def __call__(self, x):
            return self.head(x.mean(axis=1))


    class NoLayers(nnx.Module):
        """Parameters but no submodules: nothing for layer-wise experiments to read."""

        def __init__(self, input_shape, n_classes, *, rngs):
            self.w = nnx.Param(jnp.zeros((input_shape[-1], n_classes)))

        def __call__(self, x):
            return x.mean(axis=tuple(range(1, x.ndim - 1))) @ self.w[...]
''')

SMALL = ["dataset=synthetic", "n_seeds=2", "train.epochs=2", "train.batch_size=32", "shift.max=2"]


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "mynets.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mynets", None)
    import mynets
    return mynets


@pytest.mark.slow
def test_user_model_with_batchnorm_trains_checkpoints_and_reloads_identically(user_module, tmp_path):
    run_dir = tmp_path / "run"
    result = equivar.measure("shift_test", SMALL, out_dir=run_dir, models={"mine": (user_module.BNNet, {"width": 6})})
    mine = result.models["mine"]
    assert mine.target == "mynets.BNNet" and [s.status.value for s in mine.seeds] == ["ok", "ok"]
    assert mine.clean_accuracy.mean == pytest.approx(np.mean(mine.per_seed.clean_accuracy))
    assert mine.consistency.mean == pytest.approx(np.mean(mine.per_seed.consistency))

    loaded = equivar.load_models(run_dir)["mine"]
    assert loaded.options == {"width": 6} and loaded.seeds == [0, 1]
    assert loaded.name == "mine" and loaded.target == "mynets.BNNet" and loaded.source == str(run_dir.resolve())
    # BatchNorm's running statistics travelled through the pure step: they moved away from their init (0, 1).
    stats = nnx.to_pure_dict(loaded.model_state)["bn"]
    assert not np.allclose(stats["mean"], 0.0) and not np.allclose(stats["var"], 1.0)

    # Inference mode: dropout off and running statistics used, so predictions are deterministic, and a model
    # restored from the checkpoint predicts exactly as the one the run measured.
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 24, 1)), jnp.float32)
    first, second = (m(x) for m in loaded.modules())
    again = equivar.load_models(run_dir)["mine"].modules()[0](x)
    np.testing.assert_array_equal(np.asarray(first), np.asarray(again))
    assert not np.allclose(first, second)  # the two seeds are different models

    remeasured = equivar.measure("shift_test", SMALL + ["models=[mine]"], out_dir=tmp_path / "again",
                                 load_from=run_dir)
    assert remeasured.models["mine"].source == str(run_dir.resolve())
    assert remeasured.models["mine"].per_seed == mine.per_seed  # same predictions, same numbers
    assert not (tmp_path / "again" / "checkpoints").exists()  # nothing was trained


@pytest.mark.slow
def test_checkpoint_round_trip_is_exact_for_every_variable(user_module, tmp_path):
    import functools

    import optax

    from equivar.experiment import as_trained
    from equivar.models import build_model
    from equivar.train import init_states, seed_keys

    build = functools.partial(build_model, user_module.BNNet, (12, 2), 3, {"width": 4})
    graphdef, states = init_states(build, optax.adam(1e-3), seed_keys(7, 3))
    states = states._replace(params=jax.tree.map(lambda a: a + 0.5, states.params))

    class Cfg:
        seed, n_seeds, seeds = 7, 3, [7, 8, 9]
    data = type("D", (), {"input_shape": (12, 2), "n_classes": 3})()
    model = as_trained("net", "mynets.BNNet", {"width": 4}, data, graphdef, states, Cfg, None)
    checkpoints.save(model, tmp_path, {"name": "test"})
    back = checkpoints.load(tmp_path, "net", "mynets.BNNet", {"width": 4}, (12, 2), 3)
    for a, b in zip(jax.tree.leaves((model.params, model.model_state)), jax.tree.leaves((back.params, back.model_state))):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert back.seeds == [7, 8, 9]


@pytest.mark.slow
def test_a_checkpoint_that_does_not_match_the_config_names_the_mismatch(tiny_run, tmp_path):
    run_dir = tiny_run
    with pytest.raises(ConfigError, match=r"zoo.lenet.channels=\[2, 8\] does not match the checkpoint .*\(\[4, 8\]\)"):
        equivar.measure("shift_test", SMALL + ["models=[lenet]"] + TINY + ["zoo.lenet.channels=[2,8]"],
                        out_dir=tmp_path / "b", load_from=run_dir)
    with pytest.raises(ConfigError, match=r"holds no checkpoint of 'local', 'cnn_gap'; it holds lenet, mlp: choose "
                                          r"with models=\[lenet,mlp\] or a subset"):  # every missing model, first
        equivar.measure("shift_test", SMALL + ["models=[lenet,local,cnn_gap]"], out_dir=tmp_path / "c",
                        load_from=run_dir)
    assert not (tmp_path / "c").exists()
    lenet = dict(json.loads((run_dir / "checkpoints" / "lenet.json").read_text()))
    with pytest.raises(ConfigError, match=r"zoo.lenet._target_='equivar.models.CNNGap' does not match the checkpoint "
                                          rf"in .* \('{lenet['target']}'\)"):
        checkpoints.load(run_dir, "lenet", "equivar.models.CNNGap", lenet["options"], (24, 1), 4)
    with pytest.raises(ConfigError, match=r"trained on inputs \(24, 1\) with 4 classes; this dataset has \(30, 1\)"):
        equivar.measure("shift_test", SMALL + ["models=[lenet]", "dataset.size=30"] + TINY,
                        out_dir=tmp_path / "d", load_from=run_dir)


@pytest.mark.slow
def test_layer_wise_experiments_read_any_module(user_module, tmp_path):
    """equivariance and anatomy on a user's model: its layers are captured by name; a model computing between
    its layers gets gradient fields only (and says so), an exact chain gets the analytic fields too."""
    models = {"mine": user_module.BNNet, "chain": user_module.Chain}
    eq = equivar.measure("equivariance", SMALL + ["++equivariance.n_examples=8", "shift.max=2"],
                         out_dir=tmp_path / "eq", models=models)
    layers = eq.models["mine"].stages["trained"].shift["roll"]
    assert list(layers) == ["conv1", "bn", "conv2", "drop", "head"]
    # conv1 (circular, stride 1) then BatchNorm in inference mode commute exactly with circular shifts.
    assert max(layers["conv1"].full.mean) < 1e-5 and max(layers["bn"].full.mean) < 1e-5
    assert layers["conv2"].jump == [2] and layers["head"].role == "invariance"

    an = equivar.measure("anatomy", SMALL + ["++anatomy.n_inputs=4"], out_dir=tmp_path / "an", models=models)
    mine, chain = an.models["mine"], an.models["chain"]
    assert "functional" in mine.analytic_unavailable and mine.layers[0].rf_forward is None
    assert mine.layers[0].empirical_support_size == [3]  # a 3-tap circular conv sees 3 positions
    assert chain.forward_equals_backward and chain.empirical_equals_analytic
    assert [r.rf_forward for r in chain.layers] == [[3], [3], [26], [26]]  # padding counted
    assert [r.support_size for r in chain.layers] == [[3], [3], [24], [24]]  # inside the input
    assert (tmp_path / "an" / "erf_mine.png").is_file()


@pytest.mark.parametrize("padding", ["VALID", "SAME", "CIRCULAR"])
def test_cumulative_stride_of_a_model_that_computes_between_its_layers(padding):
    """Read from each layer's own stride (known geometry) and from functional pooling between layers, not from
    the ratio of input to output size, which VALID padding shrinks (24 -> 20 -> 8 is a stride of 2, not 3)."""
    from equivar.equivariance import layer_geometry_of
    from equivar.introspect import to_inference

    class Net(nnx.Module):
        def __init__(self, input_shape, n_classes, *, rngs):
            self.conv1 = nnx.Conv(1, 4, (5,), padding=padding, rngs=rngs)
            self.conv2 = nnx.Conv(4, 4, (5,), strides=2, padding=padding, rngs=rngs)
            self.conv3 = nnx.Conv(4, 4, (3,), padding=padding, rngs=rngs)
            self.head = nnx.Linear(4, n_classes, rngs=rngs)

        def __call__(self, x):
            x = nnx.relu(self.conv2(nnx.relu(self.conv1(x))))
            x = nnx.max_pool(x, (2,), (2,))  # functional downsampling between two layers
            return self.head(self.conv3(x).mean(axis=1))

    _, jumps, _ = layer_geometry_of(to_inference(Net((40, 1), 3, rngs=nnx.Rngs(0))), (40, 1))
    assert jumps == {"conv1": (1,), "conv2": (2,), "conv3": (4,), "head": None}


def test_a_model_without_layers_gets_one_line(user_module, tmp_path):
    with pytest.raises(ConfigError, match="calls no flax.nnx.Module attribute in its forward pass"):
        equivar.measure("anatomy", SMALL, out_dir=tmp_path / "an", models={"bare": user_module.NoLayers})
    with pytest.raises(ConfigError, match=r"zoo.bad maps a batch of shape \(2, 24, 1\) to \(2, 5\); a classifier "
                                          r"must return logits of shape \(batch, 4\)"):
        equivar.measure("shift_test", SMALL, out_dir=tmp_path / "st", models={"bad": user_module.WrongOut})
    assert not (tmp_path / "st" / "metrics.json").exists()


def test_capture_records_layers_in_call_order_and_restores_the_classes(user_module):
    model = user_module.BNNet((10, 1), 3, width=2, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 10, 1))
    out, calls, chained = capture(model, x)
    assert [c.name for c in calls] == ["conv1", "bn", "conv2", "drop", "head"] and not chained
    assert "__call__" not in type(model.conv1).__dict__ or type(model.conv1).__call__.__name__ == "__call__"
    np.testing.assert_array_equal(out, model(x))  # nothing left patched
    trace = trace_layers(user_module.Chain((10, 1), 3, rngs=nnx.Rngs(0)), (10, 1))
    assert trace.chained and trace.out_shapes["conv"] == (10, 4)


def _package(folder, source=USER_MODULE):
    (folder / "mylab").mkdir(parents=True)
    (folder / "mylab" / "__init__.py").write_text("")
    (folder / "mylab" / "nets.py").write_text(source)


@pytest.mark.slow
def test_cli_takes_a_model_from_the_working_directory(tmp_path):
    _package(tmp_path)
    proc = cli(["experiment=shift_test", "+zoo.mine._target_=mylab.nets.BNNet", "+zoo.mine.width=4",
                 "models=[mlp,mine]"] + SMALL + TINY, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"mlp", "mine"}
    assert (tmp_path / "run" / "checkpoints" / "mine.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("overrides,words", [
    (["+zoo.mine._target_=mylab.nets.BNNet", "+zoo.mine.widht=4"], "has no option 'widht' (did you mean 'width'?)"),
    (["+zoo.mine._target_=mylab.nets.BNNett"], "zoo.mine._target_='mylab.nets.BNNett' cannot be imported: mylab.nets "
                                               "has no attribute 'BNNett' (did you mean 'BNNet'?)"),
    pytest.param(["+zoo.mine._target_=mylib.nets.BNNet"], "cannot be imported: no module named 'mylib'; the module "
                 "must be", marks=pytest.mark.slow),
    pytest.param(["+zoo.mine._target_=mylab.broken.Net"], "importing mylab.broken fails: NameError: name "
                 "'undefined_name'", marks=pytest.mark.slow),
    pytest.param(["+zoo.mine._target_=mylab.nets.NoLayers", "experiment=anatomy"], "calls no flax.nnx.Module attribute",
                 marks=pytest.mark.slow),
])
def test_cli_user_model_mistakes_are_one_line(overrides, words, tmp_path):
    _package(tmp_path)
    (tmp_path / "mylab" / "broken.py").write_text("x = undefined_name\n")
    proc = cli(["experiment=shift_test", "models=[mine]"] + SMALL + overrides, tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert words in proc.stderr and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


@pytest.mark.slow
def test_wheel_installs_and_runs_from_another_folder(tmp_path):
    """``pip install`` of the built wheel (not editable) into a fresh venv: the CLI finds its configs and
    experiments from any folder, and nothing installs under a generic top-level name."""
    from support import ROOT
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "build", "--wheel", "-o", str(wheels), str(ROOT)], check=True,
                   capture_output=True, timeout=600)
    wheel = next(wheels.glob("equivar-*.whl"))
    import zipfile
    tops = {name.split("/")[0] for name in zipfile.ZipFile(wheel).namelist()}
    assert tops == {"equivar", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = venv / "bin" / "python"
    # The dependencies come from this environment (a .pth line adds its site-packages after the venv's own),
    # so the test needs no network; equivar itself comes only from the wheel.
    site = subprocess.run([str(py), "-c", "import site; print(site.getsitepackages()[0])"], check=True,
                          capture_output=True, text=True).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")][0]
    (Path(site) / "deps.pth").write_text(deps + "\n")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "experiments").mkdir(parents=True)  # a user's own folder of that name must not matter
    proc = subprocess.run([str(py), "-m", "equivar.run", "experiment=shift_test", "dataset=synthetic",
                           "n_seeds=1", "train.epochs=1", "models=[mlp]", "hydra.run.dir=out"], cwd=elsewhere,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    where = subprocess.run([str(py), "-c", "import equivar.run; print(equivar.run.config_dir())"], cwd=elsewhere,
                           capture_output=True, text=True).stdout.strip()
    assert where.startswith(str(venv)), where
    assert (elsewhere / "out" / "metrics.json").is_file() and (elsewhere / "out" / "checkpoints" / "mlp").is_dir()


OLD_RUN = Path(__file__).parent / "data" / "run_before_renames"


@pytest.mark.optimized  # compiled as the run was, so that its predictions can be compared
def test_a_run_folder_written_before_the_modules_were_renamed_still_loads_and_measures_the_same(tmp_path):
    """tests/data/run_before_renames: a tiny shift_test run (mlp and lenet, 2 seeds, synthetic data) written by
    the code before its modules were renamed by role (checkpoints, execution, tools, ...). Every target and
    module path it recorded still loads, and its models measure what the run measured."""
    import yaml

    before = equivar.read_result(OLD_RUN)
    models = equivar.load_models(OLD_RUN)
    assert set(models) == {"mlp", "lenet"} and all(len(m.modules()) == 2 for m in models.values())
    overrides = [o for o in yaml.safe_load((OLD_RUN / ".hydra" / "overrides.yaml").read_text())
                 if not o.startswith("experiment=")]
    again = equivar.measure("shift_test", overrides, out_dir=tmp_path / "again", load_from=OLD_RUN)
    n_test = before.dataset.n_test
    for name, record in before.models.items():
        # the same predictions; a near-tie may fall the other way on another processor's arithmetic
        for was, now in zip(record.per_seed.clean_accuracy, again.models[name].per_seed.clean_accuracy):
            assert abs(was - now) <= 1 / n_test, (name, was, now)
