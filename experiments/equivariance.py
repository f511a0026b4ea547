"""equivariance: how exactly each layer commutes with shifts, per padding, shift mode and training stage.

Every model in ``config.models`` that has a ``padding`` option is built once per padding in
``equivariance.paddings`` (for ``CIRCULAR`` its pooling windows wrap too). For each seed, at initialisation
and after training, each layer's relative equivariance error ``||f(T_s x) - T_{s/J} f(x)|| / ||f(x)||`` is
measured on test inputs for the shifts ``0..shift.max`` by ``shift.step`` (all axes at once), under every
mode in ``shift.mode`` (by default ``roll`` and ``zero``), over all positions and over the interior (positions
no border can reach); layers after flatten/global pooling get the invariance error. Rotation by 90 degrees
(2D; reflection in 1D) and magnification by 2 are measured too: convolutions do not commute with them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from pydantic import Field

from equivar.checkpoints import TrainedModel
from equivar.config import ModelSpec, RunConfig
from equivar.data import load_dataset
from equivar.equivariance import layer_shift_errors, transform_errors
from equivar.evaluate import ShiftEvaluator
from equivar.experiment import as_trained, base_fields, builder, check_before_data, init_seeds, obtain, record_fields
from equivar.layers import Padding
from equivar.metrics import accuracy
from equivar.models import model_options, resolve_target
from equivar.plot import FLOAT32_EPS, LOG_FLOOR, model_text_color, over_seeds, save
from equivar.results import (
    ExperimentResult,
    Headline,
    MeanStd,
    MeanStdGrid,
    MeanStdSeries,
    ModelRecord,
    Record,
    seeds_phrase,
)
from equivar.schema import Options as OptionsBase
from equivar.schema import PositiveInt

log = logging.getLogger(__name__)

class Options(OptionsBase):
    """``equivariance.*`` (the shifts themselves are the ``shift.*`` grid)."""

    paddings: list[Padding] = Field(["VALID", "SAME", "CIRCULAR"], min_length=1,
                                    description="paddings to build each model with (models with a padding option)")
    n_examples: PositiveInt = Field(256, description="test inputs per measurement")
    trained: bool = Field(True, description="also measure after training (train.*), not only at initialisation")
    grid: bool = Field(False, description="2D data: also every (dy, dx) shift in 0..shift.max on both axes, not "
                                          "only the diagonal (shift.max + 1 squared forward passes per model)")


class LayerErrors(Record):
    """One layer's error per shift of the diagonal ``(s, ..., s)``, over seeds."""

    shift: list[float]
    divisible: list[bool]  # whether the layer's cumulative stride (jump) divides the shift
    role: str  # equivariance (a spatial map) or invariance (after flatten or global pooling)
    jump: list[int] | None = None
    full: MeanStdSeries | None = None  # over all positions
    interior: MeanStdSeries | None = None  # over the positions no border reaches (integer modes, known fields)
    grid: MeanStdGrid | None = None  # every (dy, dx) in 0..max (2D, equivariance.grid)


class Stage(Record):
    shift: dict[str, dict[str, LayerErrors]]  # mode -> layer -> errors
    transforms: dict[str, dict[str, MeanStd]]  # transform -> layer -> error


class Variant(ModelRecord):
    """One model built with one padding, measured at initialisation and after training."""

    headline = (Headline("logits_shift_1", "logits' error at shift 1", share=False, log=True),)

    model: str  # the zoo entry it is built from
    padding: str
    stages: dict[str, Stage]  # init, trained
    clean_accuracy: MeanStd | None = None  # the trained stage's, on the whole test set

    @property
    def logits_shift_1(self) -> MeanStd | None:
        """The logits' relative change under a shift of 1 (the last stage, the first mode)."""
        stage = list(self.stages.values())[-1]
        layers = next(iter(stage.shift.values()))
        last = layers[list(layers)[-1]]
        if last.full is None or 1 not in last.shift:
            return None
        return last.full.at(last.shift.index(1))


class Result(ExperimentResult[Variant]):
    n_examples: int
    max_shift: float
    step: float
    modes: list[str]


def _aggregate(per_seed: list[dict[str, dict[str, Any]]]) -> dict[str, LayerErrors]:
    """Per layer: mean/std over seeds of every per-shift error list."""
    out = {}
    for layer, first in per_seed[0].items():
        row: dict[str, Any] = {k: first[k] for k in ("shift", "divisible", "role", "jump") if k in first}
        for key, kind in (("full", MeanStdSeries), ("interior", MeanStdSeries), ("grid", MeanStdGrid)):
            values = [s[layer].get(key) for s in per_seed]
            if values[0]:
                row[key] = kind.of(np.asarray(values, dtype=np.float64))
        out[layer] = LayerErrors.model_validate(row)
    return out


