"""invariance_benchmark: the known techniques for shift invariance, ranked on the same data by the same measures.

Every model in ``models`` (by default plain LeNet, LeNet with blur pooling, LeNet with adaptive polyphase
sampling, the global max and global mean pooling nets, ``cnn_aps`` and the alias-free net) is trained with the
run's recipe; the models in ``invariance_benchmark.augmented`` are also trained with integer (``roll``) and
sub-pixel (``fourier``) shift augmentation. Each is measured, per seed, by:

- clean accuracy (the whole test set);
- integer consistency under the ``shift.*`` grid (circular rolls; Zhang 2019's consistency, computed exactly);
- fractional consistency on a 1/m grid of Fourier shifts within ``fractional_max`` for every m in
  ``fractional_steps`` (Michaeli et al. 2023's measure);
- worst-case robustness R(r): the share correct under every shift within r, on the integer grid (r = 1 and
  ``shift.max``) and on the half-sample grid (r = 0.5 and ``fractional_max``);
- the softmax Lie derivative along every translation (Gruver et al. 2023's LEE, mean squared norm);
- parameters and training seconds per epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from pydantic import Field

from equivar.config import RunConfig
from equivar.data import load_dataset
from equivar.evaluate import ShiftEvaluator
from equivar.experiment import base_fields, check_before_data, obtain, record_fields, spec_variants, unmeasured
from equivar.lie import generators, lie_derivative
from equivar.metrics import accuracy, consistency, probability_change, worst_case_robustness
from equivar.plot import clipped_errors, dot_chart, model_color, over_seeds, save, share_axis
from equivar.results import ExperimentResult, Headline, MeanStd, ModelRecord, seeds_phrase
from equivar.schema import Float, PositiveInt
from equivar.schema import Options as OptionsBase
from equivar.transforms import CROP_CANVASES, shift_grid

log = logging.getLogger(__name__)


class Options(OptionsBase):
    """``invariance_benchmark.*`` (the integer grid is ``shift.*``)."""

    fractional_steps: list[PositiveInt] = Field([2, 4], min_length=1, description="m: Fourier shifts on a 1/m "
                                                "grid, one fractional consistency per m")
    fractional_max: Float = Field(2.0, gt=0, description="fractional shifts within -max..max on every axis")
    augmented: list[str] = Field(["lenet", "vit"], description="models also trained with integer and with sub-pixel "
                                 "shift augmentation (as NAME_aug_roll, NAME_aug_fourier); zoo models the run does "
                                 "not train are left out")
    augment_shift: PositiveInt | None = Field(None, description="augmentation range (null: shift.max)")
    n_examples: PositiveInt = Field(256, description="test inputs the Lie derivative is averaged over")
    batch: PositiveInt = Field(64, description="inputs per jitted Lie-derivative call (memory)")


class Technique(ModelRecord):
    """One model (or an augmented training of one) under every measure, over its healthy seeds."""

    headline = (Headline("clean_accuracy"), Headline("integer_consistency"),
                Headline("fractional_consistency_2", "fractional consistency (m = 2)"),
                Headline("lee", "softmax LEE", share=False, log=True))

    model: str  # the zoo entry
    augmentation: str  # none, roll or fourier
    clean_accuracy: MeanStd
    integer_consistency: MeanStd
    fractional_consistency: dict[str, MeanStd]  # m -> consistency on the 1/m grid
    robustness_integer: dict[str, MeanStd]  # r -> R(r) on the integer grid
    robustness_half: dict[str, MeanStd]  # r -> R(r) on the half-sample grid
    lee: MeanStd  # softmax LEE, summed over the translations
    # mean |p_c(T_s x) - p_c(x)| (c: the class predicted unshifted): "integer" grid, and m -> the 1/m grid
    probability_change: dict[str, MeanStd] = {}
    crop_consistency: dict[str, MeanStd] = {}  # canvas (zero, reflect) -> consistency under crop shifts
    seconds_per_epoch: float | None = None  # training steps once compiled (the median epoch after the first)

    @property
    def fractional_consistency_2(self) -> MeanStd | None:
        return self.fractional_consistency.get("2")


class Result(ExperimentResult[Technique]):
    integer_grid: dict[str, float | str]  # max, step, mode
    fractional_max: float
    fractional_steps: list[int]
    n_examples: int


def check(config: RunConfig) -> None:
    opts: Options = config.options
    config.shift.one_mode("invariance_benchmark", ("roll",))
    missing = [m for m in opts.augmented if m not in config.zoo]
    if missing:  # a zoo model the run does not train is left out (models=[lenet,cnn_gap] augments lenet only)
        raise_config(f"invariance_benchmark.augmented={opts.augmented}: {', '.join(missing)} is not a zoo model; "
                     f"zoo models: {', '.join(sorted(config.zoo))}")
    known = config.dataset.shape()
    if known is not None:
        config.shift.check_fits(known[0][:-1])


def raise_config(message: str) -> None:
    from equivar.errors import ConfigError

    raise ConfigError(message)


def _softmax_lee(module, x: jax.Array, gens: tuple[str, ...], batch: int) -> float:
    """Mean over inputs of the squared norm of the softmax's Lie derivative, summed over ``gens``."""
    total = 0.0
    for gen in gens:
        def per_batch(v, g=gen):
            logits = module(v)
            d = lie_derivative(module, v, g)
            dp = jax.jvp(jax.nn.softmax, (logits,), (d,))[1]
            return jnp.sum(jnp.square(dp), axis=-1)

        fn = jax.jit(per_batch)
        values = jnp.concatenate([fn(x[i:i + batch]) for i in range(0, x.shape[0], batch)])
        total += float(values.mean())
    return total


