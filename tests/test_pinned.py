"""Behaviours pinned by numbers computed here, by hand, from tiny inputs (never by calling the code twice).

- shift_test on a probe whose predictions follow from its inputs and its per-seed bias: accuracy per shift,
  grid-mean and worst-shift accuracy (each seed's, averaged over the grid, then mean and std over seeds), clean
  accuracy, consistency and its split among correct and wrong inputs, R(r), the probability change, and the
  crop consistency of each canvas (the input padded with zeros or reflected by ``np.pad``, then cropped);
- unseen_positions on a probe: accuracy by position, seen and unseen accuracy over exactly the positions
  ``region_start .. region_start + k - 1``, and the farthest position's;
- the Linen wrapper's training and inference modes under ``deterministic`` and ``use_running_average``
  (Dropout's masks, BatchNorm's batch statistics and running averages by hand) and every mode flag's name;
- layer capture: a block whose inner layers form a chain from its input but do not produce its output (or
  whose chain does not start at its input, or breaks in the middle) stays one layer;
- the checkpoint manifest is written after the checkpoint.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from flax import nnx

from equivar.data import Synthetic
from equivar.run import run_experiment

from support import ROOT, compose_raw

USER_MODELS = ROOT / "tests" / "user_models"


@pytest.fixture
def mylab(monkeypatch):
    monkeypatch.syspath_prepend(str(USER_MODELS))
    return "mylab.nets."


# --- shift_test ---------------------------------------------------------------------------------------------------


class BiasedProbe(nnx.Module):
    """Logits: the first ``n_classes`` positions of channel 0 plus a per-seed bias that training never moves
    (it gets no gradient), so the seeds differ and every prediction follows from the inputs and the bias."""

    def __init__(self, input_shape, n_classes, *, rngs: nnx.Rngs):
        self.n_classes = n_classes
        self.bias = nnx.Param(0.3 * jax.random.normal(rngs.params(), (n_classes,)))

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        return x[:, :self.n_classes, 0] + jax.lax.stop_gradient(self.bias[...])


def _agreement(preds: np.ndarray) -> float:
    """Consistency by its definition: the share of (shift a, shift b, input) triples with the same prediction,
    over every ordered pair of shifts (two independent uniform draws)."""
    pairs = [np.mean(preds[a] == preds[b]) for a, b in itertools.product(range(len(preds)), repeat=2)]
    return float(np.mean(pairs))


def _crop_shift(x: np.ndarray, s: int, pad_mode: str) -> np.ndarray:
    """``x`` (N, L) placed in a canvas padded by ``|s|`` on both sides (``np.pad``), the window moved by ``s``."""
    m = abs(s)
    canvas = np.pad(x, ((0, 0), (m, m)), mode=pad_mode)
    return canvas[:, m - s:m - s + x.shape[1]]


def _mean_std(values) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1))


def test_shift_test_every_measure_by_hand_on_seeds_that_differ(tmp_path, figures):
    """Two seeds with different biases under a roll grid of -3..3 on 40 of 128 test inputs."""
    from equivar.checkpoints import load

    raw = compose_raw(["experiment=shift_test", "dataset=synthetic", "dataset.size=12", "n_seeds=2",
                       "train.epochs=1", "train.batch_size=64", "train.min_steps=0", "shift.max=3",
                       "shift.mode=roll", "eval.shift_subset=40", "train.tensorboard=false",
                       "+zoo.probe._target_=test_pinned.BiasedProbe", "models=[probe]"])
    result = run_experiment(raw, tmp_path)
    data = Synthetic(size=12).load()
    n_classes = data.n_classes
    bias = np.asarray(nnx.to_pure_dict(load(tmp_path, "probe", None, None, (12, 1), n_classes).params)["bias"],
                      dtype=np.float64)  # (seeds, classes), as trained (untouched)
    assert bias.shape == (2, n_classes) and not np.allclose(bias[0], bias[1])
    x_all = data.x_test[..., 0].astype(np.float64)
    x, y = x_all[:40], data.y_test[:40]
    shifts = list(range(-3, 4))
    assert [s[0] for s in result.shifts] == shifts and result.n_eval_shift == 40

    def logits(inputs, seed):
        return inputs[:, :n_classes] + bias[seed]

    per_shift = np.array([[np.mean(logits(np.roll(x, s, axis=1), b).argmax(1) == y) for s in shifts]
                          for b in range(2)])  # (seeds, shifts)
    clean = [np.mean(logits(x_all, b).argmax(1) == data.y_test) for b in range(2)]
    grid_mean = per_shift.mean(axis=1)  # each seed's mean over the 7 shifts
    worst = per_shift.min(axis=1)
    cons, right, wrong, change, robust, crops = [], [], [], [], [], {"zero": [], "reflect": []}
    for b in range(2):
        preds = np.array([logits(np.roll(x, s, axis=1), b).argmax(1) for s in shifts])  # (shifts, N)
        reference = logits(x, b).argmax(1)
        correct = reference == y
        assert 0 < correct.sum() < len(y)  # both groups present for both seeds
        cons.append(_agreement(preds))
        right.append(_agreement(preds[:, correct]))
        wrong.append(_agreement(preds[:, ~correct]))
        ok = preds == y[None, :]
        robust.append([np.mean(ok[[abs(s) <= r for s in shifts]].all(axis=0)) for r in (0, 1, 2, 3)])
        soft = [np.exp(logits(np.roll(x, s, axis=1), b)) for s in shifts]
        soft = [p / p.sum(1, keepdims=True) for p in soft]
        ref = soft[shifts.index(0)]
        change.append(np.mean([np.abs(p[np.arange(len(y)), reference] - ref[np.arange(len(y)), reference])
                               for p in soft]))
        for canvas, pad_mode in (("zero", "constant"), ("reflect", "reflect")):
            crops[canvas].append(_agreement(np.array([logits(_crop_shift(x, s, pad_mode), b).argmax(1)
                                                      for s in shifts])))
    probe = result.models["probe"]
    # the measures are told apart on these inputs (a mix-up of any two would show)
    assert abs(np.mean(right) - np.mean(wrong)) > 0.05
    assert len({round(np.mean(cons), 6), round(np.mean(crops["zero"]), 6), round(np.mean(crops["reflect"]), 6)}) == 3
    assert np.ptp(per_shift) > 0 and abs(per_shift[0].mean() - per_shift[1].mean()) > 0.01

    np.testing.assert_allclose(probe.shift_accuracy.mean, per_shift.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(probe.shift_accuracy.std, per_shift.std(0, ddof=1), rtol=0, atol=1e-12)
    for stat, values in ((probe.clean_accuracy, clean), (probe.grid_mean_accuracy, grid_mean),
                         (probe.worst_shift_accuracy, worst), (probe.consistency, cons),
                         (probe.consistency_correct, right), (probe.consistency_wrong, wrong),
                         (probe.probability_change, change),
                         (probe.crop_consistency["zero"], crops["zero"]),
                         (probe.crop_consistency["reflect"], crops["reflect"])):
        mean, std = _mean_std(values)
        assert stat.n == 2
        assert stat.mean == pytest.approx(mean, abs=1e-6) and stat.std == pytest.approx(std, abs=1e-6)
    assert set(probe.crop_consistency) == {"zero", "reflect"}
    assert result.robustness_radii == [0, 1, 2, 3]
    np.testing.assert_allclose(probe.robustness.mean, np.mean(robust, 0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(probe.robustness.std, np.std(robust, 0, ddof=1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(probe.per_seed.grid_mean_accuracy, grid_mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(probe.per_seed.clean_accuracy, clean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(probe.per_seed.consistency, cons, rtol=0, atol=1e-9)
    # the figures draw these numbers: a marker per measured shift, R(r) with its end markers whole on the frame,
    # consistency bars on a fixed 0..1.1 axis (room for the values written above them)
    (line,) = [ln for ln in figures["accuracy_vs_shift.png"].axes[0].get_lines() if ln.get_label() == "probe"]
    np.testing.assert_allclose(line.get_xdata(), shifts)
    np.testing.assert_allclose(line.get_ydata(), per_shift.mean(0), rtol=1e-12)
    assert line.get_marker() == "o"
    (line,) = [ln for ln in figures["robustness.png"].axes[0].get_lines() if ln.get_label() == "probe"]
    np.testing.assert_allclose(line.get_ydata(), np.mean(robust, 0), rtol=1e-12)
    assert line.get_clip_on() is False
    assert figures["consistency.png"].axes[0].get_ylim() == (0, 1.1)
    lines = (tmp_path / "summary.md").read_text().splitlines()
    header = ("| model | consistency (correct) | consistency (wrong) | R(1) | R(3) | probability change | "
              "crop consistency (zero) | crop consistency (reflect) |")
    at = lines.index(header)  # R at the smallest shift and at the whole grid
    assert lines[at + 1] == "|---|---:|---:|" + "---:|" * 5
    assert lines[at + 2].startswith("| probe | ") and lines[at + 2].count(" | ") == 7
    from equivar.experiments import shift_test

    again = tmp_path / "again"
    again.mkdir()
    written = shift_test.plot(result, again)
    assert sorted(p.name for p in written) == ["accuracy_vs_shift.png", "consistency.png", "robustness.png"]
    assert all(p.is_file() for p in written)


# --- unseen_positions ---------------------------------------------------------------------------------------------


class FrontReader(nnx.Module):
    """Predicts the class whose position among the canvas's first ``n_classes`` holds the largest value."""

    def __init__(self, input_shape, n_classes, *, rngs: nnx.Rngs):
        self.n_classes = n_classes
        self.unused = nnx.Param(jnp.zeros(()))

    def __call__(self, x):
        return x.reshape(x.shape[0], -1, x.shape[-1])[:, :self.n_classes, 0] + 0.0 * self.unused[...]


