"""Every experiment config composed through Hydra and run tiny into a temp dir; the CLI's error paths."""

import re

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from equivar.errors import ConfigError
from equivar.experiment import read_result
from equivar.plot import main as plot_main
from equivar.run import run_experiment

from support import EXPERIMENT_NAMES, RUN_ELSEWHERE, TINY, cli, compose_raw, mnist_dir, requires_mnist, validate_metrics


def _check_shift_test(result, out_dir, rank):
    on_disk = read_result(out_dir)
    assert on_disk.model_dump_json() == result.model_dump_json()
    assert on_disk.models.keys() == {"mlp", "lenet", "local", "cnn_aps"}
    assert on_disk.dataset.rank == rank
    n_shifts = len(on_disk.shifts)
    zero = on_disk.shifts.index([0] * rank)
    for m in on_disk.models.values():
        assert len(m.shift_accuracy.mean) == len(m.shift_accuracy.std) == n_shifts and m.n_params > 0
        # the headline numbers are the per-seed numbers' means, and the grid's unshifted point is the clean test
        # set when the grid uses every test example
        assert m.clean_accuracy.mean == pytest.approx(np.mean(m.per_seed.clean_accuracy))
        assert m.grid_mean_accuracy.mean == pytest.approx(np.mean(m.shift_accuracy.mean))
        assert m.consistency.mean == pytest.approx(np.mean(m.per_seed.consistency))
        if on_disk.n_eval_shift == on_disk.dataset.n_test:
            assert m.shift_accuracy.mean[zero] == pytest.approx(m.clean_accuracy.mean)
    # circular padding, adaptive polyphase downsampling and global pooling under roll: every prediction
    # identical under every shift
    assert on_disk.models["cnn_aps"].consistency.mean == 1.0
    # ... so is every probability (nothing moves), while crop shifts (no wrap-around) are another matter
    assert on_disk.models["cnn_aps"].probability_change.mean == 0.0
    assert all(set(m.crop_consistency) == {"zero", "reflect"} for m in on_disk.models.values())
    assert on_disk.models["mlp"].probability_change.mean > 0
    cnn = np.asarray(on_disk.models["cnn_aps"].shift_accuracy.mean)
    assert np.ptp(cnn) == 0.0
    expected = {"accuracy_vs_shift.png", "consistency.png"} | ({"accuracy_heatmap.png"} if rank == 2 else set())
    assert expected <= {p.name for p in out_dir.glob("*.png")}


SLOW_TINY = {"shift_test", "anatomy", "invariance_benchmark", "equivariance", "sample_efficiency", "antialiased_shift_test", "lie_derivative",
             "feature_pooling", "mnist1d_baselines", "padding_leak", "pooling_invariance"}  # 10-20 s each here


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_TINY else n
                                  for n in EXPERIMENT_NAMES if n not in RUN_ELSEWHERE])
def test_every_experiment_composes_and_runs_tiny(name, tmp_path):
    raw = compose_raw([f"experiment={name}", "dataset=synthetic"] + TINY)
    result = run_experiment(raw, tmp_path)
    assert result.experiment == raw["experiment_name"]
    assert read_result(tmp_path).model_dump_json() == result.model_dump_json()
    assert validate_metrics(tmp_path)["experiment"] == raw["experiment_name"]
    assert list(tmp_path.glob("*.png")), "every experiment draws its plots"


@pytest.mark.slow
def test_anatomy_on_a_given_input_shape_answers_the_lecture(tmp_path):
    # lenet and local: the lecture's numbers (every zoo model's fields are checked in test_anatomy.py)
    raw = compose_raw(["experiment=anatomy", "anatomy.input_shape=[28,28,1]", "anatomy.n_classes=10",
                       "models=[lenet,local]"])
    result = run_experiment(raw, tmp_path)
    lenet = result.models["lenet"]
    assert lenet.total_params == 281_034 and result.models["local"].total_params == 1_328_650
    for model in result.models.values():  # every zoo model, every layer
        assert model.empirical_equals_analytic and model.forward_equals_backward
    assert [r.rf_forward[0] for r in lenet.layers if r.type != "Activation"] == [5, 6, 14, 16, 16, 28, 28]
    assert "| conv2 | Conv | 8×8×32 | 12,832 (12,800 + 32) |" in (tmp_path / "summary.md").read_text()
    assert {f"erf_{m}.png" for m in ("lenet", "local")} == {p.name for p in tmp_path.glob("*.png")}


class PositionProbe(nnx.Module):
    """Predicts the class whose position (the first ``n_classes`` positions of channel 0) holds the largest
    value, so its prediction under any shift follows from the inputs alone (its one parameter gets no
    gradient: training leaves it at zero)."""

    def __init__(self, input_shape, n_classes, *, rngs: nnx.Rngs):
        self.n_classes = n_classes
        self.unused = nnx.Param(jnp.zeros(()))

    def __call__(self, x):
        return x.reshape(x.shape[0], -1, x.shape[-1])[:, :self.n_classes, 0] + 0.0 * self.unused[...]