def grid_union(grids: dict[Any, np.ndarray]) -> tuple[np.ndarray, dict[Any, np.ndarray]]:
    """The union of several offset grids, and per grid the row of the union holding each of its offsets (in
    the grid's own order), so predictions over the union serve every grid."""
    union = np.unique(np.concatenate(list(grids.values())), axis=0)
    index = {tuple(o): i for i, o in enumerate(union.tolist())}
    return union, {key: np.array([index[tuple(o)] for o in grid.tolist()]) for key, grid in grids.items()}


def run(config: RunConfig, out_dir: Path) -> Result:
    opts: Options = config.options
    check(config)
    check_before_data(config, spec_variants(config.models))
    data = load_dataset(config.dataset)
    config.shift.check_fits(data.input_shape[:-1])
    if opts.fractional_max >= min(data.input_shape[:-1]):
        raise_config(f"invariance_benchmark.fractional_max={opts.fractional_max} must be smaller than the input's "
                     f"shortest side {min(data.input_shape[:-1])}")
    plan = config.plan()
    integer = config.shift.offsets(data.rank)
    half = shift_grid(opts.fractional_max, data.rank, 0.5)
    fractional = {m: shift_grid(opts.fractional_max, data.rank, 1.0 / m) for m in opts.fractional_steps}
    fourier_union, fourier_rows = grid_union({**fractional, "half": half})
    x_grid, y_grid = config.eval.subset(data.x_test, data.y_test)
    x_lee = jnp.asarray(data.x_test[:opts.n_examples])
    gens = tuple(g for g in generators(data.rank) if g.startswith("translate_"))
    zero = np.zeros((1, data.rank), np.int32)
    reach = int(opts.augment_shift or config.shift.max)

    runs: list[tuple[str, str, str, RunConfig]] = []
    for spec in config.models:
        runs.append((spec.name, spec.name, "none", config))
        if spec.name in opts.augmented:
            for mode in ("roll", "fourier"):
                train = config.train.model_copy(update={"augment_shift": reach, "augment_mode": mode})
                runs.append((f"{spec.name}_aug_{mode}", spec.name, mode, dataclasses.replace(config, train=train)))

    records: dict[str, Technique] = {}
    lost: dict[str, ModelRecord] = {}
    measured = []
    specs = {s.name: s for s in config.models}
    for name, zoo_name, augmentation, run_config in runs:
        spec = specs[zoo_name]
        started = time.perf_counter()
        model = obtain(run_config, data, out_dir, name, spec.target, spec.options, plan, spec.where)
        measured.append(model)
        if (diverged := unmeasured(model)) is not None:
            lost[name] = diverged
            continue
        kept = model.variables()
        roll = ShiftEvaluator(model.graphdef, "roll", plan, probabilities=True)
        fourier = ShiftEvaluator(model.graphdef, "fourier", plan, probabilities=True)
        clean = accuracy(roll.predict(kept, data.x_test, zero)[:, 0], data.y_test)
        reference = roll.predict_with_probabilities(kept, x_grid, zero)[1][:, 0]  # (seeds, N, classes)
        int_preds, int_probs = roll.predict_with_probabilities(kept, x_grid, integer)
        int_cons = [consistency(p, data.n_classes) for p in int_preds]
        int_radii = sorted({1.0, float(config.shift.max)})
        int_robust = np.array([worst_case_robustness(p, integer, y_grid, int_radii) for p in int_preds])
        change = {"integer": MeanStd.of([probability_change(p, r) for p, r in zip(int_probs, reference)])}
        crop = {canvas: MeanStd.of([consistency(p, data.n_classes) for p in
                                    ShiftEvaluator(model.graphdef, crop_mode, plan).predict(kept, x_grid, integer)])
                for canvas, crop_mode in CROP_CANVASES.items()}
        # Every Fourier grid (each m, and the half-pixel grid of R_half) is a subset of their union: one call
        # per model over the union, each grid's rows picked from it, instead of one call per grid.
        union_preds, union_probs = fourier.predict_with_probabilities(kept, x_grid, fourier_union)
        frac = {}
        for m in fractional:
            rows = fourier_rows[m]
            frac[str(m)] = MeanStd.of([consistency(p[rows], data.n_classes) for p in union_preds])
            change[str(m)] = MeanStd.of([probability_change(p[rows], r) for p, r in zip(union_probs, reference)])
        half_preds = union_preds[:, fourier_rows["half"]]
        half_radii = sorted({0.5, float(opts.fractional_max)})
        half_robust = np.array([worst_case_robustness(p, half, y_grid, half_radii) for p in half_preds])
        lees = [_softmax_lee(m, x_lee, gens, opts.batch) for m in model.modules()]
        train_record = model.train_record or {}
        epochs = len(train_record.get("loss", [[]])[0]) if train_record else 0
        records[name] = Technique(
            **record_fields(model), model=zoo_name, augmentation=augmentation,
            clean_accuracy=MeanStd.of(clean), integer_consistency=MeanStd.of(int_cons),
            fractional_consistency=frac,
            robustness_integer={f"{r:g}": MeanStd.of(int_robust[:, i]) for i, r in enumerate(int_radii)},
            robustness_half={f"{r:g}": MeanStd.of(half_robust[:, i]) for i, r in enumerate(half_radii)},
            lee=MeanStd.of(lees), probability_change=change, crop_consistency=crop,
            seconds_per_epoch=train_record.get("steady_epoch_seconds") or (
                train_record["seconds"] / epochs if epochs else None))
        log.info("%s: clean %.4f, integer consistency %.4f, fractional %s, LEE %.3g (%.0f s)", name, clean.mean(),
                 np.mean(int_cons), {m: round(v.mean, 4) for m, v in frac.items()}, np.mean(lees),
                 time.perf_counter() - started)
    return Result(**base_fields(config, data, measured),
                  integer_grid={"max": config.shift.max, "step": config.shift.step, "mode": "roll"},
                  fractional_max=opts.fractional_max, fractional_steps=list(opts.fractional_steps),
                  n_examples=int(x_lee.shape[0]), models=records, unmeasured=lost)


