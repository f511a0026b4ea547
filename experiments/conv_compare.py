"""conv_compare: the lecture's problems 2 and 3, computed. Which implementations convolve, which correlate?

1. 1D: the definition (one loop), a vectorised JAX version, ``jnp.convolve``, ``lax.conv_general_dilated``,
   ``scipy.ndimage.convolve1d``/``correlate1d`` and ``torch.nn.functional.conv1d`` (when torch is installed)
   on the lecture's example, each classified from its outputs on random inputs: convolution or
   cross-correlation, output length, alignment and border mode; then checked against that reading on more
   random inputs (max abs error).
2. Multi-channel with bias, 1D and 2D: ``q = sum_f w^(g,f) * p^(f) + b_g`` from the scalar formula against
   ``lax`` (and torch).
3. Convolution as a fully connected layer: the layer's matrix (Toeplitz for zero padding, circulant for
   circular) times the flattened input equals the convolution; most of its weights are structurally zero.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage as ndimage
from flax import nnx

from equivar.options import check, option
from equivar.config import RunConfig
from equivar.convolution import (
    BORDER_MODES,
    classify,
    conv1d_loop,
    conv1d_vectorised,
    conv_matrix,
    correlate_definition,
    valid_correlate,
)
from equivar.errors import ConfigError
from equivar.io import environment, write_json
from equivar.plot import plot_conv_compare

log = logging.getLogger(__name__)

Impl = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _lax_1d(padding: str) -> Impl:
    def f(x, w):
        out = jax.lax.conv_general_dilated(jnp.asarray(x, jnp.float32)[None, None],
                                           jnp.asarray(w, jnp.float32)[None, None], (1,), padding)
        return np.asarray(out[0, 0])
    return f


def implementations() -> tuple[dict[str, tuple[str, Impl]], list[str]]:
    """Name -> (the call as a user writes it, function of (x, w)); plus notes on what was skipped."""
    impls: dict[str, tuple[str, Impl]] = {
        "definition (loop)": ("equivar.convolution.conv1d_loop(x, w)", conv1d_loop),
        "vectorised (jax)": ("equivar.convolution.conv1d_vectorised(x, w)",
                             lambda x, w: np.asarray(conv1d_vectorised(jnp.asarray(x, jnp.float32),
                                                                       jnp.asarray(w, jnp.float32)))),
        "jnp.convolve full": ("jnp.convolve(x, w, mode='full')", lambda x, w: jnp.convolve(x, w, mode="full")),
        "jnp.convolve same": ("jnp.convolve(x, w, mode='same')", lambda x, w: jnp.convolve(x, w, mode="same")),
        "jnp.convolve valid": ("jnp.convolve(x, w, mode='valid')",
                               lambda x, w: jnp.convolve(x, w, mode="valid")),
        "lax VALID": ("lax.conv_general_dilated(x, w, (1,), 'VALID')", _lax_1d("VALID")),
        "lax SAME": ("lax.conv_general_dilated(x, w, (1,), 'SAME')", _lax_1d("SAME")),
        "scipy convolve1d nearest": ("scipy.ndimage.convolve1d(x, w, mode='nearest')",
                                     lambda x, w: ndimage.convolve1d(x, w, mode="nearest")),
        "scipy convolve1d (default)": ("scipy.ndimage.convolve1d(x, w)", lambda x, w: ndimage.convolve1d(x, w)),
        "scipy correlate1d nearest": ("scipy.ndimage.correlate1d(x, w, mode='nearest')",
                                      lambda x, w: ndimage.correlate1d(x, w, mode="nearest")),
        "scipy correlate1d wrap": ("scipy.ndimage.correlate1d(x, w, mode='wrap')",
                                   lambda x, w: ndimage.correlate1d(x, w, mode="wrap")),
        "toeplitz matrix": ("conv_matrix(w, [n]) @ x", lambda x, w: conv_matrix(
            np.asarray(w, np.float64)[:, None, None], [len(x)]) @ np.asarray(x, np.float64)),
    }
    notes = []
    try:
        import torch
        import torch.nn.functional as F

        def torch_1d(padding):
            def f(x, w):
                out = F.conv1d(torch.tensor(x).reshape(1, 1, -1), torch.tensor(w).reshape(1, 1, -1),
                               padding=padding)
                return out.numpy().ravel()
            return f

        impls["torch conv1d"] = ("torch.nn.functional.conv1d(x, w)", torch_1d(0))
        impls["torch conv1d same"] = ("torch.nn.functional.conv1d(x, w, padding='same')", torch_1d("same"))
    except ImportError:
        notes.append("torch not installed: torch.nn.functional.conv1d/conv2d skipped (pip install torch)")
    return impls, notes


def _expected(x: np.ndarray, w: np.ndarray, reading: dict[str, Any]) -> np.ndarray | None:
    """What an implementation should output on (x, w) if the classification is right."""
    kernel = w[::-1] if reading["operation"] == "convolution" else w
    left = reading["valid_offset"]
    right = reading["output_length"] - left - (reading["n"] - len(w) + 1)
    if reading["border"] in (None, "unrecognised"):
        return None
    if left == right == 0:
        return valid_correlate(x, kernel)
    mode = BORDER_MODES[reading["border"].split(", ")[0]]
    return valid_correlate(np.pad(x, (left, right), mode=mode), kernel)


def compare_1d(impls: dict[str, tuple[str, Impl]], x: np.ndarray, w: np.ndarray, trials: int,
               seed: int) -> list[dict[str, Any]]:
    rows = []
    n, k = 17, 4
    for name, (call, fn) in impls.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about even kernels with padding='same'
            reading = classify(fn, n=n, k=k, seed=seed)
            reading["n"] = n
            lecture = np.asarray(fn(x, w), dtype=np.float64).ravel()
            errors = []
            rng = np.random.default_rng(seed + 1)
            for _ in range(trials):
                xr, wr = rng.normal(size=n), rng.normal(size=k)
                expected = _expected(xr, wr, reading)
                got = np.asarray(fn(xr, wr), dtype=np.float64).ravel()
                errors.append(np.inf if expected is None or expected.shape != got.shape
                              else float(np.abs(expected - got).max()))
        rows.append({"name": name, "call": call, "lecture_output": np.round(lecture, 6).tolist(),
                     "lecture_output_length": int(lecture.size), "operation": reading["operation"],
                     "border": reading["border"], "valid_offset": reading["valid_offset"],
                     "random_output_length": reading["output_length"], "random_input_length": n,
                     "random_kernel_length": k, "random_max_abs_error": max(errors)})
    return rows


def compare_multichannel(seed: int) -> dict[str, Any]:
    """q = sum_f w^(g,f) * p^(f) + b_g from the definition against lax (and torch), in 1D and 2D."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for label, spatial, kernel in (("1d", (19,), (4,)), ("2d", (11, 9), (3, 4))):
        f_in, g_out = 3, 5
        p = rng.normal(size=(*spatial, f_in)).astype(np.float32)
        w = rng.normal(size=(*kernel, f_in, g_out)).astype(np.float32)
        b = rng.normal(size=g_out).astype(np.float32)
        reference = correlate_definition(p, w, b)
        rank = len(spatial)
        dims = ("NWC", "WIO", "NWC") if rank == 1 else ("NHWC", "HWIO", "NHWC")
        lax_out = np.asarray(jax.lax.conv_general_dilated(p[None], w, (1,) * rank, "VALID",
                                                          dimension_numbers=dims)[0]) + b
        toeplitz = (conv_matrix(w, spatial) @ p.ravel()).reshape(reference.shape) + b
        row = {"input": list(p.shape), "kernel": list(w.shape), "output": list(reference.shape),
               "lax_max_abs_error": float(np.abs(lax_out - reference).max()),
               "toeplitz_max_abs_error": float(np.abs(toeplitz - reference).max())}
        try:
            import torch
            conv = torch.nn.functional.conv1d if rank == 1 else torch.nn.functional.conv2d
            perm = (rank + 1, rank) + tuple(range(rank))  # (*k, F, G) -> (G, F, *k)
            t = conv(torch.tensor(np.moveaxis(p, -1, 0)[None]), torch.tensor(np.transpose(w, perm)),
                     torch.tensor(b))[0].numpy()
            row["torch_max_abs_error"] = float(np.abs(np.moveaxis(t, 0, -1) - reference).max())
        except ImportError:
            pass
        out[label] = row
    return out