def test_shift_test_numbers_are_their_definitions(tmp_path):
    """Accuracy per shift, grid-mean, worst-shift, clean accuracy and consistency of a model whose predictions are
    known in closed form, recomputed here with numpy from the test inputs rolled by every offset."""
    raw = compose_raw(["experiment=shift_test", "dataset=synthetic", "dataset.size=12", "n_seeds=2", "train.epochs=1",
                       "train.batch_size=64", "shift.max=3", "+zoo.probe._target_=test_experiments.PositionProbe",
                       "models=[probe]"])
    result = run_experiment(raw, tmp_path)
    from equivar.data import Synthetic

    data = Synthetic(size=12).load()
    per_shift, shares = [], np.zeros((len(data.y_test), data.n_classes))
    for (s,) in result.shifts:
        predicted = np.roll(data.x_test, int(s), axis=1)[:, :data.n_classes, 0].argmax(1)
        per_shift.append(np.mean(predicted == data.y_test))
        shares[np.arange(len(predicted)), predicted] += 1 / len(result.shifts)
    probe = result.models["probe"]
    assert [s[0] for s in result.shifts] == [-3, -2, -1, 0, 1, 2, 3]
    np.testing.assert_allclose(probe.shift_accuracy.mean, per_shift, rtol=0, atol=1e-12)
    assert probe.grid_mean_accuracy.mean == pytest.approx(np.mean(per_shift), abs=1e-12)
    assert probe.worst_shift_accuracy.mean == pytest.approx(np.min(per_shift), abs=1e-12)
    assert probe.clean_accuracy.mean == pytest.approx(per_shift[3], abs=1e-12)
    # consistency: the chance that two independent uniform draws from the grid give the same prediction
    assert probe.consistency.mean == pytest.approx(np.mean((shares ** 2).sum(1)), abs=1e-9)
    assert probe.clean_accuracy.n == 2 and probe.clean_accuracy.std == 0.0  # the seeds are the same function
    assert np.ptp(per_shift) > 0  # the probe is not invariant: the definitions are told apart


def test_conv_compare_reads_every_implementation(tmp_path):
    result = run_experiment(compose_raw(["experiment=conv_compare"]), tmp_path)
    rows = result.models
    assert rows["definition (loop)"].lecture_output == [0, 0, -4, 0, 0, 0]
    assert rows["scipy convolve1d nearest"].lecture_output == [0, 0, -4, 0, 0, 0, 0]
    assert rows["lax VALID"].lecture_output == [0, 0, 4, 0, 0, 0]
    for row in rows.values():
        assert row.random_max_abs_error < 1e-5, row
    assert {r.operation for r in rows.values()} == {"convolution", "cross-correlation"}
    assert all(t.max_abs_error < 1e-5 for t in result.toeplitz.values())
    assert (tmp_path / "conv_compare.png").is_file()


@pytest.mark.slow
def test_padding_leak_circular_is_at_chance_on_the_data(tmp_path):
    """Circular padding: each pair (patch in either corner) gets identical logits, so accuracy is exactly 0.5;
    zero padding learns the corner."""
    raw = compose_raw(["experiment=padding_leak", "dataset=synthetic", "dataset.n_train=256", "n_seeds=2",
                       "padding_leak.n_train=256", "padding_leak.n_test=128", "train.batch_size=64"])
    result = run_experiment(raw, tmp_path)
    circular, zero = result.models["CIRCULAR"], result.models["SAME"]
    assert circular.pairs_identical and max(circular.max_pair_logit_difference) == 0.0
    assert circular.per_seed_accuracy == [0.5, 0.5]
    assert zero.test_accuracy.mean > 0.9 and not zero.pairs_identical


@pytest.mark.slow
def test_equivariance_experiment_shows_the_theory(tmp_path):
    raw = compose_raw(["experiment=equivariance", "dataset=synthetic", "dataset.size=16", "n_seeds=1",
                       "models=[cnn_gap]", "zoo.cnn_gap.channels=[3,3]", "zoo.cnn_gap.dilations=[1,2]",
                       "equivariance.trained=false", "equivariance.n_examples=8", "shift.max=4"])
    result = run_experiment(raw, tmp_path)
    layers = result.models["cnn_gap/CIRCULAR"].stages["init"].shift["roll"]
    assert all(max(r.full.mean) <= 1e-5 for r in layers.values())
    same = result.models["cnn_gap/SAME"].stages["init"].shift["zero"]["conv2"]
    assert max(same.interior.mean) <= 1e-5 < max(same.full.mean)
    assert {"equivariance_init.png", "transforms.png"} <= {p.name for p in tmp_path.glob("*.png")}