def summary(result: Result) -> str:
    dataset = result.dataset.name if result.dataset else "?"
    ms = result.fractional_steps
    first = next(iter(result.models.values()), None)
    int_r = list(first.robustness_integer) if first else []
    half_r = list(first.robustness_half) if first else []
    lines = [f"invariance_benchmark on {dataset} ({seeds_phrase(result.n_seeds)}; integer grid ±"
             f"{result.integer_grid['max']:g} rolls, fractional grids ±{result.fractional_max:g} by 1/m Fourier "
             f"shifts; LEE: softmax, per pixel, summed over translations, {result.n_examples} inputs)", "",
             "| technique | params | s/epoch | clean acc | integer consistency | "
             + " | ".join(f"fractional consistency (m = {m})" for m in ms) + " | "
             + " | ".join(f"R_int({r})" for r in int_r) + " | " + " | ".join(f"R_half({r})" for r in half_r)
             + " | LEE |",
             "|---|---:|---:|---:|---:|" + "---:|" * (len(ms) + len(int_r) + len(half_r) + 1)]
    for name, t in result.models.items():
        seconds = f"{t.seconds_per_epoch:.2f}" if t.seconds_per_epoch is not None else "—"
        cells = [t.clean_accuracy.text(), t.integer_consistency.text(),
                 *(t.fractional_consistency[str(m)].text() for m in ms),
                 *(t.robustness_integer[r].text() for r in int_r), *(t.robustness_half[r].text() for r in half_r),
                 _scientific(t.lee)]
        lines.append(f"| {name}{t.seeds_note()} | {t.n_params} | {seconds} | " + " | ".join(cells) + " |")
    lines += result.unmeasured_rows(6 + len(ms) + len(int_r) + len(half_r))
    changes = list(dict.fromkeys(k for t in result.models.values() for k in t.probability_change))
    canvases = list(dict.fromkeys(k for t in result.models.values() for k in t.crop_consistency))
    if changes or canvases:
        lines += ["", "Mean absolute change of the predicted class's probability over each grid, and consistency "
                  "under crop shifts (the integer grid, inside a larger zero or reflect canvas: no wrap-around).",
                  "", "| technique |" + "".join(f" probability change ({_grid_name(k)}) |" for k in changes)
                  + "".join(f" crop consistency ({c}) |" for c in canvases),
                  "|---|" + "---:|" * (len(changes) + len(canvases))]
        for name, t in result.models.items():
            cells = [_scientific(t.probability_change[k]) if k in t.probability_change else "—" for k in changes]
            cells += [t.crop_consistency[c].text() if c in t.crop_consistency else "—" for c in canvases]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _grid_name(key: str) -> str:
    return "integer" if key == "integer" else f"m = {key}"