def toeplitz_proof(seed: int) -> dict[str, Any]:
    """The layer's matrix against flax's own conv layer, per padding, 1D and 2D multi-channel."""
    out: dict[str, Any] = {}
    for label, spatial, kernel, f_in, g_out in (("1d", (8,), (3,), 1, 1), ("2d", (7, 6), (3, 3), 2, 3)):
        for padding in ("VALID", "SAME", "CIRCULAR"):
            conv = nnx.Conv(f_in, g_out, kernel, padding=padding, use_bias=False, rngs=nnx.Rngs(seed))
            w = np.asarray(conv.kernel[...], np.float64)
            x = np.random.default_rng(seed).normal(size=(*spatial, f_in)).astype(np.float32)
            layer = np.asarray(conv(jnp.asarray(x)[None])[0], np.float64)
            m = conv_matrix(w, spatial, padding)
            product = (m @ x.ravel().astype(np.float64)).reshape(layer.shape)
            band = conv_matrix(np.ones_like(w), spatial, padding) != 0  # where a weight may sit
            entry = {"matrix_shape": list(m.shape), "max_abs_error": float(np.abs(product - layer).max()),
                     "weights_zeroed_fraction": float(1 - band.mean()),
                     "fully_connected_params": int(m.size), "conv_params": int(w.size)}
            if label == "1d":
                entry["matrix"] = np.round(m, 4).tolist()
            out[f"{label}.{padding}"] = entry
    return out


