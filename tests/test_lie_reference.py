"""Every number lie_derivative reports, against a reference that shares none of the code under test.

- the per-layer contributions: each layer's own Lie derivative and its push to the output by central finite
  differences of a chain written here, with each map moved by Fourier shifts of ``t / J`` (``J`` its cumulative
  stride, written by hand from the architecture): stride 1 and 2, 1D and non-square 2D;
- the LEE of the logits and of the softmax, ``mse`` and ``mean_abs``, on a linear model and a pure sinusoid,
  computed in float64 NumPy from the sinusoid's closed-form derivative and the softmax Jacobian;
- rotation and scaling tangents against rotating and rescaling an analytic, off-centre, anisotropic blob on a
  non-square grid (per radian, per unit of log-scale);
- the saw-tooth: the predicted class's probability at Fourier shifts, in pixels, against the closed form.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from equivar.experiments.lie_derivative import measure_seed, sawtooth
from equivar.introspect import to_inference
from equivar.lie import input_tangent
from equivar.models import build_model
from equivar.transforms import fourier_shift

# conv (stride 1) -> tanh -> mean pool 2 (stride 2) -> conv -> tanh -> global mean -> logits; cumulative strides
# written by hand: the reference does not ask equivar for them.
LAYERS = [{"type": "conv", "features": 3, "kernel": 3, "padding": "CIRCULAR"}, {"type": "activation", "fn": "tanh"},
          {"type": "pool", "kind": "mean", "window": 2}, {"type": "conv", "features": 4, "kernel": 3,
                                                           "padding": "CIRCULAR"},
          {"type": "activation", "fn": "tanh"}, {"type": "global_pool", "kind": "mean"}]
JUMPS = {"conv1": 1, "activation2": 1, "pool3": 2, "conv4": 2, "activation5": 2, "global_pool6": None, "logits": None}


def _model(shape):
    return to_inference(build_model("equivar.models.Stack", shape, 5, {"layers": LAYERS}, nnx.Rngs(7)))


def _moved(h, t, jump, axis, rank):
    """A map moved by an input translation of ``t`` pixels: a Fourier shift by ``t / J`` (collapsed maps: not
    at all)."""
    if jump is None:
        return h
    offset = np.zeros(rank, np.float64)
    offset[axis] = t / jump
    return fourier_shift(h, jnp.asarray(offset, jnp.float32))


def _reference_contributions(model, x, axis, eps=1e-2):
    """Per layer: mean over inputs of the squared norm of its contribution, by central differences."""
    rank = x.ndim - 2
    layers = [(name, getattr(model, name)) for name in model.layer_names]
    inputs, h = [], x
    for _, layer in layers:
        inputs.append(h)
        h = layer(h)
    out = {}
    for i, (name, layer) in enumerate(layers):
        before = JUMPS[layers[i - 1][0]] if i else 1

        def own(t, i=i, layer=layer, before=before, name=name):
            return layer(_moved(inputs[i], t, before, axis, rank)) - _moved(layer(inputs[i]), t, JUMPS[name], axis,
                                                                            rank)

        d_own = (own(eps) - own(-eps)) / (2 * eps)  # this layer's own Lie derivative

        def rest(v, i=i):
            for _, later in layers[i + 1:]:
                v = later(v)
            return v

        h_i = layer(inputs[i])
        scale = 1e-2 / max(float(jnp.abs(d_own).max()), 1e-12)  # a small step along the derivative
        pushed = (rest(h_i + scale * d_own) - rest(h_i - scale * d_own)) / (2 * scale)
        out[name] = float(jnp.mean(jnp.sum(jnp.square(pushed), axis=-1)))
    return out


@pytest.mark.parametrize("shape", [(24, 2), pytest.param((12, 8, 1), marks=pytest.mark.slow)], ids=["1d", "2d"])
def test_per_layer_contributions_match_finite_differences_of_a_chain_written_here(shape):
    model = _model(shape)
    x = jax.random.normal(jax.random.key(0), (4, *shape))
    gens = ("translate_x",) if len(shape) == 2 else ("translate_y", "translate_x")
    measured = measure_seed(model, x, gens, per_layer=True, batch=64, input_shape=shape)["layers"]
    for g in gens:  # rows are named with their layer's type: conv1 (Conv)
        measured[g]["logits"] = {k.split(" (")[0]: v for k, v in measured[g]["logits"].items()}
    total_scale = max(measured[g]["logits"][n] for g in gens for n in JUMPS)
    for gen in gens:
        axis = len(shape) - 2 if gen == "translate_x" else 0
        reference = _reference_contributions(model, x, axis)
        assert list(measured[gen]["logits"]) == list(JUMPS)
        for name, want in reference.items():
            got = measured[gen]["logits"][name]
            assert got == pytest.approx(want, rel=0.05, abs=1e-4 * total_scale), (gen, name, got, want)
        # the strided mean pool aliases: it is not equivariant to sub-pixel shifts, and its share is pinned above
        assert reference["pool3"] > 1e-3 * total_scale


def _sinusoid(n=16, k=3, batch=3):
    p = np.arange(n)
    phases = np.arange(batch)[:, None] * 0.7
    x = np.sin(2 * np.pi * k * p[None, :] / n + phases)[..., None]
    dx = (2 * np.pi * k / n) * np.cos(2 * np.pi * k * p[None, :] / n + phases)[..., None]
    return x, dx


def _linear_model(n, classes, seed=3):
    return to_inference(build_model("equivar.models.PaperLinear", (n, 1), classes, {}, nnx.Rngs(seed)))


def test_logit_and_softmax_lee_match_the_closed_form_on_a_sinusoid():
    """LEE (Gruver et al. 2023): mse = mean over inputs of ||L f(x)||^2, mean_abs = mean |L f(x)|, for the
    logits and for the softmax; L f(x) = W (A x) with A x = -dx/dp for a linear model."""
    n, classes = 16, 5
    x, dx = _sinusoid(n)
    model = _linear_model(n, classes)
    w = np.asarray(model.logits.kernel[...], np.float64)
    b = np.asarray(model.logits.bias[...], np.float64)
    z = x.reshape(len(x), -1) @ w + b
    d_logits = (-dx).reshape(len(x), -1) @ w  # translation by +t moves content right: d/dt x(p - t) = -x'(p)
    s = np.exp(z - z.max(1, keepdims=True))
    s /= s.sum(1, keepdims=True)
    d_probs = s * d_logits - s * (s * d_logits).sum(1, keepdims=True)  # the softmax Jacobian applied
    lee = measure_seed(model, jnp.asarray(x, jnp.float32), ("translate_x",), per_layer=False, batch=64,
                       input_shape=(n, 1))["lee"]["translate_x"]
    for name, d in (("logits", d_logits), ("probs", d_probs)):
        assert lee[name]["mse"] == pytest.approx(float(np.mean(np.sum(d ** 2, axis=1))), rel=1e-4)
        assert lee[name]["mean_abs"] == pytest.approx(float(np.mean(np.abs(d))), rel=1e-4)
    assert lee["probs"]["mse"] < lee["logits"]["mse"] / 4  # the two are different numbers: never swapped unseen


def _blob(h, w, centre, sigma):
    """An analytic anisotropic Gaussian and its grid (rows down, columns right)."""
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    return lambda r, c: np.exp(-((r - centre[0]) ** 2 / (2 * sigma[0] ** 2) + (c - centre[1]) ** 2
                                 / (2 * sigma[1] ** 2))), rows, cols


@pytest.mark.parametrize("generator", ["rotate", "scale", "translate_y", "translate_x"])
def test_rotation_scaling_and_translation_tangents_match_the_transformed_image(generator):
    """On a 20x28 grid (rows x columns) a smooth blob off the centre, elongated along the rows: the tangent is
    d/dt of the image transformed by t (radians counter-clockwise on screen; log-scale; pixels), by central
    differences of the analytic image. An h/w mix-up, a sign or a unit error shows."""
    h, w = 20, 28
    g, rows, cols = _blob(h, w, centre=(9.0, 15.5), sigma=(1.9, 1.4))
    cy, cx = (h - 1) / 2, (w - 1) / 2

    def transformed(t):
        y_up, x_right = -(rows - cy), cols - cx  # screen coordinates, y up
        if generator == "rotate":  # content turns by +t: sample the source at the point turned by -t
            xs = np.cos(t) * x_right + np.sin(t) * y_up
            ys = -np.sin(t) * x_right + np.cos(t) * y_up
        elif generator == "scale":  # content magnified by e^t about the centre
            xs, ys = np.exp(-t) * x_right, np.exp(-t) * y_up
        elif generator == "translate_y":  # content moves down by t rows
            xs, ys = x_right, y_up + t
        else:  # content moves right by t columns
            xs, ys = x_right - t, y_up
        return g(cy - ys, cx + xs)

    eps = 1e-4
    reference = (transformed(eps) - transformed(-eps)) / (2 * eps)
    tangent = np.asarray(input_tangent(jnp.asarray(g(rows, cols)[None, ..., None], jnp.float32), generator))[0, ..., 0]
    assert np.abs(reference).max() > 0.05  # the blob moves under every one of them
    np.testing.assert_allclose(tangent, reference, atol=2e-3 * np.abs(reference).max())


def test_the_sawtooth_is_in_pixels_against_the_closed_form():
    """The clean predicted class's probability under Fourier shifts of 0, 0.5 and 1.5 pixels, for a linear
    model on sinusoids (a shift by t turns sin(2 pi k p / n) into sin(2 pi k (p - t) / n))."""
    n, classes, k = 16, 4, 3
    x, _ = _sinusoid(n, k, batch=2)
    model = _linear_model(n, classes, seed=5)
    shifts = np.array([0.0, 0.5, 1.5])
    got = sawtooth(model, jnp.asarray(x, jnp.float32), shifts, axis=0)
    w = np.asarray(model.logits.kernel[...], np.float64)
    b = np.asarray(model.logits.bias[...], np.float64)
    p = np.arange(n)
    phases = np.arange(2)[:, None] * 0.7
    clean = (x.reshape(2, -1) @ w + b).argmax(1)
    assert got.predicted_class == clean.tolist() and got.shifts == shifts.tolist()
    for j, t in enumerate(shifts):
        moved = np.sin(2 * np.pi * k * (p[None, :] - t) / n + phases)
        z = moved @ w + b
        s = np.exp(z - z.max(1, keepdims=True))
        s /= s.sum(1, keepdims=True)
        want = s[np.arange(2), clean]
        np.testing.assert_allclose([row[j] for row in got.probability], want, rtol=1e-4)