def test_unseen_positions_seen_is_exactly_the_training_region(tmp_path, figures):
    """Regions of 2, 3 and 12 from position 1 on a canvas of 24 (margin 12; 1 + 12 = 13 positions fit exactly):
    seen is the mean over positions 1..k, unseen over the other 13 - k, the farthest is position 12 (position 0
    for k = 12); accuracy by position recomputed with numpy; the figure shades exactly 0.5..k + 0.5."""
    raw = compose_raw(["experiment=unseen_positions", "dataset=synthetic", "dataset.size=12", "dataset.n_train=64",
                       "dataset.n_test=48", "n_seeds=1", "train.epochs=1", "train.batch_size=32",
                       "train.min_steps=0", "train.tensorboard=false", "unseen_positions.regions=[2,3,12]",
                       "unseen_positions.region_start=1",  # position_step: null, every position in 1D
                       "unseen_positions.transfer=false", "+zoo.probe._target_=test_pinned.FrontReader",
                       "models=[probe]"])
    result = run_experiment(raw, tmp_path)
    data = Synthetic(size=12, n_train=64, n_test=48).load()
    x, y = data.x_test[..., 0], data.y_test
    assert result.margin == 12 and [p[0] for p in result.positions] == list(range(13))
    by_position = []
    for p in range(13):
        canvas = np.zeros((len(y), 24), np.float32)
        canvas[:, p:p + 12] = x
        by_position.append(np.mean(canvas[:, :data.n_classes].argmax(1) == y))
    by_position = np.array(by_position)
    for k, farthest in ((2, 12), (3, 12), (12, 0)):
        seen = [p for p in range(13) if 1 <= p <= k]  # positions 1 .. 1 + k - 1
        unseen = [p for p in range(13) if p not in seen]
        if k < 12:  # one position more or less on either side of the region would change the numbers
            for wrong_seen in (seen + [k + 1], seen[1:], [0] + seen):
                assert by_position[wrong_seen].mean() != pytest.approx(by_position[seen].mean(), abs=1e-9)
        record = result.models[f"probe_region{k}"]
        assert record.region == k and record.stage == "region"
        np.testing.assert_allclose(record.accuracy_by_position.mean, by_position, rtol=0, atol=1e-12)
        assert record.seen_accuracy.mean == pytest.approx(by_position[seen].mean(), abs=1e-12)
        assert record.unseen_accuracy.mean == pytest.approx(by_position[unseen].mean(), abs=1e-12)
        assert record.farthest_accuracy.mean == pytest.approx(by_position[farthest], abs=1e-12)
    assert by_position[12] != pytest.approx(by_position[0])  # the farthest position is not the nearer end
    (ax,) = [a for a in figures["unseen_positions.png"].axes if a.get_visible() and a.patches]
    spans = sorted((round(r.get_x(), 9), round(r.get_x() + r.get_width(), 9)) for r in ax.patches)
    assert spans == [(0.5, 2.5), (0.5, 3.5), (0.5, 12.5)]


