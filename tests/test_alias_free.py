"""The alias-free convnet commutes with sub-pixel (Fourier) shifts to float precision, layer by layer and as a
whole, untrained and trained, in 1D and 2D; its twins built from aliasing parts (ReLU and plain subsampling; the
polynomial on the samples themselves) do not.

Tolerance: 1e-5 relative to the largest output. The layers chain a few dozen float32 FFTs, products and sums,
each rounding at 1.2e-7 relative; the measured errors are 4e-7 to 7e-7. An aliasing layer errs at 1e-2 to 3e-1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from equivar import alias_free as af
from equivar.errors import ConfigError
from equivar.models import build_model, check_model
from equivar.testing import assert_shift_equivariant, assert_shift_invariant, shift_errors
from equivar.transforms import fourier_shift

from support import compose_raw, target, validate_metrics

TOL = 1e-5
SHAPES = [(40, 1), (16, 12, 1)]
SHIFTS = [0.5, 0.25, 1.5, 3.0]


def _relative(a: jax.Array, b: jax.Array) -> float:
    return float(jnp.abs(a - b).max() / jnp.abs(b).max())


def _shift(x, s):
    return fourier_shift(x, (s,) * (x.ndim - 2))


def _band_limited(shape, channels=3, n=4, seed=0):
    return af.band_limit(jax.random.normal(jax.random.key(seed), (n, *shape[:-1], channels)))


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES)
def test_each_alias_free_layer_commutes_with_fractional_shifts(shape):
    x = _band_limited(shape)
    rank = len(shape) - 1
    conv = nnx.Conv(3, 5, (5,) * rank, padding="CIRCULAR", rngs=nnx.Rngs(0))
    for layer in (af.BandLimit(), conv, af.RMSNorm(3), af.PolyActivation(3), af.FourierDownsample(2)):
        # every shift a Fourier shift; the downsampling layer's output moves by half of it
        assert_shift_equivariant(layer, x, shifts=[(s,) * rank for s in SHIFTS], mode="fourier", rtol=TOL)


def test_the_nyquist_bin_is_why_the_input_is_band_limited_first():
    """A raw even-length signal is not moved by a real half-sample shift the way its samples suggest: its
    Nyquist component cannot move. Band-limited first, a half shift twice is a one-sample roll exactly."""
    x = jax.random.normal(jax.random.key(0), (2, 16, 1))
    twice = _shift(_shift(x, 0.5), 0.5)
    assert _relative(twice, jnp.roll(x, 1, axis=1)) > 1e-2
    xb = af.band_limit(x)
    assert _relative(_shift(_shift(xb, 0.5), 0.5), jnp.roll(xb, 1, axis=1)) < TOL


def test_ideal_resampling_is_exact_on_band_limited_signals():
    x = _band_limited((40, 1))
    up = af.fourier_upsample(x, 2)
    np.testing.assert_allclose(up[:, ::2], x, atol=1e-5)  # interpolation keeps the samples
    np.testing.assert_allclose(af.fourier_downsample(up, 2), x, atol=1e-5)


@pytest.mark.parametrize("shape", [SHAPES[0], pytest.param(SHAPES[1], marks=pytest.mark.slow)])
def test_the_whole_model_is_invariant_to_fractional_shifts_and_its_aliasing_twins_are_not(shape):
    x = jax.random.normal(jax.random.key(1), (8, *shape))
    built = {name: build_model(target("alias_free"), shape, 10, options, nnx.Rngs(0))
             for name, options in {"alias_free": {}, "relu": {"activation": "relu", "downsample_mode": "subsample"},
                                   "poly_on_samples": {"activation": "poly_direct"}}.items()}
    shifts = [(s,) * (len(shape) - 1) for s in SHIFTS]
    assert_shift_invariant(built.pop("alias_free"), x, shifts, mode="fourier", rtol=TOL)
    for name, model in built.items():  # the counter-test: the same net from aliasing parts moves by percents
        assert max(shift_errors(model, x, shifts, invariant=True, mode="fourier").values()) > 1e-2, name


@pytest.mark.slow  # trains a few hundred steps
def test_trained_alias_free_model_stays_invariant(tmp_path):
    """After training (the weights far from their initialisation), the predictions and the logits still do not
    move under half- and quarter-sample shifts of test inputs."""
    import equivar
    from equivar.run import run_experiment

    raw = compose_raw(["experiment=shift_test", "dataset=synthetic", "n_seeds=1", "train.epochs=8",
                       "train.learning_rate=3e-3", "shift.max=2", "models=[alias_free]",
                       "zoo.alias_free.channels=[8,16]", "zoo.alias_free.downsample=[true,false]"])
    result = run_experiment(raw, tmp_path)
    assert result.models["alias_free"].clean_accuracy.mean > 0.5
    model = equivar.load_models(tmp_path)["alias_free"].modules()[0]
    data = equivar.load_data("synthetic")
    x = jnp.asarray(data.x_test[:64])
    assert_shift_invariant(model, x, [0.5, 0.25], rtol=TOL)  # the logits, hence the predictions


@pytest.mark.slow
def test_odd_sizes_cannot_be_downsampled_alias_free():
    with pytest.raises(ConfigError, match="alias-free downsampling needs even sizes"):
        check_model(target("alias_free"), (42, 1), 10, {}, "zoo.alias_free")  # 42 -> 21 cannot halve again


@pytest.mark.slow  # trains two small models, about 20 s
def test_shift_test_on_half_sample_shifts_ranks_the_alias_free_model_exactly_consistent(tmp_path):
    """On a half-sample Fourier grid the alias-free model is exactly consistent (1.0, correct and wrong inputs
    alike, R(r) flat in r) and the MLP is not; R(0) is the accuracy of the unshifted grid inputs."""
    from equivar.run import run_experiment

    raw = compose_raw(["experiment=shift_test", "dataset=synthetic", "n_seeds=2", "train.epochs=2",
                       "shift.mode=fourier", "shift.step=0.5", "shift.max=2", "models=[mlp,alias_free]",
                       "zoo.mlp.hidden=[16]", "zoo.alias_free.channels=[8,8]",
                       "zoo.alias_free.downsample=[true,false]"])
    result = run_experiment(raw, tmp_path)
    assert result.robustness_radii == [0.0, 0.5, 1.0, 1.5, 2.0]
    free, mlp = result.models["alias_free"], result.models["mlp"]
    assert free.consistency.mean == 1.0 and free.consistency_correct.mean == 1.0
    assert free.consistency_wrong is None or free.consistency_wrong.mean == 1.0
    assert len(set(free.robustness.mean)) == 1  # the same inputs are right at every radius
    assert mlp.consistency.mean < 1.0
    assert all(a >= b for a, b in zip(mlp.robustness.mean, mlp.robustness.mean[1:]))  # R can only fall with r
    zero = result.shifts.index([0.0])
    assert mlp.robustness.mean[0] == pytest.approx(mlp.shift_accuracy.mean[zero])
    assert (tmp_path / "robustness.png").exists()
    assert "| alias_free | 1.0000 ± 0.0000 |" in (tmp_path / "summary.md").read_text()


@pytest.mark.slow  # nine small trainings, about a minute
def test_the_benchmark_ranks_only_the_alias_free_net_exactly_invariant_between_samples(tmp_path):
    """invariance_benchmark on tiny data: the alias-free net is consistent on the integer and every fractional
    grid (1.0) with a softmax LEE at float noise; the global-pooling nets are exactly consistent on integers
    only; augmentation variants are trained and named."""
    from equivar.run import run_experiment

    raw = compose_raw(["experiment=invariance_benchmark", "dataset=synthetic", "n_seeds=1", "train.epochs=2",
                       "shift.max=2", "invariance_benchmark.fractional_max=1", "invariance_benchmark.n_examples=16",
                       "zoo.alias_free.channels=[8,8]", "zoo.alias_free.downsample=[true,false]",
                       "models=[lenet,cnn_gap,alias_free]", "zoo.lenet.channels=[4,8]", "zoo.lenet.hidden=[16]"])
    result = run_experiment(raw, tmp_path)
    assert list(result.models) == ["lenet", "lenet_aug_roll", "lenet_aug_fourier", "cnn_gap", "alias_free"]
    free, gap = result.models["alias_free"], result.models["cnn_gap"]
    assert free.integer_consistency.mean == 1.0
    assert all(v.mean == 1.0 for v in free.fractional_consistency.values())
    assert free.lee.mean < 1e-10
    assert gap.integer_consistency.mean == 1.0 and gap.lee.mean > 1e-6
    # the predicted class's probability: still under every roll for both, between samples only for alias_free
    assert free.probability_change["integer"].mean < 1e-6 and gap.probability_change["integer"].mean < 1e-6
    assert max(free.probability_change[m].mean for m in ("2", "4")) < 1e-5
    assert min(gap.probability_change[m].mean for m in ("2", "4")) > 1e-4
    assert set(free.crop_consistency) == {"zero", "reflect"}
    assert result.models["lenet_aug_fourier"].augmentation == "fourier"
    assert (tmp_path / "invariance_benchmark.png").exists()
    assert validate_metrics(tmp_path)["experiment"] == "invariance_benchmark"
