"""anatomy: per-layer shapes, parameter counts and receptive fields of every model, computed, not derived.

For each model in ``config.models`` on the chosen input shape: the forward and the backward receptive-field
analysis (which must agree), the exact set of input positions each layer's central unit depends on, and the
empirical field (the support of the input gradient); the effective receptive field maps are plotted per layer.
No training: the analysis is of the architecture (maps use the initial weights of ``seed``, or the first
healthy seed of a model loaded with ``load_from``).
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import jax
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx
from pydantic import Field

from equivar import checkpoints
from equivar.anatomy import anatomy
from equivar.config import RunConfig
from equivar.data import load_dataset
from equivar.errors import ConfigError
from equivar.introspect import to_inference
from equivar.layers import activation_names
from equivar.models import build_model
from equivar.plot import model_color, save
from equivar.results import ExperimentResult, ModelRecord, Record
from equivar.schema import Options as OptionsBase
from equivar.schema import PositiveInt

log = logging.getLogger(__name__)


class Options(OptionsBase):
    """``anatomy.*``."""

    input_shape: list[PositiveInt] | None = Field(None, description="one example's shape, e.g. [28, 28, 1] or "
                                                                    "[40, 1]; null: the dataset's")
    n_classes: PositiveInt | None = Field(None, description="classifier outputs; null: the dataset's")
    n_inputs: PositiveInt = Field(64, description="random inputs whose input gradients are averaged (effective "
                                                  "receptive field)")


class LayerRow(Record):
    """One layer: its shape and parameters; its field by forward and backward analysis, the exact input
    positions its central unit sees and the gradient's support (the analytic fields only where the model's
    layers form an exact chain of known layers)."""

    layer: str
    type: str
    output_shape: list[int]
    weights: int
    biases: int
    params: int
    rf_forward: list[int] | None = None
    rf_backward: list[int] | None = None
    start_forward: list[int] | None = None
    start_backward: list[int] | None = None
    jump: list[int] | None = None
    support_size: list[int] | None = None
    support_range: list[list[int]] | None = None
    forward_equals_backward: bool | None = None
    empirical_support_size: list[int] | None = None
    empirical_equals_analytic: bool | None = None


class ModelResult(ModelRecord):
    input_shape: list[int]
    layers: list[LayerRow]
    total_params: int
    model_param_total: int  # the model's own count of its parameters
    forward_equals_backward: bool | None = None
    analytic_unavailable: str | None = None  # why no analytic field, when there is none
    empirical_equals_analytic: bool | None = None
    gradient_maps: dict[str, list] = {}  # per layer: mean |d unit / d input|, normalised to a peak of 1


class Result(ExperimentResult[ModelResult]):
    input_shape: list[int]
    input_source: str  # the dataset the shape came from, or anatomy.input_shape
    n_classes: int
    n_inputs: int


def run(config: RunConfig, out_dir: Path) -> Result:
    opts: Options = config.options
    input_shape, n_classes = opts.input_shape, opts.n_classes
    data = None
    if input_shape is None or n_classes is None:
        data = load_dataset(config.dataset)
        input_shape = list(data.input_shape) if input_shape is None else input_shape
        n_classes = data.n_classes if n_classes is None else n_classes
        source = data.name
    else:
        source = "anatomy.input_shape"
    shape = tuple(int(d) for d in input_shape)
    if len(shape) < 2:
        raise ConfigError(f"anatomy.input_shape={list(shape)} needs spatial axes and channels, "
                          "e.g. [28, 28, 1] or [40, 1]")

    records = {}
    for i, spec in enumerate(config.models):
        if config.load_from:  # a trained model: its first healthy seed's weights give the maps
            loaded = checkpoints.load(Path(config.load_from), spec.name, spec.target, spec.options, shape, n_classes,
                                  spec.where)
            model, origin = loaded.modules()[0], loaded.source
        else:
            model = to_inference(build_model(spec.target, shape, n_classes, spec.options, nnx.Rngs(config.seed),
                                             where=spec.where))
            origin = "initialised"
        table = anatomy(model, shape, jax.random.key(config.seed + i), opts.n_inputs, where=spec.where)
        records[spec.name] = ModelResult.model_validate({**table, "target": spec.target, "source": origin,
                                                         "n_params": table["model_param_total"]})
    return Result(experiment=config.experiment, module=config.module, seeds=[config.seed], load_from=config.load_from,
                  dataset=None if data is None else data.summary(), input_shape=list(shape), input_source=source,
                  n_classes=int(n_classes), n_inputs=opts.n_inputs, models=records)


def _axes(values: list[int] | None) -> str:
    return "—" if values is None else "×".join(str(x) for x in values)


def summary(result: Result) -> str:
    """Per model, a markdown table of its layers."""
    return "\n\n".join(_table(name, m) for name, m in result.models.items())


def _table(name: str, m: ModelResult) -> str:
    lines = [f"### {name} on input {_axes(m.input_shape)}", "",
             "| layer | type | output | params (w + b) | RF fwd | RF bwd | start | jump | exact support | "
             "gradient support |",
             "|---|---|---|---:|---|---|---|---|---|---|"]
    for r in m.layers:
        params = f"{r.params:,} ({r.weights:,} + {r.biases:,})" if r.params else "0"
        grad = _axes(r.empirical_support_size)
        if r.empirical_equals_analytic is not None:
            grad += " ✓" if r.empirical_equals_analytic else " ✗"
        lines.append(f"| {r.layer} | {r.type} | {_axes(r.output_shape)} | {params} | {_axes(r.rf_forward)} | "
                     f"{_axes(r.rf_backward)} | {_axes(r.start_forward)} | {_axes(r.jump)} | "
                     f"{_axes(r.support_size)} | {grad} |")
    if m.analytic_unavailable is not None:
        verdict = f"analytic fields: none ({m.analytic_unavailable})"
    else:
        verdict = f"forward = backward: {m.forward_equals_backward}"
    lines.append(f"\ntotal parameters {m.total_params:,} (the model's own count: {m.model_param_total:,}); {verdict}"
                 + (f"; gradient support = analytic support: {m.empirical_equals_analytic}"
                    if m.empirical_equals_analytic is not None else ""))
    return "\n".join(lines)


def _extent(m: np.ndarray) -> list[tuple[int, ...]]:
    """Per axis, the first and last index where a map is non-zero (the whole axis when it is all zero)."""
    out: list[tuple[int, ...]] = []
    for axis in range(m.ndim):
        nonzero = np.flatnonzero(np.any(m > 0, axis=tuple(a for a in range(m.ndim) if a != axis)))
        out.append((int(nonzero[0]), int(nonzero[-1])) if nonzero.size else (0, m.shape[axis] - 1))
    return out or [(0, 0)]


def plot(result: Result, out_dir: Path) -> list[Path]:
    """Per model, the effective receptive field (mean |input gradient|) of each layer's central unit, with the
    analytic support's extent outlined (activations are left out: they share their input layer's field)."""
    written = []
    for name, model in result.models.items():
        rows = [r for r in model.layers if r.type != "Activation" and r.type not in activation_names()]
        cols = min(5, len(rows))
        n_rows = -(-len(rows) // cols)
        width = max(3.1 * cols, 6.5)  # room for the title, however few the panels
        fig, axes = plt.subplots(n_rows, cols, figsize=(width, 2.9 * n_rows + 0.5), squeeze=False,
                                 layout="constrained")
        for ax, row in zip(axes.ravel(), rows):
            m = np.asarray(model.gradient_maps.get(row.layer, []))
            if row.rf_forward is not None and row.support_size is not None and row.support_range is not None:
                rf = _axes(row.rf_forward)
                seen = _axes(row.support_size)
                if seen != rf:
                    rf += f", sees {seen}"
                ok = {True: "grad = analytic", False: "grad ≠ analytic", None: ""}[row.empirical_equals_analytic]
                ax.set_title(f"{row.layer}: RF {rf}\n{ok}", fontsize=9)
                (lo0, hi0), *rest = [tuple(r) for r in row.support_range]
            else:  # no analytic field (the model computes between its layers): the gradient's extent only
                seen = _axes(row.empirical_support_size) if row.empirical_support_size else "?"
                ax.set_title(f"{row.layer}: gradient sees {seen}\n(no analytic field)", fontsize=9)
                (lo0, hi0), *rest = _extent(m)
            if m.ndim == 2:
                ax.imshow(m, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
                (lo1, hi1) = rest[0]
                ax.add_patch(plt.Rectangle((lo1 - 0.5, lo0 - 0.5), hi1 - lo1 + 1, hi0 - lo0 + 1, fill=False,
                                           edgecolor="cyan", linewidth=1.2))
                ax.set_xticks([])
                ax.set_yticks([])
            elif m.ndim == 1:
                ax.bar(np.arange(len(m)), m, width=1.0, color=model_color(name))
                ax.axvspan(lo0 - 0.5, hi0 + 0.5, color="tab:cyan", alpha=0.2)
                ax.set_xlim(-0.5, len(m) - 0.5)
                ax.set_ylim(0, 1.05)
                ax.tick_params(labelsize=7)
        for ax in axes.ravel()[len(rows):]:
            ax.axis("off")
        title = (f"{name} on {_axes(model.input_shape)}: effective receptive field of each layer's central unit "
                 f"(mean |∂unit/∂input| over {result.n_inputs} inputs; box/band: analytic extent, or the "
                 "gradient's where the model has no analytic field)")
        fig.suptitle(textwrap.fill(title, width=int(width * 13)), fontsize=10)
        written.append(save(fig, Path(out_dir) / f"erf_{name}.png"))
    return written