def test_inside_and_distance_by_hand():
    from equivar.experiments.unseen_positions import _distance, _inside

    grid = np.arange(7)[:, None]
    assert _inside(grid, 2, 3).tolist() == [False, False, True, True, True, False, False]
    assert _inside(grid, 2, None).all()
    assert _distance(grid, 2, 3).tolist() == [2, 1, 0, 0, 0, 1, 2]
    grid2 = np.array([[0, 0], [1, 2], [2, 2], [2, 5], [4, 1]])
    assert _inside(grid2, 1, 2).tolist() == [False, True, True, False, False]
    assert _distance(grid2, 1, 2).tolist() == [1, 0, 0, 3, 2]


# --- the Linen wrapper's modes ------------------------------------------------------------------------------------


def test_linen_deterministic_flag_drops_out_in_training_only(mylab):
    """``deterministic`` is False in training (Dropout at rate 0.5: every value 0 or twice the input) and True
    in inference (the input itself)."""
    from equivar.introspect import split_variables, to_inference
    from equivar.models import build_model

    model = build_model(mylab + "LinenDropDet", (8, 1), 4, {"rate": 0.5}, nnx.Rngs(0))
    x = jnp.arange(1.0, 17.0).reshape(2, 8, 1)
    expected = np.arange(1.0, 17.0).reshape(2, 8)[:, :4]
    key_before = np.asarray(jax.random.key_data(split_variables(model)[2]["dropout_key"][...]))
    trained = np.asarray(model(x))
    dropped = trained == 0
    assert np.all(dropped | np.isclose(trained, 2 * expected))
    assert dropped.any() and (~dropped).any()  # a mask was drawn: some dropped, some kept and scaled by 2
    key_after = np.asarray(jax.random.key_data(split_variables(model)[2]["dropout_key"][...]))
    assert not np.array_equal(key_before, key_after)
    np.testing.assert_array_equal(np.asarray(to_inference(model)(x)), expected)
    assert np.array_equal(key_after, np.asarray(jax.random.key_data(split_variables(model)[2]["dropout_key"][...])))


def test_linen_use_running_average_flag_updates_statistics_in_training_only(mylab):
    """BatchNorm switched by ``use_running_average`` (momentum 0.5): training normalises by the batch's mean and
    (biased) variance and moves the running averages halfway to them; inference normalises by the running
    averages and moves nothing."""
    from equivar.introspect import to_inference
    from equivar.models import build_model

    model = build_model(mylab + "LinenBNRunning", (4, 1), 3, {"momentum": 0.5}, nnx.Rngs(0))
    values = np.array([[1.0, 2.0, 3.0, 6.0], [0.0, -2.0, 4.0, 4.0]])  # mean 2.25, biased variance 5.6875
    x = jnp.asarray(values[..., None], jnp.float32)
    mean, var, eps = values.mean(), values.var(), 1e-5
    assert mean == 2.25 and var == pytest.approx(5.6875)

    def stats():
        s = model.collections["batch_stats"]["BatchNorm_0"]
        return float(s["mean"][...][0]), float(s["var"][...][0])

    assert stats() == (0.0, 1.0)
    inference = to_inference(model)
    np.testing.assert_allclose(inference(x), values[:, :3] / np.sqrt(1 + eps), rtol=1e-6)
    assert stats() == (0.0, 1.0)  # inference moves nothing
    np.testing.assert_allclose(model(x), ((values - mean) / np.sqrt(var + eps))[:, :3], rtol=1e-5, atol=1e-6)
    run_mean, run_var = 0.5 * 0.0 + 0.5 * mean, 0.5 * 1.0 + 0.5 * var
    assert stats() == pytest.approx((run_mean, run_var), rel=1e-6)
    np.testing.assert_allclose(inference(x), ((values - run_mean) / np.sqrt(run_var + eps))[:, :3], rtol=1e-5,
                               atol=1e-6)
    assert stats() == pytest.approx((run_mean, run_var), rel=1e-6)


