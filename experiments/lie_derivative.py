"""lie_derivative: how far each trained model is from invariance under continuous (sub-pixel) transformations.

For every model and seed (trained here, or loaded with ``load_from``), on ``lie_derivative.n_examples`` test
inputs: the Lie derivative of the logits and of the softmax probabilities under translation along every
spatial axis (and, in 2D, rotation and scaling about the centre), computed exactly with ``jax.jvp``
(``equivar.lie``). The local equivariance error (LEE) is reported two ways, each mean ± std over seeds:
``mse``, the mean over inputs of the squared norm of the derivative (Gruver et al. 2023, their eq.), and
``mean_abs``, the mean absolute entry (what their code averages). Units: per pixel of translation, per radian
of rotation, per unit of log-scale.

Layer by layer (translations, any model): the forward pass is cut into rows, each layer's own computation and
the computation between layers (a functional max, a residual sum, an attention's softmax) as rows of their own
(``equivar.dataflow``); each row's own Lie derivative, pushed through the rest of the network, is its
contribution to the output's derivative, and the contributions sum to it exactly. Beside them: clean accuracy
and the shift consistency over the ``shift.*`` grid (by default every integer roll up to ``shift.max``; for
the scatter of LEE against consistency), and the predicted class's probability of a few inputs as they slide
by sub-pixel Fourier shifts (the saw-tooth of aliasing).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from pydantic import Field

from equivar.config import RunConfig
from equivar.data import load_dataset
from equivar.dataflow import contributions, model_split
from equivar.errors import ConfigError
from equivar.evaluate import ShiftEvaluator
from equivar.experiment import base_fields, check_before_data, obtain, record_fields, spec_variants, unmeasured
from equivar.lie import generators, lie_derivative
from equivar.metrics import accuracy, consistency
from equivar.plot import (
    clipped_errors,
    dot_chart,
    legend_columns,
    model_color,
    nonnegative_log_axis,
    over_seeds,
    save,
)
from equivar.results import ExperimentResult, Headline, MeanStd, ModelRecord, Record, seeds_phrase
from equivar.schema import Float, NonNegativeInt, PositiveInt
from equivar.schema import Options as OptionsBase
from equivar.transforms import fourier_shift

log = logging.getLogger(__name__)


Generator = Literal["translate_x", "translate_y", "rotate", "scale"]


def chosen_generators(opts: Options, rank: int) -> tuple[str, ...]:
    """The generators to measure: the option's, checked against the data's rank, else every one it has."""
    available = generators(rank)
    if opts.generators is None:
        return available
    wrong = [g for g in opts.generators if g not in available]
    if wrong:
        raise ConfigError(f"lie_derivative.generators={list(opts.generators)}: {', '.join(wrong)} "
                          f"{'is' if len(wrong) == 1 else 'are'} not defined on {rank}D data; {rank}D data has "
                          f"{', '.join(available)}")
    return tuple(dict.fromkeys(opts.generators))


class Options(OptionsBase):
    """``lie_derivative.*`` (the integer-shift consistency beside it uses the ``shift.*`` grid)."""

    generators: list[Generator] | None = Field(None, min_length=1, description="transformations to differentiate "
                                               "along (null: every one the data's rank has: 1D translate_x; 2D "
                                               "translate_y, translate_x, rotate, scale)")
    n_examples: PositiveInt = Field(256, description="test inputs the derivatives are averaged over")
    batch: PositiveInt = Field(64, description="inputs per jitted call (memory)")
    per_layer: bool = Field(True, description="also split the translation derivative into per-layer contributions")
    sawtooth_inputs: NonNegativeInt = Field(4, description="test inputs whose predicted probability is traced over "
                                                           "sub-pixel shifts")
    sawtooth_max: Float = Field(2.0, ge=0, description="Fourier shifts 0..sawtooth_max pixels for that trace")
    sawtooth_step: Float = Field(0.05, ge=1e-3, description="step of that trace (pixels)")


class LEE(Record):
    """The local equivariance error of one output: ``mse``, the mean over inputs of the squared norm of the
    derivative (Gruver et al. 2023, their equation), and ``mean_abs``, its mean absolute entry."""

    mse: MeanStd
    mean_abs: MeanStd


class OutputLEE(Record):
    logits: LEE
    probs: LEE  # of the softmax probabilities


class LayerShares(Record):
    """Per layer, in call order: the mse of its contribution to the output's translation derivative."""

    logits: dict[str, MeanStd]
    probs: dict[str, MeanStd]


class Sawtooth(Record):
    """The clean predicted class's probability of a few inputs (first seed) under Fourier shifts."""

    shifts: list[float]
    predicted_class: list[int]
    probability: list[list[float]]  # per input, per shift


