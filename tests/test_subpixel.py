"""Sub-pixel translations: the Fourier (band-limited, circular) and bilinear shifts, float32, stated tolerances."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from equivar.errors import ConfigError
from equivar.transforms import shift, shift_grid

X1 = jax.random.normal(jax.random.key(0), (4, 40, 2))      # even length: has a Nyquist bin
X2 = jax.random.normal(jax.random.key(1), (3, 12, 9, 1))   # even and odd axes


@pytest.mark.parametrize("x,offset", [(X1, (3,)), (X1, (-17,)), (X2, (2, -4)), (X2, (-5, 8))])
def test_fourier_and_bilinear_at_integer_offsets_are_the_integer_shifts(x, offset):
    roll = shift(x, offset, "roll")
    np.testing.assert_allclose(shift(x, jnp.asarray(offset, jnp.float32), "fourier"), roll, atol=1e-5)
    np.testing.assert_array_equal(shift(x, jnp.asarray(offset, jnp.float32), "bilinear-circular"), roll)
    np.testing.assert_array_equal(shift(x, jnp.asarray(offset, jnp.float32), "bilinear-zero"),
                                  shift(x, offset, "zero"))


def _without_nyquist(x):
    spectrum = jnp.fft.rfft(x, axis=1)
    return jnp.fft.irfft(spectrum.at[:, -1].set(0), n=x.shape[1], axis=1)


def test_fourier_shifts_compose_on_signals_without_nyquist_energy():
    x = _without_nyquist(X1)
    two_steps = shift(shift(x, (0.3,), "fourier"), (0.45,), "fourier")
    np.testing.assert_allclose(two_steps, shift(x, (0.75,), "fourier"), atol=1e-5)
    np.testing.assert_allclose(shift(shift(x, (0.3,), "fourier"), (-0.3,), "fourier"), x, atol=1e-5)
    # With Nyquist energy the documented convention (a real Nyquist phase) gives up exact composition.
    gap = jnp.abs(shift(shift(X1, (0.3,), "fourier"), (0.45,), "fourier") - shift(X1, (0.75,), "fourier")).max()
    assert gap > 1e-3


def test_fourier_shift_moves_a_band_limited_signal_exactly():
    n, t = 32, 0.37
    grid = jnp.arange(n)
    wave = lambda s: jnp.cos(2 * jnp.pi * 3 * (grid - s) / n) + 0.5 * jnp.sin(2 * jnp.pi * 5 * (grid - s) / n)
    moved = shift(wave(0.0)[None, :, None], (t,), "fourier")[0, :, 0]
    np.testing.assert_allclose(moved, wave(t), atol=1e-5)


def test_bilinear_interpolates_and_handles_each_border():
    x = jnp.arange(6.0).reshape(1, 6, 1)
    np.testing.assert_allclose(shift(x, (0.5,), "bilinear-zero")[0, :, 0], [0, 0.5, 1.5, 2.5, 3.5, 4.5])
    np.testing.assert_allclose(shift(x, (0.5,), "bilinear-circular")[0, :, 0], [2.5, 0.5, 1.5, 2.5, 3.5, 4.5])
    np.testing.assert_allclose(shift(x, (2.0,), "bilinear-reflect")[0, :, 0], [2, 1, 0, 1, 2, 3])
    np.testing.assert_allclose(shift(x, (-2.0,), "bilinear-reflect")[0, :, 0], [2, 3, 4, 5, 4, 3])
    # Linear in the offset between grid points, and differentiable in it.
    d = jax.grad(lambda t: shift(x, t[None], "bilinear-zero")[0, 3, 0])(jnp.float32(0.25))
    np.testing.assert_allclose(d, -1.0)


def test_fractional_grids():
    np.testing.assert_allclose(shift_grid(1, 1, 0.25).ravel(), np.arange(-4, 5) / 4)
    assert shift_grid(2, 2).dtype == np.int32 and shift_grid(0.5, 2, 0.5).shape == (9, 2)
    with pytest.raises(ValueError, match="whole number of steps"):
        shift_grid(1, 1, 0.3)


@pytest.mark.slow
def test_shift_test_on_a_subpixel_grid(tmp_path):
    from equivar.run import run_experiment

    from support import compose_raw
    raw = compose_raw(["experiment=shift_test", "dataset=synthetic", "shift.mode=fourier", "shift.step=0.5",
                       "shift.max=1", "models=[cnn_gap]", "n_seeds=1", "train.epochs=1",
                       "zoo.cnn_gap.channels=[4,8]", "zoo.cnn_gap.dilations=[1,2]"])
    result = run_experiment(raw, tmp_path)
    assert result.shifts == [[-1.0], [-0.5], [0.0], [0.5], [1.0]]
    acc = result.models["cnn_gap"].shift_accuracy.mean
    assert acc[0] == acc[2] == acc[4]  # integer shifts: exactly invariant (circular, stride 1, global pool)


@pytest.mark.parametrize("overrides,words", [
    (["shift.step=0.5"], "shift.mode=roll shifts by whole positions"),
    (["shift.mode=fourier", "shift.step=0"], "shift.step must be > 0"),
    (["shift.mode=fourier", "shift.step=0.3", "shift.max=1"], "shift.max=1 is not a whole number of shift.step=0.3"),
    (["shift.mode=bilinear-mirror"], "shift.mode='bilinear-mirror' is not one of roll, zero, fourier"),
])
def test_bad_shift_grids_are_one_line(overrides, words, tmp_path):
    from equivar.run import run_experiment

    from support import compose_raw
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(".", r"\.")):
        run_experiment(compose_raw(["experiment=shift_test", "dataset=synthetic"] + overrides), tmp_path)


def test_layer_errors_under_fractional_fourier_shifts():
    """A circular convolution commutes with half-pixel Fourier shifts (its map moves by exactly s); the ReLU
    after it does not (it creates frequencies that alias)."""
    from flax import nnx

    from equivar.equivariance import layer_shift_errors
    from equivar.models import build_model
    layers = [{"type": "conv", "features": 4, "kernel": 3, "padding": "CIRCULAR"}, {"type": "activation", "fn": "relu"}]
    model = build_model("equivar.models.Stack", (24, 2), 3, {"layers": layers}, nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (4, 24, 2))
    errors = layer_shift_errors(model, x, 1, "fourier", step=0.5)
    assert errors["conv1"]["shift"] == [0.0, 0.5, 1.0]
    assert max(errors["conv1"]["full"]) < 1e-5 and errors["activation2"]["full"][1] > 1e-2
    assert errors["conv1"]["divisible"] == [True, False, True]


def test_fractional_steps_need_a_subpixel_mode(tmp_path):
    from equivar.run import run_experiment

    from support import compose_raw
    for overrides, words in ((["experiment=equivariance", "shift.step=0.5", "models=[lenet]"],
                              "shift.mode=roll shifts by whole positions, but shift.step=0.5"),
                             (["experiment=pooling_invariance", "shift.step=0.25"],
                              "shift.mode=roll shifts by whole positions, but shift.step=0.25")):
        with pytest.raises(ConfigError, match=words):
            run_experiment(compose_raw(overrides + ["dataset=synthetic"]), tmp_path / overrides[0])