@pytest.mark.slow
@pytest.mark.parametrize("rank", [1, 2])
def test_shift_test_tiny(rank, tmp_path, caplog):
    raw = compose_raw(["experiment=shift_test", "dataset=synthetic", f"dataset.rank={rank}",
                       "dataset.size=12", "shift.max=3"] + TINY)
    with caplog.at_level("INFO", logger="equivar.train"):
        result = run_experiment(raw, tmp_path)
    trained_lines = [r.getMessage() for r in caplog.records if " seed(s) x " in r.getMessage()]
    assert [line.split(":")[0] for line in trained_lines] == list(result.models)  # each model's log names it
    _check_shift_test(result, tmp_path, rank)
    assert len(result.shifts) == 7 ** rank


@pytest.mark.slow
def test_shift_test_on_default_mnist1d_composes(tmp_path):
    raw = compose_raw(["experiment=shift_test", "dataset.num_samples=300", "shift.max=5"] + TINY)
    assert raw["dataset"]["_target_"] == "equivar.data.MNIST1D" and raw["train"]["epochs"] == 2
    result = run_experiment(raw, tmp_path)
    _check_shift_test(result, tmp_path, 1)
    assert result.dataset.n_train == 240


@pytest.mark.slow
def test_plot_cli_redraws(tmp_path):
    raw = compose_raw(["experiment=shift_test", "dataset=synthetic", "dataset.rank=2", "dataset.size=10",
                       "shift.max=2", "models=[mlp]"] + TINY)
    run_experiment(raw, tmp_path)
    for png in tmp_path.glob("*.png"):
        png.unlink()
    assert plot_main([str(tmp_path)]) == 0
    assert {"accuracy_vs_shift.png", "accuracy_heatmap.png", "consistency.png"} <= {
        p.name for p in tmp_path.glob("*.png")}


@pytest.mark.parametrize("overrides,message", [
    (["models=[resnet]"], "unknown model 'resnet' in models (did you mean 'lenet'?); valid choices: alias_free, alias_free_vit, "
                          "circular_transformer, cnn_aps, cnn_gap, group_pool, lenet, local, mixer, mlp, vit"),
    (["dataset._target_=equivar.data.ImageNet"], "dataset._target_='equivar.data.ImageNet' cannot be imported: "
                                                 "equivar.data has no attribute 'ImageNet'"),
    (["zoo.lenet.padding=REFLECT", "models=[lenet]"], "unknown padding 'REFLECT'"),
    (["shift.mode=reflect"], "shift.mode='reflect' is not one of roll, zero, fourier, bilinear-zero, bilinear-reflect, "
                             "bilinear-circular (did you mean 'bilinear-reflect'?)"),
    (["train.optimizer=adamax"], "train.optimizer='adamax' is not one of adam, adamw, sgd, rmsprop, lion (did "
                                 "you mean 'adam'?)"),
    (["n_seeds=0"], "n_seeds must be >= 1"),
    (["shift.max=99"], "shift.max=99 must be smaller than the input's spatial size (24,)"),
])
def test_config_errors(overrides, message, tmp_path):
    raw = compose_raw(["experiment=shift_test", "dataset=synthetic"] + overrides)
    with pytest.raises(ConfigError, match=re.escape(message)):
        run_experiment(raw, tmp_path)


@pytest.mark.slow
def test_cli_unknown_model_is_one_clear_line(tmp_path):
    proc = cli(["experiment=shift_test", "dataset=synthetic", "models=[resnet]"], tmp_path)
    assert proc.returncode == 2
    assert ("equivar: error: unknown model 'resnet' in models (did you mean 'lenet'?); valid choices: alias_free, "
            "alias_free_vit, circular_transformer, cnn_aps, cnn_gap, group_pool, lenet, local, mixer, mlp, vit") in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_cli_missing_data_fails_before_training(tmp_path):
    empty = tmp_path / "no_data"
    empty.mkdir()
    proc = cli(["experiment=shift_test", "dataset=mnist"], tmp_path, {"TFDS_DATA_DIR": str(empty)})
    assert proc.returncode == 2
    assert "is not prepared" in proc.stderr and "TFDS_DATA_DIR" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


@pytest.mark.slow
def test_cli_unknown_dataset_lists_choices(tmp_path):
    proc = cli(["experiment=shift_test", "dataset=imagenet"], tmp_path)
    assert proc.returncode != 0
    assert "mnist1d" in proc.stderr and "synthetic" in proc.stderr


@pytest.mark.slow
def test_cli_runs_tiny(tmp_path):
    proc = cli(["experiment=shift_test", "dataset=synthetic", "shift.max=2"] + TINY, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert (tmp_path / "run" / ".hydra" / "config.yaml").is_file()
    assert "| cnn_aps |" in proc.stdout


@pytest.mark.slow
@requires_mnist
def test_shift_test_on_real_mnist_subset(tmp_path):
    raw = compose_raw(["experiment=shift_test", "dataset=mnist", f"dataset.data_dir={mnist_dir()}",
                       "dataset.n_train=512", "dataset.n_test=200", "shift.max=2", "train.epochs=1"] + TINY)
    result = run_experiment(raw, tmp_path)
    _check_shift_test(result, tmp_path, 2)
    assert result.dataset.name == "mnist" and result.dataset.n_train == 512