def _variants(config: RunConfig, paddings: list[Padding]) -> list[tuple[ModelSpec, str | None, dict[str, Any]]]:
    """(model spec, padding, options): every padding for models with a ``padding`` option, trained here; the
    model as configured otherwise (and always for models loaded from an earlier run)."""
    out: list[tuple[ModelSpec, str | None, dict[str, Any]]] = []
    for spec in config.models:
        accepted, _ = model_options(resolve_target(spec.target, spec.where))
        if "padding" not in accepted or config.load_from:
            out.append((spec, None, dict(spec.options)))
            continue
        for padding in paddings:
            options = dict(spec.options, padding=padding)
            if padding == "CIRCULAR" and "pool_padding" in accepted:
                options["pool_padding"] = "CIRCULAR"
            out.append((spec, padding, options))
    return out


def check(config: RunConfig) -> None:
    """A shift grid that fits the input (when its shape is known without reading data)."""
    known = config.dataset.shape()
    if known is not None:
        config.shift.check_fits(known[0][:-1])


def run(config: RunConfig, out_dir: Path) -> Result:
    opts: Options = config.options
    grid = config.shift
    variants = _variants(config, opts.paddings)
    check_before_data(config, [(spec.target, options, spec.where) for spec, _, options in variants])
    data = load_dataset(config.dataset)
    spatial = data.input_shape[:-1]
    grid.check_fits(spatial)
    transform_names = ["rotate90", "scale2"] if data.rank == 2 and spatial[0] == spatial[1] else ["flip", "scale2"]
    plan = config.plan()
    x = jnp.asarray(data.x_test[:opts.n_examples])
    records: dict[str, Variant] = {}
    lost: dict[str, ModelRecord] = {}
    measured: list[TrainedModel] = []
    for spec, padding, options in variants:
        name = spec.name if padding is None else f"{spec.name}/{padding}"
        stages: dict[str, TrainedModel] = {}
        if not config.load_from:
            graphdef, states = init_seeds(builder(spec.target, options, data, spec.where), config)
            stages["init"] = as_trained(name, spec.target, options, data, graphdef, states, config, None)
        if opts.trained or config.load_from:
            stages["trained"] = obtain(config, data, out_dir, name if padding is None else f"{spec.name}-{padding}",
                                       spec.target, options, plan, spec.where)
        measured += [m for stage, m in stages.items() if stage == "trained"]
        results: dict[str, Stage] = {}
        for stage, model in stages.items():
            modules = model.modules()
            if not modules:
                continue
            top, step = (int(grid.max), int(grid.step)) if grid.integer else (grid.max, grid.step)
            shifts = {mode: _aggregate([layer_shift_errors(m, x, top, mode, opts.grid, step) for m in modules])
                      for mode in grid.modes}
            transforms = {}
            for t in transform_names:
                per_seed = [transform_errors(m, x, t) for m in modules]  # {} where the model cannot take R x
                transforms[t] = {layer: MeanStd.of([s[layer] for s in per_seed]) for layer in per_seed[0]}
            results[stage] = Stage(shift=shifts, transforms=transforms)
        fields = record_fields(stages["trained"]) if "trained" in stages else {
            "target": spec.target, "source": "initialised", "n_params": stages["init"].n_params}
        if "trained" in stages and "trained" not in results:  # every trained seed diverged
            lost[name] = ModelRecord(**fields)
        else:
            clean = None
            if "trained" in results:
                trained = stages["trained"]
                predictions = ShiftEvaluator(trained.graphdef, "roll", plan).predict(
                    trained.variables(), data.x_test, np.zeros((1, data.rank), np.int32))[:, 0]
                clean = MeanStd.of(accuracy(predictions, data.y_test))
            records[name] = Variant(**fields, model=spec.name, clean_accuracy=clean,
                                    padding=padding or str(options.get("padding", "as built")), stages=results)
        log.info("%s: done (%s)", name, ", ".join(results))
    return Result(**base_fields(config, data, measured), n_examples=int(x.shape[0]), max_shift=grid.max,
                  step=grid.step, modes=list(grid.modes), models=records, unmeasured=lost)