class PerSeed(Record):
    seeds: list[int]
    lee: list[dict[str, dict[str, dict[str, float]]]]  # per seed: generator -> output -> mse | mean_abs
    consistency: list[float]
    clean_accuracy: list[float]


class ModelResult(ModelRecord):
    headline = (Headline("clean_accuracy"), Headline("consistency"),
                Headline("lee.translate_x.probs.mse", "LEE translate_x (softmax)", share=False, log=True))

    clean_accuracy: MeanStd
    consistency: MeanStd  # under the shift.* grid
    grid_mean_accuracy: MeanStd
    lee: dict[str, OutputLEE]  # per generator
    per_seed: PerSeed
    layers: dict[str, LayerShares] | None = None  # per translation generator: rows of the forward pass
    layer_sum_residual: float | None = None  # how far the contributions' sum is from the derivative (relative)
    per_layer_unavailable: str | None = None  # why there is no per-layer split
    sawtooth: Sawtooth | None = None


class ConsistencyGrid(Record):
    mode: str
    max: float
    step: float
    n_examples: int


class Result(ExperimentResult[ModelResult]):
    generators: list[str]
    n_examples: int
    units: dict[str, str]
    consistency_grid: ConsistencyGrid


def _batched(fn, x: jax.Array, size: int) -> Any:
    """``fn`` over ``x`` in chunks of ``size``, outputs concatenated on the leading axis (pytrees too)."""
    parts = [fn(x[i:i + size]) for i in range(0, x.shape[0], size)]
    return jax.tree.map(lambda *a: jnp.concatenate(a), *parts)


def _lee(d: jax.Array) -> dict[str, float]:
    """Mean squared norm over the output axis and mean absolute entry of a derivative ``(N, K)``."""
    return {"mse": float(jnp.mean(jnp.sum(jnp.square(d), axis=-1))), "mean_abs": float(jnp.mean(jnp.abs(d)))}


def measure_seed(module, x: jax.Array, gens: tuple[str, ...], per_layer: bool, batch: int,
                 input_shape: tuple[int, ...]) -> dict[str, Any]:
    """LEE of one model (one seed) for every generator, and per-layer contributions for translations."""
    out: dict[str, Any] = {"lee": {}}

    def derivatives(v, gen):
        logits = module(v)
        d_logits = lie_derivative(module, v, gen)
        d_probs = jax.jvp(jax.nn.softmax, (logits,), (d_logits,))[1]
        return d_logits, d_probs

    for gen in gens:
        d_logits, d_probs = _batched(jax.jit(lambda v, g=gen: derivatives(v, g)), x, batch)
        out["lee"][gen] = {"logits": _lee(d_logits), "probs": _lee(d_probs)}
    if not per_layer:
        return out
    rank = len(input_shape) - 1
    try:  # the rows of any forward pass: its layers and the computation between them (equivar.dataflow)
        order = [row.name for row in model_split(module, x[:1]).rows]
    except Exception as err:  # a forward pass that is not one array to one array: said, not hidden
        out["per_layer_unavailable"] = f"its forward pass cannot be traced as one function of the input " \
                                       f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        return out
    out["layers"] = {}
    for gen in gens:
        if not gen.startswith("translate_"):
            continue
        axis = rank - 1 if gen == "translate_x" else 0

        def split(v, axis=axis):
            total, parts = contributions(model_split(module, v), v, axis)
            logits = module(v)
            to_probs = lambda d: jax.jvp(jax.nn.softmax, (logits,), (d,))[1]  # noqa: E731
            return total, parts, {k: to_probs(p) for k, p in parts.items()}

        total, parts, parts_probs = _batched(jax.jit(split), x, batch)
        residual = float(jnp.max(jnp.abs(sum(parts.values()) - total)) / jnp.maximum(jnp.max(jnp.abs(total)), 1e-30))
        out["layers"][gen] = {"logits": {k: _lee(parts[k])["mse"] for k in order},
                              "probs": {k: _lee(parts_probs[k])["mse"] for k in order},
                              "sum_residual": residual}
    return out


def sawtooth(module, x: jax.Array, shifts: np.ndarray, axis: int) -> Sawtooth:
    """The probability of each input's clean predicted class under Fourier shifts along ``axis``."""
    rank = x.ndim - 2
    clean = jnp.argmax(module(x), -1)

    def probs_at(t):
        offset = jnp.zeros((rank,), jnp.float32).at[axis].set(t)
        p = jax.nn.softmax(module(fourier_shift(x, offset)))
        return jnp.take_along_axis(p, clean[:, None], axis=1)[:, 0]

    values = jax.jit(jax.vmap(probs_at))(jnp.asarray(shifts, jnp.float32))  # (shifts, inputs)
    return Sawtooth(shifts=[float(s) for s in shifts], predicted_class=clean.tolist(),
                    probability=np.asarray(values).T.tolist())