@dataclasses.dataclass
class Options:
    """``conv_compare.*``."""

    x: list[float] = option([2, 2, 2, 6, 6, 6, 6], "the input signal (the lecture's example)")
    w: list[float] = option([-1, 1], "the kernel (at most as long as x)")
    random_trials: int = option(5, "random inputs each implementation's reading is checked on", minimum=1)


def run(config: RunConfig, out_dir: Path) -> dict[str, Any]:
    opts = check(Options, config.raw.get("conv_compare"), "conv_compare")
    x, w = np.asarray(opts.x, dtype=np.float64), np.asarray(opts.w, dtype=np.float64)
    if len(w) > len(x):
        raise ConfigError(f"conv_compare.w has {len(w)} taps, more than the {len(x)} values of conv_compare.x")
    trials = opts.random_trials
    impls, notes = implementations()
    rows = compare_1d(impls, x, w, trials, config.seed)
    metrics = {
        "experiment": "conv_compare",
        "lecture_example": {"x": x.tolist(), "w": w.tolist()},
        "implementations": rows,
        "multichannel": compare_multichannel(config.seed),
        "toeplitz": toeplitz_proof(config.seed),
        "notes": notes,
        "environment": environment(),
    }
    write_json(out_dir / "metrics.json", metrics)
    table = format_table(metrics)
    (out_dir / "conv_compare.md").write_text(table + "\n")
    plot_conv_compare(metrics, out_dir)
    print(table)
    return metrics


def format_table(metrics: dict[str, Any]) -> str:
    ex = metrics["lecture_example"]
    lines = [f"x = {ex['x']}, w = {ex['w']}; reading from random inputs (length "
             f"{metrics['implementations'][0]['random_input_length']}, kernel "
             f"{metrics['implementations'][0]['random_kernel_length']})", "",
             "| implementation | output on the lecture's example | length | computes | border | "
             "max error on random inputs |", "|---|---|---:|---|---|---:|"]
    for r in metrics["implementations"]:
        out = "[" + ", ".join(f"{v:g}" for v in r["lecture_output"]) + "]"
        lines.append(f"| `{r['call']}` | {out} | {r['lecture_output_length']} | {r['operation']} | "
                     f"{r['border']} | {r['random_max_abs_error']:.1e} |")
    lines += ["", "| multi-channel with bias | input | kernel | output | lax error | toeplitz error | torch error |",
              "|---|---|---|---|---:|---:|---:|"]
    for label, r in metrics["multichannel"].items():
        torch_err = f"{r['torch_max_abs_error']:.1e}" if "torch_max_abs_error" in r else "skipped"
        lines.append(f"| {label} | {r['input']} | {r['kernel']} | {r['output']} | {r['lax_max_abs_error']:.1e} | "
                     f"{r['toeplitz_max_abs_error']:.1e} | {torch_err} |")
    lines += ["", "| conv as a fully connected layer | matrix | max error vs nnx.Conv | weights zeroed | "
              "FC params / conv params |", "|---|---|---:|---:|---|"]
    for label, r in metrics["toeplitz"].items():
        lines.append(f"| {label} | {r['matrix_shape'][0]}×{r['matrix_shape'][1]} | {r['max_abs_error']:.1e} | "
                     f"{100 * r['weights_zeroed_fraction']:.1f} % | {r['fully_connected_params']} / "
                     f"{r['conv_params']} |")
    lines += [f"note: {n}" for n in metrics["notes"]]
    return "\n".join(lines)