def summary(result: Result) -> str:
    """Per variant, stage and mode: the last spatial layer's error at shift 1 and at shift J (its jump), full
    and interior, and the logits' invariance error at shift 1."""
    dataset = result.dataset.name if result.dataset else "?"
    lines = [f"equivariance on {dataset} ({seeds_phrase(result.n_seeds)}, {result.n_examples} test inputs): "
             "relative error, mean over seeds", "",
             "| variant | stage | mode | last spatial layer | shift 1 full | shift 1 interior | shift J full | "
             "shift J interior | logits at shift 1 |", "|---|---|---|---|---:|---:|---:|---:|---:|"]

    def fmt(r: LayerErrors, key: str, shift: float) -> str:
        """The mean error of row ``r`` at the shift of that value ('—' where it was not measured)."""
        series = getattr(r, key)
        i = r.shift.index(shift) if shift in r.shift else None
        value = series.mean[i] if series is not None and i is not None and i < len(series.mean) else None
        return "—" if value is None or value != value else f"{value:.1e}"

    for name, v in result.models.items():
        for stage, st in v.stages.items():
            for mode, layers in st.shift.items():
                spatial = [k for k, r in layers.items() if r.role == "equivariance"]
                logits = layers[list(layers)[-1]]
                if not spatial:  # e.g. an MLP: no spatial maps, only its invariance
                    lines.append(f"| {name}{v.seeds_note()} | {stage} | {mode} | none | — | — | — | — | "
                                 f"{fmt(logits, 'full', 1)} |")
                    continue
                last = layers[spatial[-1]]
                j = last.jump[0] if last.jump else 1
                lines.append(f"| {name}{v.seeds_note()} | {stage} | {mode} | {spatial[-1]} (J={j}) | "
                             f"{fmt(last, 'full', 1)} | {fmt(last, 'interior', 1)} | {fmt(last, 'full', j)} | "
                             f"{fmt(last, 'interior', j)} | {fmt(logits, 'full', 1)} |")
    lines += result.unmeasured_rows(8, lambda r: ["trained"])
    return "\n".join(lines)


