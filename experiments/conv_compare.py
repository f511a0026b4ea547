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

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import scipy.ndimage as ndimage
from flax import nnx
from numpy.typing import ArrayLike
from pydantic import Field

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
from equivar.plot import save
from equivar.results import ExperimentResult, Headline, MeanStd, ModelRecord, Number, Record
from equivar.schema import Float as FloatOption
from equivar.schema import Options as OptionsBase
from equivar.schema import PositiveInt

log = logging.getLogger(__name__)

Impl = Callable[[np.ndarray, np.ndarray], ArrayLike]


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
        lax_out = np.asarray(jax.lax.conv_general_dilated(jnp.asarray(p[None]), jnp.asarray(w), (1,) * rank, "VALID",
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


class Options(OptionsBase):
    """``conv_compare.*``."""

    x: list[FloatOption] = Field([2, 2, 2, 6, 6, 6, 6], min_length=1,
                                 description="the input signal (the lecture's example)")
    w: list[FloatOption] = Field([-1, 1], min_length=1, description="the kernel (at most as long as x)")
    random_trials: PositiveInt = Field(5, description="random inputs each implementation's reading is checked on")


class Implementation(ModelRecord):
    """One implementation: its output on the lecture's example, what it computes (read from its outputs on
    random inputs), and the largest error of that reading on more random inputs."""

    headline = (Headline("random_max_abs_error_summary", "max error of the reading", share=False, log=True),)

    call: str
    lecture_output: list[float]
    lecture_output_length: int
    operation: str  # convolution, cross-correlation or other
    border: str | None
    valid_offset: int | None
    random_output_length: int
    random_input_length: int
    random_kernel_length: int
    random_max_abs_error: Number

    @property
    def random_max_abs_error_summary(self) -> MeanStd:
        return MeanStd(mean=self.random_max_abs_error, std=0.0, n=1)


class Multichannel(Record):
    input: list[int]
    kernel: list[int]
    output: list[int]
    lax_max_abs_error: float
    toeplitz_max_abs_error: float
    torch_max_abs_error: float | None = None


class Toeplitz(Record):
    matrix_shape: list[int]
    max_abs_error: float
    weights_zeroed_fraction: float
    fully_connected_params: int
    conv_params: int
    matrix: list[list[float]] | None = None  # 1D only (drawn)


class LectureExample(Record):
    x: list[float]
    w: list[float]


class Result(ExperimentResult[Implementation]):
    lecture_example: LectureExample
    multichannel: dict[str, Multichannel]
    toeplitz: dict[str, Toeplitz]  # "1d.VALID", "2d.CIRCULAR", ...
    notes: list[str]


def run(config: RunConfig, out_dir: Path) -> Result:
    opts: Options = config.options
    x, w = np.asarray(opts.x, dtype=np.float64), np.asarray(opts.w, dtype=np.float64)
    if len(w) > len(x):
        raise ConfigError(f"conv_compare.w has {len(w)} taps, more than the {len(x)} values of conv_compare.x")
    impls, notes = implementations()
    rows = compare_1d(impls, x, w, opts.random_trials, config.seed)
    return Result(experiment=config.experiment, module=config.module, seeds=[config.seed],
                  lecture_example=LectureExample(x=x.tolist(), w=w.tolist()),
                  models={r.pop("name"): Implementation.model_validate({**r, "source": "library"}) for r in rows},
                  multichannel={k: Multichannel.model_validate(v)
                                for k, v in compare_multichannel(config.seed).items()},
                  toeplitz={k: Toeplitz.model_validate(v) for k, v in toeplitz_proof(config.seed).items()},
                  notes=notes)


def summary(result: Result) -> str:
    ex = result.lecture_example
    first = next(iter(result.models.values()))
    lines = [f"x = {ex.x}, w = {ex.w}; reading from random inputs (length {first.random_input_length}, kernel "
             f"{first.random_kernel_length})", "",
             "| implementation | output on the lecture's example | length | computes | border | "
             "max error on random inputs |", "|---|---|---:|---|---|---:|"]
    for r in result.models.values():
        out = "[" + ", ".join(f"{v:g}" for v in r.lecture_output) + "]"
        lines.append(f"| `{r.call}` | {out} | {r.lecture_output_length} | {r.operation} | {r.border} | "
                     f"{r.random_max_abs_error:.1e} |")
    lines += ["", "| multi-channel with bias | input | kernel | output | lax error | toeplitz error | torch error |",
              "|---|---|---|---|---:|---:|---:|"]
    for label, m in result.multichannel.items():
        torch_err = f"{m.torch_max_abs_error:.1e}" if m.torch_max_abs_error is not None else "skipped"
        lines.append(f"| {label} | {m.input} | {m.kernel} | {m.output} | {m.lax_max_abs_error:.1e} | "
                     f"{m.toeplitz_max_abs_error:.1e} | {torch_err} |")
    lines += ["", "| conv as a fully connected layer | matrix | max error vs nnx.Conv | weights zeroed | "
              "FC params / conv params |", "|---|---|---:|---:|---|"]
    for label, t in result.toeplitz.items():
        lines.append(f"| {label} | {t.matrix_shape[0]}×{t.matrix_shape[1]} | {t.max_abs_error:.1e} | "
                     f"{100 * t.weights_zeroed_fraction:.1f} % | {t.fully_connected_params} / {t.conv_params} |")
    lines += [""] * bool(result.notes) + [f"note: {n}" for n in result.notes]  # a paragraph, not a table row
    return "\n".join(lines)


def plot(result: Result, out_dir: Path) -> list[Path]:
    """Left: every implementation's output on the lecture's example, coloured by what it computes.
    Right: the 1D layer matrices (Toeplitz for VALID and SAME, circulant for CIRCULAR)."""
    rows = list(result.models.items())
    colours = {"convolution": "tab:blue", "cross-correlation": "tab:red", "other": "tab:gray"}
    fig = plt.figure(figsize=(14, max(0.42 * len(rows) + 2.2, 6.0)), layout="constrained")  # 3 matrices
    grid = fig.add_gridspec(3, 2, width_ratios=[1.5, 1])
    ax = fig.add_subplot(grid[:, 0])
    longest = max(r.lecture_output_length for _, r in rows)
    for i, (name, r) in enumerate(rows):
        y = len(rows) - 1 - i
        ax.text(-0.6, y, name, ha="right", va="center", fontsize=8)
        for j, v in enumerate(r.lecture_output):
            ax.text(j, y, f"{v:g}", ha="center", va="center", fontsize=8, color=colours[r.operation],
                    fontweight="bold" if v != 0 else "normal")
    ex = result.lecture_example
    ax.set_xlim(-0.6, longest - 0.4)
    ax.set_ylim(-0.8, len(rows) - 0.2)
    ax.set_xticks(range(longest))
    ax.set_yticks([])
    ax.set_xlabel("output position")
    for spine in ("left", "right", "top"):
        ax.spines[spine].set_visible(False)
    ax.set_title(f"x = {ex.x}, w = {ex.w}: blue = convolution, red = cross-correlation", fontsize=10,
                 loc="left")
    for k, padding in enumerate(("VALID", "SAME", "CIRCULAR")):
        entry = result.toeplitz.get(f"1d.{padding}")
        if entry is None or entry.matrix is None:
            continue
        mat = np.asarray(entry.matrix)
        axm = fig.add_subplot(grid[k, 1])
        lim = np.abs(mat).max() or 1.0
        axm.imshow(mat, cmap="coolwarm", vmin=-lim, vmax=lim)
        axm.set_title(f"{padding}: {mat.shape[0]}×{mat.shape[1]} matrix, "
                      f"{100 * entry.weights_zeroed_fraction:.0f}% zero, error {entry.max_abs_error:.0e}",
                      fontsize=9)
        axm.set_xticks([])
        axm.set_yticks([])
    return [save(fig, Path(out_dir) / "conv_compare.png")]