def _scientific(value: MeanStd) -> str:
    """An LEE spans many decades (1e-16 for the alias-free net, 1 for an MLP): three significant digits."""
    return f"{value.mean:.3g}" + (f" ± {value.std:.2g}" if value.n > 1 else "")


def plot(result: Result, out_dir: Path) -> list[Path]:
    """``invariance_benchmark.png``: clean accuracy, integer and fractional consistency (shares, 0 to 1: bars) and
    the softmax LEE (a dot per technique on a log axis) per technique, mean ± std over seeds."""
    if not result.models:
        return []
    names = list(result.models)
    panels = [("clean accuracy", lambda t: t.clean_accuracy, True),
              ("integer consistency", lambda t: t.integer_consistency, True),
              *[(f"fractional consistency (m = {m})", lambda t, m=m: t.fractional_consistency[str(m)], True)
                for m in result.fractional_steps],
              ("softmax LEE (per pixel)", lambda t: t.lee, False)]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(3.3, 1.0 + 0.22 * len(names)) * len(panels), 4.4),
                             squeeze=False, layout="constrained")
    for ax, (title, get, share) in zip(axes[0], panels):
        values = [get(result.models[n]) for n in names]
        means, stds = [v.mean for v in values], [v.std for v in values]
        if share:  # a share from 0 to 1: bars
            ax.bar(np.arange(len(names)), means, color=[model_color(n) for n in names],
                   yerr=clipped_errors(means, stds, values[0].n), capsize=2)
            ax.set_xticks(np.arange(len(names)), names, fontsize=7)  # save() rotates them where crowded
            share_axis(ax, "")
            ax.grid(axis="y", alpha=0.3)
        else:  # the LEE spans decades: dots on a log axis (a bar there would start at an arbitrary floor)
            dot_chart(ax, names, values, fontsize=7)
        ax.set_title(title, fontsize=9)
    dataset = result.dataset.name if result.dataset else "?"
    fig.suptitle(f"Shift-invariance techniques on {dataset} ({over_seeds(result.n_seeds)})", fontsize=10)
    return [save(fig, Path(out_dir) / "invariance_benchmark.png")]