def plot(result: Result, out_dir: Path) -> list[Path]:
    """Per stage: error vs shift per layer (log scale; solid = all positions, dotted = interior; filled marks:
    shifts the layer's jump divides), one row per variant and one column per shift mode. Plus a bar chart of
    the transforms convolutions do not commute with."""
    out_dir = Path(out_dir)
    variants = result.models
    if not variants:
        return []
    modes = result.modes
    dataset = result.dataset.name if result.dataset else "?"
    stages = list(dict.fromkeys(stage for v in variants.values() for stage in v.stages))
    written = []
    for stage in stages:
        shown_variants = {n: v for n, v in variants.items() if stage in v.stages}
        fig, axes = plt.subplots(len(shown_variants), len(modes), figsize=(6.2 * len(modes) + 1.2,
                                                                           2.9 * len(shown_variants) + 0.8),
                                 squeeze=False, sharey=True, layout="constrained")
        for row, (name, v) in enumerate(shown_variants.items()):
            for col, mode in enumerate(modes):
                ax = axes[row, col]
                layers = v.stages[stage].shift[mode]
                shown = [k for k in layers if not k.startswith("act")]
                colours = plt.cm.viridis(np.linspace(0, 0.9, len(shown)))
                for colour, layer in zip(colours, shown):
                    r = layers[layer]
                    if r.full is None:
                        continue
                    s = np.asarray(r.shift)
                    full = np.maximum(np.asarray(r.full.mean, dtype=float), LOG_FLOOR)
                    div = np.asarray(r.divisible)
                    label = f"{layer} (J={r.jump[0]})" if r.jump else f"{layer} (invariance)"
                    ax.plot(s, full, "-", color=colour, lw=1.3, label=label)
                    ax.plot(s[div], full[div], "o", color=colour, ms=4)
                    ax.plot(s[~div], full[~div], "o", mfc="none", color=colour, ms=4)
                    if r.interior is not None:
                        interior = np.asarray(r.interior.mean, float)
                        ax.plot(s, np.maximum(interior, LOG_FLOOR), ":", color=colour, lw=1.3)
                ax.axhline(FLOAT32_EPS, color="gray", lw=0.8, ls="--")
                ax.set_yscale("log")
                ax.set_ylim(LOG_FLOOR / 2, 3)
                ax.set_title(f"{name}{v.seeds_note()}, {mode} shift", fontsize=10, color=model_text_color(v.model))
                ax.grid(alpha=0.3, which="both", axis="y")
                if row == len(shown_variants) - 1:
                    ax.set_xlabel("shift (pixels, every axis)")
                if col == 0:
                    ax.set_ylabel("relative error")
                if col == len(modes) - 1:
                    ax.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.suptitle(f"{stage}: ‖f(Tₛx) − T_(s/J) f(x)‖ / ‖f(x)‖ per layer on {dataset}, "
                     f"{over_seeds(result.n_seeds, 'mean')}\nsolid: all positions; dotted: interior; "
                     f"hollow marks: the jump J does not divide s; dashed grey: float32 precision; "
                     f"exact zeros drawn at {LOG_FLOOR:g}",
                     fontsize=9)
        written.append(save(fig, out_dir / f"equivariance_{stage}.png"))

    for stage in stages:
        grid_plot = _plot_grid(result, stage, out_dir)
        if grid_plot is not None:
            written.append(grid_plot)

    stage = stages[-1]
    transforms = list(next(v for v in variants.values() if stage in v.stages).stages[stage].transforms)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 + 0.75 * len(variants) * len(transforms)), 4.2),
                           layout="constrained")
    width = 0.8 / len(transforms)
    for t_i, t in enumerate(transforms):
        means, stds = [], []
        for v in variants.values():
            errors = v.stages[stage].transforms.get(t, {}) if stage in v.stages else {}
            spatial = [k for k in errors if not k.startswith("act")]
            if not spatial:  # no spatial layer measured (an MLP, or a model that only takes its own size)
                means.append(np.nan)
                stds.append(0.0)
                continue
            means.append(errors[spatial[-1]].mean)
            stds.append(errors[spatial[-1]].std)
        x = np.arange(len(variants)) + (t_i - (len(transforms) - 1) / 2) * width
        # Greys, not C0, C1, ...: those are the colours of models (model_color), and these bars are transforms.
        ax.bar(x, means, width, yerr=stds, capsize=3, label=t,
               color=plt.cm.Greys(0.35 + 0.45 * t_i / max(len(transforms) - 1, 1)))
    ax.set_xticks(np.arange(len(variants)), list(variants), fontsize=8)  # save() rotates them where crowded
    for tick, v in zip(ax.get_xticklabels(), variants.values()):  # bars are transforms; labels name the model
        tick.set_color(model_text_color(v.model))
    ax.set_ylabel("relative error, last spatial layer")
    ax.set_title(f"{stage}: transforms convolutions do not commute with ({over_seeds(result.n_seeds)})",
                 fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    written.append(save(fig, out_dir / "transforms.png"))
    return written


def _plot_grid(result: Result, stage: str, out_dir: Path) -> Path | None:
    """Per variant and shift mode: the last spatial layer's error over the full (dy, dx) grid (log scale)."""
    variants = {n: v for n, v in result.models.items() if stage in v.stages}
    modes = result.modes
    cells = {}
    for name, v in variants.items():
        for mode in modes:
            layers = v.stages[stage].shift[mode]
            spatial = [k for k, r in layers.items() if r.role == "equivariance" and r.grid is not None]
            if spatial:
                cells[name, mode] = (spatial[-1], layers[spatial[-1]])
    if not cells:
        return None
    fig, axes = plt.subplots(len(variants), len(modes), figsize=(3.6 * len(modes) + 1, 3.2 * len(variants)),
                             squeeze=False, layout="constrained")
    image = None
    for i, name in enumerate(variants):
        for j, mode in enumerate(modes):
            ax = axes[i, j]
            if (name, mode) not in cells:
                ax.axis("off")
                continue
            layer, r = cells[name, mode]
            assert r.grid is not None and r.jump is not None
            grid = np.maximum(np.asarray(r.grid.mean, dtype=float), LOG_FLOOR)
            image = ax.imshow(np.log10(grid), vmin=-9, vmax=0.5, cmap="magma", origin="upper")
            ax.set_title(f"{name}, {mode}: {layer} (J={r.jump[0]})", fontsize=8,
                         color=model_text_color(variants[name].model))
            ax.set_xlabel("dx")
            ax.set_ylabel("dy")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="log10 relative error (1e-9: exact)")
    fig.suptitle(f"{stage}: equivariance error of the last spatial layer over every (dy, dx) shift, "
                 f"{over_seeds(result.n_seeds, 'mean')}", fontsize=9)
    return save(fig, Path(out_dir) / f"equivariance_grid_{stage}.png")