def check(config: RunConfig) -> None:
    """One shift mode, and a grid that fits the input (when its shape is known without reading data)."""
    config.shift.one_mode("lie_derivative")
    known = config.dataset.shape()
    if known is not None:
        config.shift.check_fits(known[0][:-1])
        chosen_generators(config.options, len(known[0]) - 1)


def run(config: RunConfig, out_dir: Path) -> Result:
    opts: Options = config.options
    mode = config.shift.one_mode("lie_derivative")
    check_before_data(config, spec_variants(config.models))
    data = load_dataset(config.dataset)
    config.shift.check_fits(data.input_shape[:-1])
    gens = chosen_generators(opts, data.rank)
    plan = config.plan()
    x = jnp.asarray(data.x_test[:opts.n_examples])
    grid = config.shift.offsets(data.rank)
    x_grid, y_grid = config.eval.subset(data.x_test, data.y_test)
    saw_shifts = np.arange(0, opts.sawtooth_max + 1e-9, opts.sawtooth_step)
    records, lost, measured = {}, {}, []
    for spec in config.models:
        model = obtain(config, data, out_dir, spec.name, spec.target, spec.options, plan)
        measured.append(model)
        if (diverged := unmeasured(model)) is not None:
            lost[spec.name] = diverged
            continue
        evaluator = ShiftEvaluator(model.graphdef, mode, plan)
        variables = model.variables()
        clean = accuracy(evaluator.predict(variables, data.x_test, np.zeros((1, data.rank), np.int32))[:, 0],
                         data.y_test)
        grid_preds = evaluator.predict(variables, x_grid, grid)
        cons = np.array([consistency(p, data.n_classes) for p in grid_preds])
        per_seed = [measure_seed(m, x, gens, opts.per_layer, opts.batch, data.input_shape) for m in model.modules()]
        record = ModelResult(
            **record_fields(model),
            clean_accuracy=MeanStd.of(clean),
            consistency=MeanStd.of(cons),
            grid_mean_accuracy=MeanStd.of(accuracy(grid_preds, y_grid).mean(axis=1)),
            lee={g: OutputLEE(**{out: LEE(**{k: MeanStd.of([s["lee"][g][out][k] for s in per_seed])
                                             for k in ("mse", "mean_abs")}) for out in ("logits", "probs")})
                 for g in gens},
            per_seed=PerSeed(seeds=model.healthy_seeds(), lee=[s["lee"] for s in per_seed],
                             consistency=cons.tolist(), clean_accuracy=clean.tolist()))
        if "layers" in per_seed[0]:
            record.layers = {g: LayerShares(**{out: {layer: MeanStd.of([s["layers"][g][out][layer] for s in per_seed])
                                                     for layer in per_seed[0]["layers"][g][out]}
                                               for out in ("logits", "probs")})
                             for g in per_seed[0]["layers"]}
            record.layer_sum_residual = max(s["layers"][g]["sum_residual"] for s in per_seed for g in s["layers"])
        elif "per_layer_unavailable" in per_seed[0]:
            record.per_layer_unavailable = per_seed[0]["per_layer_unavailable"]
        if opts.sawtooth_inputs:
            record.sawtooth = sawtooth(model.modules()[0], x[:opts.sawtooth_inputs], saw_shifts, data.rank - 1)
        records[spec.name] = record
        shown = gens[-1 if data.rank == 1 else 1]
        log.info("%s: LEE (probs, %s) %s", spec.name, shown, record.lee[shown].probs.mse.mean)
    return Result(**base_fields(config, data, measured), generators=list(gens), n_examples=int(x.shape[0]),
                  units={"translate_x": "per pixel", "translate_y": "per pixel", "rotate": "per radian",
                         "scale": "per unit log-scale"},
                  consistency_grid=ConsistencyGrid(mode=mode, max=config.shift.max, step=config.shift.step,
                                                   n_examples=int(len(y_grid))),
                  models=records, unmeasured=lost)


