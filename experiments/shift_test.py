"""shift_test: how much accuracy each model loses when test inputs are translated.

Trains every model in ``config.models`` on unshifted training data (``n_seeds`` seeds each), then predicts the
test set under every shift of the ``shift.*`` grid (1D: -max..max; 2D: the full (dy, dx) grid), and reports per
model the clean accuracy, the accuracy per shift and the label-free shift consistency, each as mean and std
over seeds.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from equivar.config import RunConfig
from equivar.data import load_dataset
from equivar.evaluate import ShiftEvaluator
from equivar.experiment import (
    base_fields,
    check_batch,
    check_before_data,
    obtain,
    record_fields,
    spec_variants,
    unmeasured,
)
from equivar.metrics import (
    accuracy,
    consistency,
    consistency_by_correctness,
    probability_change,
    worst_case_robustness,
)
from equivar.plot import (
    AXIS_NAMES,
    band,
    draw_chance,
    integer_ticks,
    legend_below,
    model_color,
    over_seeds,
    save,
    share_axis,
)
from equivar.results import ExperimentResult, Headline, MeanStd, MeanStdSeries, ModelRecord, Record, seeds_phrase
from equivar.transforms import CROP_CANVASES

log = logging.getLogger(__name__)


class PerSeed(Record):
    """The headline numbers of each healthy seed, in ``seeds`` order."""

    seeds: list[int]
    clean_accuracy: list[float]
    grid_mean_accuracy: list[float]
    consistency: list[float]


class ModelResult(ModelRecord):
    """One model under the shift grid, over its healthy seeds."""

    headline = (Headline("clean_accuracy"), Headline("grid_mean_accuracy"), Headline("worst_shift_accuracy"),
                Headline("consistency"))

    clean_accuracy: MeanStd  # on the whole test set, unshifted
    shift_accuracy: MeanStdSeries  # per shift of the grid, in ``shifts`` order
    grid_mean_accuracy: MeanStd  # each seed's accuracy averaged over the grid
    worst_shift_accuracy: MeanStd  # each seed's accuracy at its worst shift
    consistency: MeanStd  # share of inputs predicted alike under two random shifts of the grid
    # the same among the grid's inputs classified correctly unshifted, and among the others
    consistency_correct: MeanStd | None = None
    consistency_wrong: MeanStd | None = None
    robustness: MeanStdSeries | None = None  # R(r) at ``robustness_radii``: correct under every shift within r
    # mean |p_c(T_s x) - p_c(x)| over the grid, c the class predicted unshifted (metrics.probability_change)
    probability_change: MeanStd | None = None
    # consistency under crop shifts (the input moved inside a larger zero or reflect canvas and cropped back:
    # no wrap-around), on the grid's integer shifts, per canvas
    crop_consistency: dict[str, MeanStd] = {}
    per_seed: PerSeed
    eval_seconds: float


class Result(ExperimentResult[ModelResult]):
    shift_mode: str
    shifts: list[list[float]]  # the grid: (n_shifts, rank) offsets
    n_eval_shift: int  # test examples under the grid
    robustness_radii: list[float] = []  # the radii r of every model's R(r): each distinct max |s| of the grid
    execution: dict[str, object]  # how the work was laid out (equivar.execution.ExecutionPlan)


def check(config: RunConfig) -> None:
    """One shift mode, and a grid that fits the input (when its shape is known without reading data)."""
    config.shift.one_mode("shift_test")
    known = config.dataset.shape()
    if known is not None:
        config.shift.check_fits(known[0][:-1])


def run(config: RunConfig, out_dir: Path) -> Result:
    mode = config.shift.one_mode("shift_test")
    check_before_data(config, spec_variants(config.models))
    data = load_dataset(config.dataset)
    config.shift.check_fits(data.input_shape[:-1])
    if not config.load_from:
        check_batch(config.train.batch_size, len(data.y_train))  # before evaluating anything
    offsets = config.shift.offsets(data.rank)
    zero = np.zeros((1, data.rank), dtype=np.int32)
    plan = config.plan()
    x_grid, y_grid = config.eval.subset(data.x_test, data.y_test)
    log.info("data %s: train %s, test %s; %d shifts (%s), grid on %d test examples; plan %s",
             data.name, data.x_train.shape, data.x_test.shape, len(offsets), mode, len(y_grid), plan.describe())

    radii = sorted({float(r) for r in np.abs(offsets).max(axis=1)})
    crop_offsets = offsets[(offsets == np.round(offsets)).all(axis=1)].astype(np.int32)
    records, lost, measured = {}, {}, []
    for spec in config.models:
        model = obtain(config, data, out_dir, spec.name, spec.target, spec.options, plan)
        measured.append(model)
        if (diverged := unmeasured(model)) is not None:
            lost[spec.name] = diverged
            continue
        kept = model.variables()  # diverged seeds are left out
        start = time.perf_counter()
        evaluator = ShiftEvaluator(model.graphdef, mode, plan, probabilities=True)
        clean_preds = evaluator.predict(kept, data.x_test, zero)[:, 0]
        grid_preds, grid_probs = evaluator.predict_with_probabilities(kept, x_grid, offsets)  # (seeds, shifts, N)
        reference, reference_probs = (a[:, 0] for a in evaluator.predict_with_probabilities(kept, x_grid, zero))
        crop = {canvas: [consistency(p, data.n_classes) for p in
                         ShiftEvaluator(model.graphdef, crop_mode, plan).predict(kept, x_grid, crop_offsets)]
                for canvas, crop_mode in CROP_CANVASES.items()} if len(crop_offsets) else {}
        eval_seconds = time.perf_counter() - start
        clean = accuracy(clean_preds, data.y_test)
        per_shift = accuracy(grid_preds, y_grid)
        cons = np.array([consistency(p, data.n_classes) for p in grid_preds])
        split = np.array([consistency_by_correctness(p, r, y_grid, data.n_classes)
                          for p, r in zip(grid_preds, reference)])  # (seeds, 2)
        robust = np.array([worst_case_robustness(p, offsets, y_grid, radii) for p in grid_preds])
        records[spec.name] = ModelResult(
            **record_fields(model),
            clean_accuracy=MeanStd.of(clean),
            shift_accuracy=MeanStdSeries.of(per_shift),
            grid_mean_accuracy=MeanStd.of(per_shift.mean(axis=1)),
            worst_shift_accuracy=MeanStd.of(per_shift.min(axis=1)),
            consistency=MeanStd.of(cons),
            consistency_correct=_mean_std_finite(split[:, 0]),
            consistency_wrong=_mean_std_finite(split[:, 1]),
            robustness=MeanStdSeries.of(robust),
            probability_change=MeanStd.of([probability_change(p, r) for p, r in zip(grid_probs, reference_probs)]),
            crop_consistency={canvas: MeanStd.of(values) for canvas, values in crop.items()},
            per_seed=PerSeed(seeds=model.healthy_seeds(), clean_accuracy=clean.tolist(),
                             grid_mean_accuracy=per_shift.mean(1).tolist(), consistency=cons.tolist()),
            eval_seconds=eval_seconds)
        log.info("%s: clean %.4f, grid mean %.4f, consistency %.4f (eval %.1fs)", spec.name,
                 clean.mean(), per_shift.mean(), cons.mean(), eval_seconds)

    return Result(**base_fields(config, data, measured), shift_mode=mode, shifts=offsets.tolist(),
                  n_eval_shift=int(len(y_grid)), robustness_radii=radii, models=records, unmeasured=lost,
                  execution=plan.describe())


def _mean_std_finite(values: np.ndarray) -> MeanStd | None:
    """Over the seeds where the number exists (a seed right or wrong on every input has no split)."""
    finite = values[np.isfinite(values)]
    return MeanStd.of(finite) if len(finite) else None


def summary(result: Result) -> str:
    """A markdown table of the headline numbers, mean ± std over seeds."""
    dataset = result.dataset.name if result.dataset else "?"
    lines = [f"shift_test on {dataset} ({seeds_phrase(result.n_seeds)}, {len(result.shifts)} shifts, mode "
             f"{result.shift_mode})", "",
             "| model | params | clean acc | grid-mean acc | worst-shift acc | consistency |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, m in result.models.items():
        lines.append(f"| {name}{m.seeds_note()} | {m.n_params} | {m.clean_accuracy.text()} | "
                     f"{m.grid_mean_accuracy.text()} | {m.worst_shift_accuracy.text()} | {m.consistency.text()} |")
    lines += result.unmeasured_rows(5, lambda r: [str(r.n_params)])
    robust = {name: m for name, m in result.models.items() if m.robustness is not None}
    if robust and result.robustness_radii:
        radii = result.robustness_radii
        picks = sorted({1 if len(radii) > 1 else 0, len(radii) - 1})  # the smallest shift, and the whole grid
        canvases = list(dict.fromkeys(c for m in robust.values() for c in m.crop_consistency))
        lines += ["", "Consistency among the inputs classified correctly unshifted and among the others; the "
                  "worst-case robustness R(r): the share correct under every shift with max |s| <= r; the mean "
                  "absolute change of the predicted class's probability over the grid; and consistency under "
                  "crop shifts (moved inside a larger zero or reflect canvas, no wrap-around).", "",
                  "| model | consistency (correct) | consistency (wrong) | "
                  + " | ".join(f"R({radii[i]:g})" for i in picks) + " | probability change |"
                  + "".join(f" crop consistency ({c}) |" for c in canvases),
                  "|---|---:|---:|" + "---:|" * (len(picks) + 1 + len(canvases))]
        for name, m in robust.items():
            split = [v.text() if v is not None else "—" for v in (m.consistency_correct, m.consistency_wrong)]
            assert m.robustness is not None
            values = " | ".join(m.robustness.at(i).text() for i in picks)
            change = m.probability_change.text() if m.probability_change is not None else "—"
            crops = "".join(f" {m.crop_consistency[c].text() if c in m.crop_consistency else '—'} |"
                            for c in canvases)
            lines.append(f"| {name} | {split[0]} | {split[1]} | {values} | {change} |{crops}")
    return "\n".join(lines)


def _axis_slice(shifts: np.ndarray, axis: int) -> np.ndarray:
    """Indices of the grid points where every other axis is unshifted, sorted along ``axis``."""
    others = [a for a in range(shifts.shape[1]) if a != axis]
    rows = np.where((shifts[:, others] == 0).all(axis=1))[0] if others else np.arange(len(shifts))
    return rows[np.argsort(shifts[rows, axis])]


def plot(result: Result, out_dir: Path) -> list[Path]:
    """Accuracy vs shift per axis (with chance), the (dy, dx) heatmap for 2D data, and consistency bars."""
    out_dir = Path(out_dir)
    shifts = np.asarray(result.shifts)
    rank = shifts.shape[1]
    # Models whose every seed diverged have nothing to draw; the others say how many seeds they lost.
    models = {name + m.seeds_note(): (name, m) for name, m in result.models.items()}
    if not models:
        return []
    mode = result.shift_mode
    dataset = result.dataset.name if result.dataset else "?"
    written = []

    fig, axes = plt.subplots(1, rank, figsize=(6 * rank, 4.2 + 0.12 * len(models)), squeeze=False,
                             layout="constrained")
    for axis in range(rank):
        ax = axes[0, axis]
        rows = _axis_slice(shifts, axis)
        for label, (name, m) in models.items():
            acc = m.shift_accuracy
            band(ax, shifts[rows, axis], np.asarray(acc.mean)[rows], np.asarray(acc.std)[rows], acc.n,
                 model_color(name), label, marker="o", ms=3)
        draw_chance(ax, result.chance)
        ax.set_xlabel(f"{AXIS_NAMES[rank][axis]} shift (pixels, mode={mode})" if rank > 1 else
                      f"shift (positions, mode={mode})")
        share_axis(ax, "test accuracy")
        ax.grid(alpha=0.3)
        if rank > 1:
            ax.set_title(f"shift along {AXIS_NAMES[rank][axis]}, other axis 0")
    legend_below(axes[0, 0])  # below the axes: however many models, no curve is covered
    fig.suptitle(f"Accuracy vs shift on {dataset} ({over_seeds(result.n_seeds)})")
    written.append(save(fig, out_dir / "accuracy_vs_shift.png"))

    if rank == 2:
        side = int(round(np.sqrt(len(shifts))))
        lo = min(float(np.min(m.shift_accuracy.mean)) for _, m in models.values())
        cols = min(4, len(models))  # many models: rows of 4 maps
        n_rows = -(-len(models) // cols)
        fig, axes = plt.subplots(n_rows, cols, figsize=(4.2 * cols + 1.0, 3.9 * n_rows + 0.6), squeeze=False,
                                 layout="constrained")
        for ax in axes.flat[len(models):]:
            ax.set_visible(False)
        image = None
        for i, (ax, (label, (_, m))) in enumerate(zip(axes.flat, models.items())):
            grid = np.asarray(m.shift_accuracy.mean).reshape(side, side)
            values = np.unique(shifts[:, 1])
            half = (values[1] - values[0]) / 2 if len(values) > 1 else 0.5  # half a grid step (sub-pixel too)
            extent = (shifts[:, 1].min() - half, shifts[:, 1].max() + half,
                      shifts[:, 0].max() + half, shifts[:, 0].min() - half)
            image = ax.imshow(grid, vmin=lo, vmax=1.0, cmap="viridis", extent=extent)
            ax.set_title(f"{label}: mean {grid.mean():.3f}, min {grid.min():.3f}")
            ax.set_xlabel("dx (columns)")
            if i % cols == 0:
                ax.set_ylabel("dy (rows)")
        assert image is not None
        fig.colorbar(image, ax=list(axes.flat[:len(models)]), label="test accuracy", shrink=0.85)
        fig.suptitle(f"Accuracy over (dy, dx) shifts on {dataset}, mode={mode}, "
                     f"{over_seeds(result.n_seeds, 'mean')}")
        written.append(save(fig, out_dir / "accuracy_heatmap.png"))

    # At least 4.5 inches: the title's two lines must fit above a single bar too.
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 + 1.1 * len(models)), 4), layout="constrained")
    labels = list(models)
    cons = [models[k][1].consistency for k in labels]
    means = [c.mean for c in cons]
    # No error bar where a model has one seed left: a std of 0 would claim a precision it does not have.
    stds = [np.nan if c.n == 1 else c.std for c in cons]
    bars = ax.bar(labels, means, yerr=stds, capsize=5, color=[model_color(models[k][0]) for k in labels])
    for bar, mean, std in zip(bars, means, stds):  # above the error bar
        top = mean + (0.0 if np.isnan(std) else std)
        ax.text(bar.get_x() + bar.get_width() / 2, min(top, 1.0) + 0.02, f"{mean:.3f}", ha="center",
                fontsize=9 if len(models) < 8 else 7)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("consistency (same class under two random shifts)")
    ax.set_title(f"Shift consistency, {dataset}, mode={mode}\n({over_seeds(result.n_seeds)})")
    ax.grid(axis="y", alpha=0.3)
    written.append(save(fig, out_dir / "consistency.png"))
    written += _robustness_figure(result, out_dir)
    return written


def _robustness_figure(result: Result, out_dir: Path) -> list[Path]:
    """``robustness.png``: R(r) against the radius r, per model, mean ± std over seeds (with chance)."""
    robust = {name: m.robustness for name, m in result.models.items() if m.robustness is not None}
    radii = result.robustness_radii
    if not robust or len(radii) < 2:
        return []
    fig, ax = plt.subplots(figsize=(6.5, 4 + 0.12 * len(robust)), layout="constrained")
    for name, series in robust.items():
        band(ax, radii, series.mean, series.std, series.n, model_color(name), name, marker="o", ms=3,
             clip_on=False)  # the end markers sit on the frame, whole
    if result.dataset is not None:
        draw_chance(ax, 1.0 / result.dataset.n_classes)
    share_axis(ax, "R(r): correct under every shift within r")
    ax.set_xlabel(f"radius r (the largest |shift| on any axis; {result.shift_mode} shifts)")
    ax.set_xlim(min(radii), max(radii))  # the measured radii, no axis past them
    if all(float(r).is_integer() for r in radii):
        integer_ticks(ax.xaxis, min(radii), max(radii))
    ax.grid(alpha=0.3)
    legend_below(ax)
    dataset = result.dataset.name if result.dataset else "?"
    ax.set_title(f"Worst-case shift robustness, {dataset} ({over_seeds(result.n_seeds)})", fontsize=10)
    return [save(fig, Path(out_dir) / "robustness.png")]

