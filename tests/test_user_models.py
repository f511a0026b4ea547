"""Models as users write them: NNX containers (``nnx.Sequential``, ``nnx.List``, ``nnx.Dict``, nested blocks),
Flax Linen modules (BatchNorm and Dropout included) and convolutions with explicit padding.

The models live in ``tests/user_models/mylab/nets.py``. The fast tests import them in-process; the CLI test
copies the package into a temporary folder and runs the ``equivar`` console script there, as a user would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from equivar.anatomy import anatomy
from equivar.checkpoints import TrainedModel, load, save
from equivar.errors import ConfigError
from equivar.introspect import split_variables, to_inference, trace_layers
from equivar.models import build_model, check_model
from equivar.train import stack_seeds

from support import ROOT

USER_MODELS = ROOT / "tests" / "user_models"
MODELS = {"seq": "SeqNet", "chain": "ChainNet", "lst": "ListNet", "pad": "PadNet", "lin": "LinenCNN",
          "linbn": "LinenBNDrop"}


@pytest.fixture
def mylab(monkeypatch):
    monkeypatch.syspath_prepend(str(USER_MODELS))
    return "mylab.nets."


def _plain(tree):
    """Arrays of a state as numpy (PRNG keys as their key data), for exact comparison."""
    def one(a):
        a = jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a
        return np.asarray(a)
    return jax.tree.map(one, nnx.to_pure_dict(tree))


@pytest.mark.parametrize("name", [n if n in ("lst", "linbn") else pytest.param(n, marks=pytest.mark.slow)
                                  for n in MODELS])  # the default run: an nnx.List of blocks and a Linen net
@pytest.mark.parametrize("shape", [(24, 1), pytest.param((10, 10, 1), marks=pytest.mark.slow)])
def test_every_seed_reloads_exactly(mylab, name, shape, tmp_path):
    """Parameters and every other variable (BatchNorm statistics, Dropout's key, integer container keys)
    come back bit for bit, for every seed."""
    target = mylab + MODELS[name]
    check_model(target, shape, 10, {}, f"zoo.{name}")
    seeds = [build_model(target, shape, 10, {}, nnx.Rngs(s)) for s in (3, 4)]
    for model in seeds:  # one training-mode call: BatchNorm statistics and the Dropout key move off their init
        model(jax.random.normal(jax.random.key(0), (4, *shape)))
    graphdef, _, _ = split_variables(seeds[0])
    params = stack_seeds([split_variables(m)[1] for m in seeds])
    state = stack_seeds([split_variables(m)[2] for m in seeds])
    model = TrainedModel(name, target, {}, shape, 10, graphdef, params, state, [3, 4], ["ok", "ok"])
    save(model, tmp_path, {"name": "test"})
    back = load(tmp_path, name, None, None, shape, 10)
    for saved, loaded in ((params, back.params), (state, back.model_state)):
        got, want = _plain(loaded), _plain(saved)
        assert jax.tree.structure(got) == jax.tree.structure(want)
        jax.tree.map(np.testing.assert_array_equal, got, want)
    x = jax.random.normal(jax.random.key(1), (3, *shape))
    for i, module in enumerate(back.modules()):
        np.testing.assert_array_equal(module(x), to_inference(seeds[i])(x))


def test_a_model_without_variables_is_refused_in_one_line(mylab):
    """A parameter-free model has nothing to train and no seed axis: refused at the check, naming the entry."""
    with pytest.raises(ConfigError, match=r"^zoo.fixed holds no variables .*give it at least one parameter$"):
        check_model(mylab + "FixedNet", (24, 1), 10, {}, "zoo.fixed")


def test_layers_are_the_leaves_named_by_path(mylab):
    shape = (24, 1)

    def layers(name):
        trace = trace_layers(build_model(mylab + MODELS[name], shape, 10, {}, nnx.Rngs(0)), shape)
        return [n for n, _ in trace.layers], trace.chained

    assert layers("seq") == (["features.0", "features.1", "features.2", "features.3", "head"], False)
    assert layers("chain") == ([f"net.{i}" for i in range(6)], True)
    # A block that computes between its layers (a functional relu) is one layer; nnx.List and nnx.Dict are read.
    assert layers("lst") == (["blocks.0", "blocks.1", "by_name.out"], False)
    assert layers("lin") == (["Conv_0", "Conv_1", "Dense_0"], False)
    assert layers("linbn") == (["Conv_0", "BatchNorm_0", "Dropout_0", "Dense_0"], False)


@pytest.mark.slow  # about 10 s each (gradients over resampled parameters); CI runs them
@pytest.mark.parametrize("shape", [(24, 1), (12, 10, 1)])
@pytest.mark.parametrize("name", ["pad", "chain"])
def test_explicit_padding_dilation_groups_give_exact_analytic_fields(mylab, name, shape):
    """The analytic fields of leaves in containers, with explicit per-side padding, dilation, groups and
    strides, equal the gradients' support exactly (and forward equals backward)."""
    model = build_model(mylab + MODELS[name], shape, 10, {}, nnx.Rngs(0))
    result = anatomy(model, shape, key=jax.random.key(0), n_inputs=16)
    assert "analytic_unavailable" not in result, result.get("analytic_unavailable")
    assert result["forward_equals_backward"] and result["empirical_equals_analytic"]
    assert result["total_params"] == result["model_param_total"]
    if name == "pad":
        fields = [r["rf_forward"][0] for r in result["layers"]]
        assert fields[:6] == [3, 3, 7, 7, 9, 9]  # 3; + dilation 2 x (3 - 1); + (3 - 1) by the strided one


def test_a_reason_that_is_the_true_one(mylab):
    """A convolution that dilates its input has no fixed field; the reason says so (not 'unknown geometry')."""
    conv = nnx.Conv(1, 2, (3,), input_dilation=2, padding=((1, 1),), rngs=nnx.Rngs(0))
    model = nnx.Sequential(conv, nnx.relu)
    result = anatomy(model, (10, 1))
    assert "dilates its input" in result["analytic_unavailable"]


def test_linen_modes_state_and_tracing(mylab):
    """Training calls update BatchNorm's statistics and draw fresh Dropout masks; inference is deterministic,
    touches no state, and can be differentiated (no key drawn inside a trace)."""
    shape = (16, 1)
    model = build_model(mylab + "LinenBNDrop", shape, 10, {"rate": 0.5}, nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (8, *shape))
    before = _plain(split_variables(model)[2])
    a, b = model(x), model(x)
    assert not np.allclose(a, b)  # two Dropout masks
    after = _plain(split_variables(model)[2])
    assert not np.allclose(before["collections"]["batch_stats"]["BatchNorm_0"]["mean"],
                           after["collections"]["batch_stats"]["BatchNorm_0"]["mean"])
    assert not np.array_equal(before["dropout_key"], after["dropout_key"])
    inference = to_inference(model)
    np.testing.assert_array_equal(inference(x), inference(x))
    assert jax.tree.all(jax.tree.map(np.array_equal, _plain(split_variables(model)[2]), after))
    grad = jax.grad(lambda v: inference(v).sum())(x)
    assert grad.shape == x.shape and np.isfinite(grad).all()


def test_a_linen_option_is_checked_like_an_nnx_one(mylab):
    from equivar.errors import ConfigError

    with pytest.raises(ConfigError, match=r"no option 'widht' \(did you mean 'width'\?\)"):
        build_model(mylab + "LinenCNN", (16, 1), 10, {"widht": 4}, nnx.Rngs(0))


def _equivar_script() -> str:
    script = Path(sys.executable).with_name("equivar")
    if not script.exists():
        pytest.skip("the equivar console script is not installed next to this Python (pip install -e .)")
    return str(script)


@pytest.mark.slow  # three CLI runs, about 2 minutes
def test_user_models_train_reload_and_measure_through_the_console_script(tmp_path):
    """From a folder holding ./mylab: train every model with the console script, reload them with
    load_from into lie_derivative and equivariance: identical clean accuracy, per-layer results where the
    leaves form a chain."""
    shutil.copytree(USER_MODELS / "mylab", tmp_path / "mylab")
    zoo = [f"+zoo.{name}._target_=mylab.nets.{cls}" for name, cls in MODELS.items()]
    models = "models=[" + ",".join(MODELS) + "]"
    small = ["dataset.n_train=300", "shift.max=3", "eval.shift_subset=100"]

    def run(*args: str) -> dict:
        proc = subprocess.run([_equivar_script(), *args, *zoo, models, *small], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((tmp_path / args[-1].split("=", 1)[1] / "metrics.json").read_text())

    trained = run("experiment=shift_test", "n_seeds=2", "train.epochs=1", "hydra.run.dir=train")
    lie = run("experiment=lie_derivative", "load_from=train", "lie_derivative.n_examples=32",
              "hydra.run.dir=lie")
    eq = run("experiment=equivariance", "load_from=train", "equivariance.n_examples=16", "hydra.run.dir=eq")
    for name in MODELS:
        want = trained["models"][name]["clean_accuracy"]
        assert lie["models"][name]["clean_accuracy"] == want, name
        assert eq["models"][name]["clean_accuracy"] == want, name
        assert lie["models"][name]["source"].endswith("train")
    for name in ("chain", "pad"):  # leaves in a chain: per-layer Lie derivatives
        assert lie["models"][name]["per_layer_unavailable"] is None
        assert set(lie["models"][name]["layers"]["translate_x"]["logits"]) >= {"net.0 (Conv)", "net.2 (Conv)"}
    # Computing between its layers (functional ReLU, a mean) costs no split: those computations are rows too.
    assert lie["models"]["seq"]["per_layer_unavailable"] is None
    assert list(lie["models"]["seq"]["layers"]["translate_x"]["logits"]) == [
        "features.0 (Conv)", "features.1 (relu)", "features.2 (Conv)", "features.3 (relu)", "model: mean",
        "head (Linear)"]
    # Circular padding and global mean pooling: the Linen CNN is exactly invariant to rolls.
    assert trained["models"]["lin"]["consistency"]["mean"] == 1.0
    layers = eq["models"]["lin"]["stages"]["trained"]["shift"]["roll"]
    assert list(layers) == ["Conv_0", "Conv_1", "Dense_0"]


@pytest.mark.slow  # a 2D lie_derivative run, about 40 s
def test_lie_figures_name_every_model_and_every_generator(mylab, tmp_path, figures):
    """2D data: lie_generators.png draws rotation and scaling beside the translations; a model that computes
    between its layers gets its panel on lie_layers.png, the computation between layers among its bars; the
    summary's layer column names the translation the plots use."""
    from equivar.run import run_experiment

    from support import compose_raw

    raw = compose_raw(["experiment=lie_derivative", "dataset=synthetic", "dataset.rank=2", "n_seeds=1",
                       "train.epochs=1", "models=[mlp,seq]", "zoo.mlp.hidden=[16]", f"+zoo.seq._target_={mylab}SeqNet",
                       "lie_derivative.n_examples=8", "lie_derivative.sawtooth_step=0.5", "shift.max=1"])
    run_experiment(raw, tmp_path)
    panels = [ax.get_title() for ax in figures["lie_generators.png"].axes]
    assert panels == ["translate_y", "translate_x", "rotate", "scale"]
    panels = {ax.get_title().split(":")[0]: [t.get_text() for t in ax.get_xticklabels()]
              for ax in figures["lie_layers.png"].axes}
    assert set(panels) == {"mlp", "seq"} and "model: mean" in panels["seq"]
    assert "largest layer contribution (translate_x)" in (tmp_path / "summary.md").read_text()