def summary(result: Result) -> str:
    gens = result.generators
    dataset = result.dataset.name if result.dataset else "?"
    lines = [f"lie_derivative on {dataset} ({seeds_phrase(result.n_seeds)}, {result.n_examples} test inputs): local "
             "equivariance error of the softmax output, mean squared norm of the Lie derivative (translation per "
             "pixel; rotation per radian; scale per log-unit)", "",
             f"| model | clean acc | consistency ({result.consistency_grid.mode} shifts) | "
             + " | ".join(f"LEE {g}" for g in gens) + f" | largest layer contribution ({split_generator(gens)}) |",
             "|---|---:|---:|" + "---:|" * len(gens) + "---|"]
    for name, m in result.models.items():
        lee = " | ".join(m.lee[g].probs.mse.text(3) for g in gens)
        top = "—"
        if m.layers and (g := split_generator(gens)) in m.layers:
            parts = m.layers[g].probs
            layer = max(parts, key=lambda k: parts[k].mean)
            top = f"{layer} ({parts[layer].mean:.3g}, {g})"
        lines.append(f"| {name}{m.seeds_note()} | {m.clean_accuracy.text()} | {m.consistency.text()} | {lee} | {top} |")
    lines += result.unmeasured_rows(len(gens) + 3)
    without = {name: m.per_layer_unavailable for name, m in result.models.items() if not m.layers}
    if without:
        lines += ["", "No per-layer split (—): " + "; ".join(f"{name}: {why or 'not asked for'}"
                                                         for name, why in without.items())]
    return "\n".join(lines)


def split_generator(gens: list[str] | tuple[str, ...]) -> str:
    """The translation the summary's layer column and the plots' titles name: along the last axis (x)."""
    return [g for g in gens if g.startswith("translate_")][-1]


def plot(result: Result, out_dir: Path) -> list[Path]:
    """Per-layer contributions to the translation Lie derivative (one panel per model), the saw-tooth of the
    predicted probability under sub-pixel shifts, and LEE against integer-shift consistency and accuracy."""
    out_dir = Path(out_dir)
    models = result.models
    if not models:
        return []
    gens = result.generators
    translate = [g for g in gens if g.startswith("translate_")]
    dataset = result.dataset.name if result.dataset else "?"
    n_seeds = result.n_seeds
    written = []

    layered = {n: m.layers for n, m in models.items() if m.layers}
    if not layered:  # say so in the figure the docs name, rather than leave it out
        fig, ax = plt.subplots(figsize=(9, 2.2), layout="constrained")
        ax.axis("off")
        reasons = [f"{n}: {_short(m.per_layer_unavailable or 'not asked for (lie_derivative.per_layer=false)')}"
                   for n, m in models.items()]
        ax.text(0.0, 0.5, "No model has a per-layer split of its translation derivative:\n" + "\n".join(reasons),
                fontsize=8, va="center", wrap=True)
        written.append(save(fig, out_dir / "lie_layers.png"))
    if layered:
        n_rows = max(len(next(iter(shares.values())).probs) for shares in layered.values())
        height = 2.9 if n_rows <= 15 else 4.4  # room for the long rotated names of a transformer's rows
        fig, axes = plt.subplots(len(layered), 1, figsize=(max(9.0, 0.34 * n_rows), height * len(layered) + 0.6),
                                 squeeze=False, layout="constrained")
        for ax, (name, shares) in zip(axes[:, 0], layered.items()):
            width = 0.8 / len(shares)
            drawn: list[float] = []
            for i, g in enumerate(shares):
                parts = shares[g].probs
                layers = list(parts)
                x = np.arange(len(layers)) + (i - (len(shares) - 1) / 2) * width
                means, stds = [parts[k].mean for k in layers], [parts[k].std for k in layers]
                ax.bar(x, means, width, label=g, color=model_color(name), alpha=1.0 - 0.4 * i,
                       yerr=clipped_errors(means, stds, parts[layers[0]].n), capsize=2)
                drawn += means + [m + sd for m, sd in zip(means, stds)]
                ax.set_xticks(np.arange(len(layers)), [_row_label(k) for k in layers], rotation=30,
                              fontsize=8 if len(layers) <= 15 else 6.5, ha="right", rotation_mode="anchor")
            total = models[name].lee[translate[-1]].probs.mse.mean
            ax.set_title(f"{name}: end-to-end LEE {total:.3g} ({translate[-1]})", fontsize=9)
            ax.set_ylabel("contribution\n(mean ||·||², softmax)", fontsize=8)
            nonnegative_log_axis(ax, drawn)
            if len(shares) > 1:
                ax.legend(fontsize=7)
            ax.grid(axis="y", alpha=0.3)
        fig.suptitle(f"Which layers break translation equivariance, {dataset} ({over_seeds(n_seeds)}; per pixel)",
                     fontsize=10)
        without = [f"{n}: {_short(m.per_layer_unavailable or 'no per-layer split')}" for n, m in models.items()
                   if not m.layers]
        if without:  # said on the figure, not silently left out (save() wraps it to the canvas)
            fig.supxlabel("no per-layer split: " + "; ".join(without), fontsize=7, x=0.01, ha="left")
        written.append(save(fig, out_dir / "lie_layers.png"))
    written += _generators_figure(result, out_dir)

    saw = {n: m.sawtooth for n, m in models.items() if m.sawtooth is not None}
    if saw:
        cols = min(4, len(saw))  # many models: rows of 4 panels
        rows = -(-len(saw) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(max(3.6 * cols, 5.0), 3.0 * rows + 0.5), squeeze=False,
                                 sharey=True, layout="constrained")
        for ax, (name, s) in zip(axes.flat, saw.items()):
            for curve in s.probability:
                ax.plot(s.shifts, curve, color=model_color(name), alpha=0.8, lw=1)
            ax.set_title(name, fontsize=9)
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
        for i, ax in enumerate(axes.flat):
            if i >= len(saw):
                ax.set_visible(False)
            elif i + cols >= len(saw):  # the lowest panel of its column
                ax.set_xlabel("Fourier shift (pixels)")
        for ax in axes[:, 0]:
            ax.set_ylabel("p(clean predicted class)")
        fig.suptitle("Predicted-class probability of a few test inputs under sub-pixel shifts (first seed)",
                     fontsize=10)
        written.append(save(fig, out_dir / "lie_sawtooth.png"))

    gen = translate[-1]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4 + 0.1 * len(models)), layout="constrained")
    lees: list[float] = []
    for name, m in models.items():
        lee = m.lee[gen].probs.mse
        lees += [lee.mean, lee.mean + (lee.std if lee.n > 1 else 0.0)]
        for ax, value in zip(axes, (m.consistency, m.clean_accuracy)):
            ax.errorbar(value.mean, lee.mean, xerr=value.std if value.n > 1 else None,
                        yerr=clipped_errors([lee.mean], [lee.std], lee.n), fmt="o", ms=7, color=model_color(name),
                        label=name, capsize=3)
    axes[0].set_xlabel(f"consistency under {result.consistency_grid.mode} shifts")
    axes[1].set_xlabel("clean test accuracy")
    for ax in axes:
        ax.set_ylabel(f"LEE ({gen}, softmax, per pixel)")
        nonnegative_log_axis(ax, lees)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()  # one legend under both panels: no point covered
    fig.legend(handles, labels, loc="outside lower center", fontsize=8,
               ncol=legend_columns(len(labels), 9.5, max(len(label) for label in labels)))
    fig.suptitle(f"Local equivariance error against shift consistency and accuracy, {dataset} "
                 f"({over_seeds(n_seeds)})", fontsize=10)
    written.append(save(fig, out_dir / "lie_vs_consistency.png"))
    return written