def _linen_taking(*flags: str) -> type:
    """A Linen module class whose ``__call__`` takes ``flags`` (keyword arguments)."""
    names = ", ".join(f"{f}=False" for f in flags)
    namespace: dict = {}
    exec(f"class M(nn.Module):\n    def __call__(self, x, {names}):\n        return x\n", {"nn": nn}, namespace)
    return namespace["M"]


@pytest.mark.parametrize("flag, in_training", [
    ("train", True), ("training", True), ("is_training", True),
    ("deterministic", False), ("eval", False), ("inference", False), ("use_running_average", False)])
def test_every_mode_flag_gets_its_training_value(flag, in_training):
    from equivar.linen import mode_argument

    assert mode_argument(_linen_taking(flag)) == (flag, in_training)
    # a training flag wins over an inference one, whichever comes first
    assert mode_argument(_linen_taking("deterministic", "train")) == ("train", True)
    assert mode_argument(_linen_taking("x2")) is None


# --- layer capture ------------------------------------------------------------------------------------------------


class _Block(nnx.Module):
    """Two Linear layers; ``how`` says what the block does around them."""

    def __init__(self, how: str, rngs: nnx.Rngs):
        self.how = how
        self.a = nnx.Linear(2, 2, rngs=rngs)
        self.b = nnx.Linear(2, 2, rngs=rngs)

    def __call__(self, x):
        if self.how == "chain":
            return self.b(self.a(x))
        if self.how == "scaled_output":  # the chain reads the input, but the block returns something else
            return 2.0 * self.b(self.a(x))
        if self.how == "scaled_input":  # the chain does not start at the block's input
            return self.b(self.a(2.0 * x))
        return self.b(self.a(x) + 1.0)  # "broken": computes between its layers


