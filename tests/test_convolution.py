"""Convolution from its definition against the libraries, and as a fully connected (Toeplitz) layer."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndimage
from flax import nnx

from equivar.convolution import (
    classify,
    conv1d_loop,
    conv1d_vectorised,
    conv_matrix,
    correlate_definition,
    valid_correlate,
)

LECTURE_X = np.array([2.0] * 3 + [6.0] * 4)
LECTURE_W = np.array([-1.0, 1.0])


def test_the_lectures_example():
    np.testing.assert_array_equal(conv1d_loop(LECTURE_X, LECTURE_W), [0, 0, -4, 0, 0, 0])
    np.testing.assert_array_equal(ndimage.convolve1d(LECTURE_X, LECTURE_W, mode="nearest"), [0, 0, -4, 0, 0, 0, 0])
    lax_out = jax.lax.conv_general_dilated(jnp.asarray(LECTURE_X)[None, None], jnp.asarray(LECTURE_W)[None, None],
                                           (1,), "VALID")
    np.testing.assert_array_equal(np.asarray(lax_out).ravel(), [0, 0, 4, 0, 0, 0])  # cross-correlation


@pytest.mark.parametrize("seed", range(3))
def test_definition_loop_vectorised_and_numpy_agree_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    x, w = rng.normal(size=int(rng.integers(5, 30))), rng.normal(size=int(rng.integers(1, 5)))
    expected = np.convolve(x, w, mode="valid")
    np.testing.assert_allclose(conv1d_loop(x, w), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(conv1d_vectorised(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32)),
                               expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(valid_correlate(x, w), np.correlate(x, w, mode="valid"), atol=1e-12)


def test_classify_reads_operation_alignment_and_border():
    assert classify(conv1d_loop) == {"output_length": 14, "operation": "convolution", "valid_offset": 0,
                                     "border": "none (valid part only)"}
    wrap = classify(lambda x, w: ndimage.correlate1d(x, w, mode="wrap"))
    assert wrap["operation"] == "cross-correlation" and wrap["border"] == "wrap (circular)"
    assert classify(lambda x, w: ndimage.convolve1d(x, w, mode="nearest"))["border"] == "nearest (edge)"
    assert classify(lambda x, w: np.convolve(x, w, mode="full"))["border"] == "zeros"
    assert classify(lambda x, w: np.sort(x)[: len(x) - len(w) + 1])["operation"] == "other"  # a control


@pytest.mark.parametrize("spatial,kernel", [((13,), (3,)), ((9, 8), (2, 3))])
def test_multichannel_definition_with_bias_equals_lax(spatial, kernel):
    rng = np.random.default_rng(0)
    p = rng.normal(size=(*spatial, 3)).astype(np.float32)
    w = rng.normal(size=(*kernel, 3, 4)).astype(np.float32)
    b = rng.normal(size=4).astype(np.float32)
    rank = len(spatial)
    dims = ("NWC", "WIO", "NWC") if rank == 1 else ("NHWC", "HWIO", "NHWC")
    lax_out = jax.lax.conv_general_dilated(p[None], w, (1,) * rank, "VALID", dimension_numbers=dims)[0] + b
    np.testing.assert_allclose(correlate_definition(p, w, b), lax_out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", ["VALID", "SAME", "CIRCULAR"])
@pytest.mark.parametrize("spatial,kernel,stride,dilation", [
    ((11,), (3,), (1,), (1,)), ((12,), (4,), (2,), (2,)), ((7, 9), (3, 2), (1, 2), (2, 1)), ((6, 6), (3, 3), (1, 1), (1, 1))])
def test_conv_layer_is_a_matrix_with_zeros_outside_the_kernel(padding, spatial, kernel, stride, dilation):
    """nnx.Conv equals (Toeplitz/circulant matrix) @ flattened input to float32 precision (<= 1e-5)."""
    conv = nnx.Conv(2, 3, kernel, strides=stride, kernel_dilation=dilation, padding=padding, use_bias=False,
                    rngs=nnx.Rngs(0))
    x = np.random.default_rng(1).normal(size=(*spatial, 2)).astype(np.float32)
    layer = np.asarray(conv(jnp.asarray(x)[None])[0])
    m = conv_matrix(np.asarray(conv.kernel[...]), spatial, padding, stride, dilation)
    np.testing.assert_allclose((m @ x.ravel()).reshape(layer.shape), layer, rtol=1e-5, atol=1e-5)
    # Each output row holds at most prod(kernel) * in_channels weights; the rest are structurally zero.
    assert (np.count_nonzero(m, axis=1) <= np.prod(kernel) * 2).all()
    assert np.count_nonzero(m) < m.size / 2