def _row_label(name: str, limit: int = 40) -> str:
    """A row's name short enough for a tick: where it sits, and of what it computes the last operation
    (``blocks.0.attn (SelfAttention): …softmax``)."""
    if len(name) <= limit or ": " not in name:
        return _short(name, limit)
    where, what = name.split(": ", 1)
    last = what.split("+")[-1]
    return _short(f"{where}: {'…' if last != what else ''}{last}", limit)


def _short(reason: str, limit: int = 90) -> str:
    return reason if len(reason) <= limit else reason[:limit - 1].rstrip() + "…"


def _generators_figure(result: Result, out_dir: Path) -> list[Path]:
    """``lie_generators.png`` (2D data: more than one generator): each model's LEE per generator, a dot with its
    ± std over seeds on a log axis; rotation is per radian and scaling per log-unit, so only the dots of one
    generator compare across models."""
    gens = result.generators
    if len(gens) < 2 or not result.models:
        return []
    names = list(result.models)
    fig, axes = plt.subplots(1, len(gens), figsize=(max(3.4, 1.2 + 0.3 * len(names)) * len(gens), 3.9),
                             squeeze=False, layout="constrained")
    for ax, gen in zip(axes[0], gens):
        values = [result.models[n].lee[gen].probs.mse for n in names]
        dot_chart(ax, names, values)  # a dot per model on a log axis: bars there would start at an arbitrary floor
        ax.set_title(gen, fontsize=9)
    axes[0, 0].set_ylabel("LEE (softmax, mean ||·||²)")
    dataset = result.dataset.name if result.dataset else "?"
    fig.suptitle(f"Local equivariance error per transformation, {dataset} ({over_seeds(result.n_seeds)}; "
                 "translations per pixel, rotation per radian, scaling per log-unit)", fontsize=9)
    return [save(fig, Path(out_dir) / "lie_generators.png")]