class _Outer(nnx.Module):
    def __init__(self, how: str, rngs: nnx.Rngs):
        self.block = _Block(how, rngs)
        self.head = nnx.Linear(2, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(self.block(x))


def _dense(layer: nnx.Linear, h: np.ndarray) -> np.ndarray:
    return h @ np.asarray(layer.kernel[...], np.float64) + np.asarray(layer.bias[...], np.float64)


@pytest.mark.parametrize("how", ["chain", "scaled_output", "scaled_input", "broken"])
def test_a_block_is_flattened_only_when_its_layers_carry_its_input_to_its_output(how):
    from equivar.introspect import capture

    model = _Outer(how, nnx.Rngs(0))
    values = np.array([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.25]])
    out, calls, chained = capture(model, jnp.asarray(values, jnp.float32))
    a, b = model.block.a, model.block.b
    block_out = {"chain": _dense(b, _dense(a, values)), "scaled_output": 2.0 * _dense(b, _dense(a, values)),
                 "scaled_input": _dense(b, _dense(a, 2.0 * values)), "broken": _dense(b, _dense(a, values) + 1.0)}[how]
    names = [c.name for c in calls]
    if how == "chain":
        assert names == ["block.a", "block.b", "head"] and chained
        np.testing.assert_allclose(calls[0].output, _dense(a, values), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(calls[1].output, block_out, rtol=1e-5, atol=1e-6)
    else:
        assert names == ["block", "head"] and chained  # the block is one layer, and the model a chain of two
        np.testing.assert_allclose(calls[0].output, block_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(calls[-1].output, _dense(model.head, block_out), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, _dense(model.head, block_out), rtol=1e-5, atol=1e-6)


# --- checkpoints --------------------------------------------------------------------------------------------------


def _tiny_trained(name: str):
    from equivar.checkpoints import TrainedModel
    from equivar.introspect import split_variables
    from equivar.train import stack_seeds

    seeds = [nnx.Linear(3, 2, rngs=nnx.Rngs(s)) for s in (0, 1)]
    graphdef, _, _ = split_variables(seeds[0])
    params = stack_seeds([split_variables(m)[1] for m in seeds])
    state = stack_seeds([split_variables(m)[2] for m in seeds])
    return TrainedModel(name, "flax.nnx.Linear", {}, (3,), 2, graphdef, params, state, [0, 1], ["ok", "ok"])


def test_the_manifest_is_written_after_the_checkpoint(tmp_path, monkeypatch):
    """When the manifest is written the checkpoint folder is complete; a checkpoint write that fails leaves no
    manifest (so no run lists a model it cannot load)."""
    import orbax.checkpoint as ocp

    import equivar.checkpoints as trained

    seen = {}
    original = trained.write_json

    def write_json(path, data):
        folder = path.parent / path.stem
        seen["folder"] = folder.is_dir() and any(folder.iterdir())
        seen["tmp"] = [p.name for p in path.parent.glob("*tmp*")]  # no write of Orbax's still in progress
        return original(path, data)

    monkeypatch.setattr(trained, "write_json", write_json)
    trained.save(_tiny_trained("ok"), tmp_path, {"name": "test"})
    assert seen == {"folder": True, "tmp": []}
    assert trained.available(tmp_path) == ["ok"]

    def broken_save(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ocp.StandardCheckpointer, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        trained.save(_tiny_trained("lost"), tmp_path, {"name": "test"})
    assert not trained.record_path(tmp_path, "lost").exists()
    assert trained.available(tmp_path) == ["ok"]


# --- more of the Linen wrapper, layer capture and the alias-free net ----------------------------------------------


class LinenShaped(nn.Module):
    """A Linen class that takes the input shape and the class count as fields (``input_shape``, ``num_outputs``)."""

    input_shape: tuple
    num_outputs: int
    width: int = 3

    @nn.compact
    def __call__(self, x):
        assert tuple(x.shape[1:]) == tuple(self.input_shape)
        h = nn.Dense(self.width)(x.reshape(x.shape[0], -1))
        return nn.Dense(self.num_outputs)(h)


def test_linen_options_are_the_fields_equivar_does_not_fill(mylab):
    from equivar.linen import linen_options
    from equivar.models import build_model

    assert linen_options(LinenShaped) == ["width"]  # not parent, name, input_shape, num_outputs
    import mylab.nets as nets

    assert linen_options(nets.LinenCNN) == ["width"]
    assert linen_options(nets.LinenBNDrop) == ["width", "rate"]
    model = build_model("test_pinned.LinenShaped", (4, 2), 3, {"width": 5}, nnx.Rngs(0))
    assert model.module.input_shape == (4, 2) and model.module.num_outputs == 3 and model.module.width == 5
    assert model(jnp.ones((2, 4, 2))).shape == (2, 3)


def test_a_model_without_layers_is_refused_naming_its_class(mylab):
    from equivar.errors import ConfigError
    from equivar.introspect import trace_layers
    from equivar.models import build_model

    model = build_model(mylab + "FixedNet", (8, 1), 3, {}, nnx.Rngs(0))
    with pytest.raises(ConfigError, match=r"^zoo\.fixed \(FixedNet\) calls no flax\.nnx\.Module attribute"):
        trace_layers(model, (8, 1), where="zoo.fixed")


def test_the_kinds_of_a_linen_sequentials_rows(mylab):
    """Rows named with their type as a user names it: the class, or the function's name without brackets."""
    from equivar.introspect import scoped_forward, to_inference
    from equivar.models import build_model

    model = to_inference(build_model(mylab + "LinenSeq", (8, 1), 3, {}, nnx.Rngs(0)))
    forward, kinds = scoped_forward(model)
    jax.eval_shape(forward, jax.ShapeDtypeStruct((1, 8, 1), jnp.float32))
    assert {k: v for k, v in kinds.items() if k.startswith("net")} == {
        "net": "Sequential", "net.layers_0": "Conv", "net.layers_1": "relu", "net.layers_2": "lambda", "net.layers_3": "Dense",
        "net.layers_4": "relu", "net.layers_5": "Dense"}


def test_inference_view_uses_running_averages_and_no_dropout():
    """An NNX BatchNorm and Dropout: the inference view normalises by the running averages (mean 0, variance 1
    at initialisation) and drops nothing; training mode normalises by the batch."""
    from equivar.introspect import to_inference

    model = nnx.Sequential(nnx.BatchNorm(1, rngs=nnx.Rngs(0)), nnx.Dropout(0.5, rngs=nnx.Rngs(1)))
    values = np.array([[1.0, 2.0, 3.0, 6.0], [0.0, -2.0, 4.0, 4.0]])[..., None]
    x = jnp.asarray(values, jnp.float32)
    np.testing.assert_allclose(to_inference(model)(x), values / np.sqrt(1 + 1e-5), rtol=1e-6)
    trained = np.asarray(model(x))  # batch statistics, then Dropout: each value 0 or twice the normalised one
    normalised = (values - values.mean()) / np.sqrt(values.var() + 1e-5)
    assert np.all((trained == 0) | np.isclose(trained, 2 * normalised, rtol=1e-4, atol=1e-5))


@pytest.mark.parametrize("spatial, downsamples, message", [
    ((10,), [True, True], "block 2 downsamples by 2, but its input has spatial size (5,)"),
    ((12, 12), [False, True, True, True], "block 4 downsamples by 2, but its input has spatial size (3, 3)"),
])
def test_an_odd_size_names_the_block_that_cannot_halve_it(spatial, downsamples, message):
    from equivar.alias_free import check_even_path

    with pytest.raises(ValueError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        check_even_path(spatial, downsamples)
    check_even_path((12,), [True, False, True])  # 12 -> 6 -> 3: every halving of an even size


# --- the training figure ------------------------------------------------------------------------------------------


def _curves(n_trainings: int, examples=(20,)):
    """Trainings of 3 seeds x 3 epochs; seed 1 diverged after epoch 2 (NaN after it)."""
    from types import SimpleNamespace

    nan = float("nan")
    loss = [[2.0, 1.0, 0.5], [1.0, 0.8, nan], [3.0, 1.5, 0.7]]
    acc = [[0.2, 0.5, 0.7], [0.3, 0.4, nan], [0.1, 0.6, 0.8]]
    models = {}
    for i in range(n_trainings):
        training = SimpleNamespace(loss=loss, accuracy=acc, heldout_loss=[[v * 1.5 for v in r] for r in loss],
                                   heldout_accuracy=[[v / 2 for v in r] for r in acc],
                                   heldout_examples=examples[i % len(examples)], seconds=1.0)
        models[f"net{i}"] = SimpleNamespace(training=training, model="mlp")
    return SimpleNamespace(models=models, unmeasured={}, dataset=SimpleNamespace(name="toy", n_classes=4))


def _by_hand(rows):
    """Per epoch: the mean and the population std over the seeds with a number there."""
    columns = [[r[e] for r in rows if r[e] == r[e]] for e in range(3)]
    means = [sum(c) / len(c) for c in columns]
    stds = [(sum((v - m) ** 2 for v in c) / len(c)) ** 0.5 for c, m in zip(columns, means)]
    return np.array(means), np.array(stds), np.array([min(c) for c in columns])


def _band(collection):
    vertices = collection.get_paths()[0].vertices
    return (np.array([vertices[np.isclose(vertices[:, 0], e), 1].min() for e in (1, 2, 3)]),
            np.array([vertices[np.isclose(vertices[:, 0], e), 1].max() for e in (1, 2, 3)]))


def test_training_figure_draws_the_mean_and_spread_of_the_seeds(tmp_path, monkeypatch):
    """Two trainings: one loss panel (log axis; the band's lower edge cut at the lowest seed) and one accuracy
    panel, mean ± std over the seeds with a number at that epoch, dashed held-out curves, epochs 1, 2, 3."""
    from equivar import plot

    drawn = []
    monkeypatch.setattr(plot, "save", lambda fig, path: drawn.append(fig) or path)
    result = _curves(2)
    plot.training_figure(result, tmp_path)
    ax_loss, ax_acc = [ax for ax in drawn[0].axes if ax.get_visible()]
    loss = result.models["net0"].training
    for ax, rows, held, is_loss in ((ax_loss, loss.loss, loss.heldout_loss, True),
                                    (ax_acc, loss.accuracy, loss.heldout_accuracy, False)):
        lines = {line.get_label(): line for line in ax.get_lines()}
        for label, data, style in (("net0 (train)", rows, "-"), ("net0 (held-out)", held, "--")):
            mean, std, lowest = _by_hand(data)
            np.testing.assert_allclose(lines[label].get_xdata(), [1, 2, 3])
            np.testing.assert_allclose(lines[label].get_ydata(), mean, rtol=1e-12)
            assert lines[label].get_linestyle() == style
        bands = [_band(c) for c in ax.collections]
        mean, std, lowest = _by_hand(rows)
        low = np.maximum(mean - std, lowest) if is_loss else mean - std
        assert any(np.allclose(b[0], low) and np.allclose(b[1], mean + std) for b in bands)
        assert all(0 < c.get_alpha() < 1 for c in ax.collections)  # a band never hides the curves under it
        assert ax.get_xlabel() == "epoch" and [t for t in ax.get_xticks() if 1 <= t <= 3] == [1, 2, 3]
    assert ax_loss.get_yscale() == "log" and ax_loss.get_ylabel() == "cross-entropy loss"
    assert "dashed: 20 held-out test examples after each epoch" in drawn[0].get_suptitle()
    assert "(mean ± std over 3 seeds)" in drawn[0].get_suptitle()


def test_training_figure_for_many_trainings_keeps_every_panel_a_whole_accuracy_axis(tmp_path, monkeypatch):
    from equivar import plot

    drawn = []
    monkeypatch.setattr(plot, "save", lambda fig, path: drawn.append(fig) or path)
    n = plot.FEW_TRAININGS + 1
    plot.training_figure(_curves(n, examples=(20, 50)), tmp_path)
    fig = drawn[0]
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == n
    cols = min(6, n)
    for i, ax in enumerate(axes):
        assert ax.get_ylim() == (0, 1.05)
        assert [t for t in ax.get_xticks() if 1 <= t <= 3] == [1, 2, 3]
        assert ax.get_ylabel() == ("accuracy" if i % cols == 0 else "")
        mean, _, _ = _by_hand(_curves(1).models["net0"].training.accuracy)
        (train,) = [line for line in ax.get_lines() if line.get_label() == "train"]
        np.testing.assert_allclose(train.get_ydata(), mean, rtol=1e-12)
    grid = np.array(fig.axes).reshape(-1, cols)
    assert [ax.get_xlabel() for ax in grid[-1]] == ["epoch"] * cols
    assert "dashed: 20 to 50 held-out test examples after each epoch" in fig.get_suptitle()


# --- invariance_benchmark -----------------------------------------------------------------------------------------


def _fourier_shift(x: np.ndarray, t: float) -> np.ndarray:
    """Band-limited circular shift of rows of even length by ``t``: every frequency's phase turned by
    ``-2 pi k t / n``, the Nyquist bin by the real ``cos(pi t)``."""
    n = x.shape[1]
    phase = np.exp(-2j * np.pi * np.arange(n // 2 + 1) * t / n)
    phase[-1] = np.cos(np.pi * t)
    return np.fft.irfft(np.fft.rfft(x, axis=1) * phase, n=n, axis=1)


@pytest.mark.slow  # about 5 s: four evaluation grids and a Lie derivative
def test_invariance_benchmark_numbers_by_hand_on_a_probe(tmp_path):
    from equivar.checkpoints import load

    raw = compose_raw(["experiment=invariance_benchmark", "dataset=synthetic", "dataset.size=12", "n_seeds=2",
                       "train.epochs=1", "train.batch_size=64", "train.min_steps=0", "train.tensorboard=false",
                       "shift.max=2", "eval.shift_subset=40", "invariance_benchmark.n_examples=16",
                       "invariance_benchmark.fractional_max=1", "invariance_benchmark.fractional_steps=[4,2]",
                       "invariance_benchmark.augmented=[]", "+zoo.probe._target_=test_pinned.BiasedProbe",
                       "models=[probe]"])
    result = run_experiment(raw, tmp_path)
    data = Synthetic(size=12).load()
    bias = np.asarray(nnx.to_pure_dict(load(tmp_path, "probe", None, None, (12, 1), 4).params)["bias"], np.float64)
    x_all = data.x_test[..., 0].astype(np.float64)
    x, y = x_all[:40], data.y_test[:40]

    def preds(inputs, seed):
        return (inputs[:, :4] + bias[seed]).argmax(1)

    integer, halves = range(-2, 3), [-1.0, -0.5, 0.0, 0.5, 1.0]
    clean = [np.mean(preds(x_all, b) == data.y_test) for b in range(2)]
    cons = [_agreement(np.array([preds(np.roll(x, s, 1), b) for s in integer])) for b in range(2)]
    zero = [_agreement(np.array([preds(_crop_shift(x, s, "constant"), b) for s in integer])) for b in range(2)]
    reflect = [_agreement(np.array([preds(_crop_shift(x, s, "reflect"), b) for s in integer])) for b in range(2)]
    half = [_agreement(np.array([preds(_fourier_shift(x, t), b) for t in halves])) for b in range(2)]
    quarter = [_agreement(np.array([preds(_fourier_shift(x, t), b) for t in np.arange(-4, 5) / 4]))
               for b in range(2)]
    robust_half = {r: [np.mean(np.all([preds(_fourier_shift(x, t), b) == y for t in halves if abs(t) <= r], axis=0))
                       for b in range(2)] for r in (0.5, 1)}
    robust = {r: [np.mean(np.all([preds(np.roll(x, s, 1), b) == y for s in integer if abs(s) <= r], axis=0))
                  for b in range(2)] for r in (1, 2)}
    assert len({round(np.mean(v), 6) for v in (cons, zero, reflect)}) == 3

    assert set(result.models) == {"probe"} and result.n_examples == 16
    assert result.integer_grid == {"max": 2, "step": 1, "mode": "roll"}
    probe = result.models["probe"]
    assert probe.model == "probe" and probe.augmentation == "none" and probe.target == "test_pinned.BiasedProbe"
    assert probe.n_params == 4 and [s.seed for s in probe.seeds] == [0, 1] and probe.training is not None
    for stat, values in ((probe.clean_accuracy, clean), (probe.integer_consistency, cons),
                         (probe.crop_consistency["zero"], zero), (probe.crop_consistency["reflect"], reflect),
                         (probe.fractional_consistency["2"], half), (probe.fractional_consistency["4"], quarter),
                         (probe.robustness_half["0.5"], robust_half[0.5]), (probe.robustness_half["1"], robust_half[1]),
                         (probe.robustness_integer["1"], robust[1]), (probe.robustness_integer["2"], robust[2])):
        mean, std = _mean_std(values)
        assert stat.n == 2
        assert stat.mean == pytest.approx(mean, abs=1e-9) and stat.std == pytest.approx(std, abs=1e-9)
    rows = [line for line in (tmp_path / "summary.md").read_text().splitlines() if line.startswith("| probe")]
    assert rows and all(line.endswith(" |") and "XX" not in line for line in rows)


def test_unseen_positions_in_2d_by_hand_and_its_map(tmp_path, figures):
    """Patterns of 6x6 on a 12x12 canvas, positions {0, 4, 6} per axis (every 4th, and the margin), trained in
    0..4 on both axes: seen are the four positions with both coordinates in {0, 4}; the map spans the grid's
    positions (half a step beyond each end) and its cyan square is the region."""
    raw = compose_raw(["experiment=unseen_positions", "dataset=synthetic", "dataset.rank=2", "dataset.size=6",
                       "dataset.template_size=3", "dataset.n_train=32", "dataset.n_test=40", "n_seeds=1",
                       "train.epochs=1", "train.batch_size=16", "train.min_steps=0", "train.tensorboard=false",
                       "unseen_positions.regions=[5]", "unseen_positions.transfer=false",
                       "+zoo.probe._target_=test_pinned.FrontReader", "models=[probe]"])
    result = run_experiment(raw, tmp_path)
    data = Synthetic(rank=2, size=6, template_size=3, n_train=32, n_test=40).load()
    x, y = data.x_test[..., 0], data.y_test
    grid = list(itertools.product([0, 4, 6], repeat=2))
    assert [tuple(p) for p in result.positions] == grid and result.grid_shape == [3, 3]
    by_position = []
    for p0, p1 in grid:
        canvas = np.zeros((len(y), 12, 12), np.float32)
        canvas[:, p0:p0 + 6, p1:p1 + 6] = x
        by_position.append(np.mean(canvas[:, 0, :4].argmax(1) == y))
    by_position = np.array(by_position)
    seen = [i for i, p in enumerate(grid) if max(p) <= 4]
    unseen = [i for i in range(9) if i not in seen]
    record = result.models["probe_region5"]
    np.testing.assert_allclose(record.accuracy_by_position.mean, by_position, rtol=0, atol=1e-12)
    assert record.seen_accuracy.mean == pytest.approx(by_position[seen].mean(), abs=1e-12)
    assert record.unseen_accuracy.mean == pytest.approx(by_position[unseen].mean(), abs=1e-12)
    assert record.farthest_accuracy.mean == pytest.approx(by_position[grid.index((0, 6))], abs=1e-12)
    assert by_position[seen].mean() != pytest.approx(by_position[unseen].mean())
    (ax,) = [a for a in figures["unseen_positions.png"].axes if a.get_images()]
    (image,) = ax.get_images()
    assert list(image.get_extent()) == [-2, 8, 8, -2]
    np.testing.assert_allclose(image.get_array(), by_position.reshape(3, 3))
    (square,) = ax.patches
    assert (square.get_xy(), square.get_width(), square.get_height()) == ((-0.5, -0.5), 5, 5)


class NaNProbe(nnx.Module):
    """Logits that are NaN from the start: every seed diverges at its first step."""

    def __init__(self, input_shape, n_classes, *, rngs: nnx.Rngs):
        self.bias = nnx.Param(jnp.full((n_classes,), jnp.nan))

    def __call__(self, x):
        return x.reshape(x.shape[0], -1)[:, :self.bias.shape[0]] + self.bias[...]


@pytest.mark.slow  # about 4 s
def test_invariance_benchmark_reports_a_model_whose_every_seed_diverged(tmp_path):
    raw = compose_raw(["experiment=invariance_benchmark", "dataset=synthetic", "dataset.size=12", "n_seeds=2",
                       "train.epochs=1", "train.batch_size=64", "train.min_steps=0", "train.tensorboard=false",
                       "shift.max=2", "invariance_benchmark.fractional_max=1", "invariance_benchmark.augmented=[]",
                       "+zoo.broken._target_=test_pinned.NaNProbe", "models=[broken]"])
    result = run_experiment(raw, tmp_path)
    assert result.models == {} and set(result.unmeasured) == {"broken"}
    assert [s.text() for s in result.unmeasured["broken"].seeds] == ["diverged at step 0 (epoch 1)"] * 2
    assert result.status.value == "diverged"


def test_training_figure_without_a_dataset_draws_no_chance_line(tmp_path, monkeypatch):
    """A result that names no dataset (read back from an older run) still draws; no panel gets a chance line."""
    from equivar import plot

    drawn = []
    monkeypatch.setattr(plot, "save", lambda fig, path: drawn.append(fig) or path)
    for n in (2, plot.FEW_TRAININGS + 1):
        result = _curves(n)
        result.dataset = None
        plot.training_figure(result, tmp_path)
        assert not [line for ax in drawn[-1].axes for line in ax.get_lines() if line.get_label() == "chance"]
        assert drawn[-1].get_suptitle().startswith("Training accuracy, " if n > 2 else "Training curves (")


def test_upsampling_drops_the_nyquist_bin_of_even_lengths_only():
    """An odd length has no Nyquist bin: ideal 2x interpolation keeps every sample of any signal. An even
    length's Nyquist bin has no place on the finer grid: the alternating signal (all Nyquist) upsamples to 0."""
    from equivar.alias_free import fourier_upsample

    x = jax.random.normal(jax.random.key(0), (2, 15, 1))
    up = fourier_upsample(x, 2)
    assert up.shape == (2, 30, 1)
    np.testing.assert_allclose(up[:, ::2], x, atol=1e-5)
    alternating = jnp.asarray(np.tile([1.0, -1.0], 4)[None, :, None], jnp.float32)
    np.testing.assert_allclose(fourier_upsample(alternating, 2), np.zeros((1, 16, 1)), atol=1e-6)


@pytest.mark.parametrize("packing", ["loop", "vmap"])
def test_a_seed_frozen_at_finite_parameters_has_no_heldout_points(packing):
    """A NaN in the training data makes the first step's loss NaN: the seed is frozen at its (finite) initial
    parameters, on which the clean held-out examples would give finite numbers; the curve has none (NaN) from
    that epoch on, per seed alone (loop) and under vmap."""
    from equivar.execution import plan_execution
    from equivar.models import build_model
    from equivar.train import SeedTrainer, TrainOptions, init_states, make_optimizer, seed_keys

    from support import target

    data = Synthetic(rank=1, size=8, n_classes=3, n_train=32, n_test=16, seed=2).load()
    x_train = np.array(data.x_train)
    x_train[:, 0, 0] = np.nan
    spec = TrainOptions(epochs=2, batch_size=16, optimizer="sgd", learning_rate=0.1)
    build = lambda rngs: build_model(target("mlp"), data.input_shape, data.n_classes, {"hidden": [4]}, rngs)
    tx = make_optimizer(spec)
    keys = seed_keys(0, 2)
    graphdef, states = init_states(build, tx, keys)
    trainer = SeedTrainer(graphdef, tx, plan_execution(packing))
    _, history = trainer.fit(states, jnp.asarray(x_train), jnp.asarray(data.y_train), keys, spec,
                             heldout=(data.x_test, data.y_test))
    assert history.diverged_at.tolist() == [0, 0]
    assert history.heldout_loss.shape == (2, 2) and np.isnan(history.heldout_loss).all()
    assert np.isnan(history.heldout_accuracy).all()


def test_training_figure_of_two_epochs_ticks_both(tmp_path, monkeypatch):
    from equivar import plot

    drawn = []
    monkeypatch.setattr(plot, "save", lambda fig, path: drawn.append(fig) or path)
    for n in (2, plot.FEW_TRAININGS + 1):  # shared panels, and one panel per training
        result = _curves(n)
        for record in result.models.values():
            t = record.training
            for key in ("loss", "accuracy", "heldout_loss", "heldout_accuracy"):
                setattr(t, key, [row[:2] for row in getattr(t, key)])
        plot.training_figure(result, tmp_path)
        for ax in [a for a in drawn[-1].axes if a.get_visible()]:
            assert [t for t in ax.get_xticks() if 0.5 <= t <= 2.5] == [1, 2]


def test_shift_heatmap_says_it_shows_the_mean(tmp_path, figures):
    from equivar.experiments import shift_test

    from support import fake_shift_record, fake_shift_result

    grid = [(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)]
    dataset = {"name": "synthetic2d", "rank": 2, "n_train": 64, "n_test": 32, "input_shape": [8, 8, 1],
               "n_classes": 4}
    result = fake_shift_result({"mlp": fake_shift_record("mlp", 0.5, n_seeds=2, n_shifts=9)}, n_seeds=2,
                               shifts=grid, dataset=dataset)
    shift_test.plot(result, tmp_path)
    assert "mode=roll, mean over 2 seeds" in figures["accuracy_heatmap.png"].get_suptitle().replace("\n", " ")
