"""unseen_positions: does a model recognise a pattern at a position it never saw in training?

After Biscione & Bowers, "Convolutional neural networks are not invariant to translation, but they can learn to
be" (JMLR 2021). Every dataset example (an MNIST-1D sequence, an MNIST digit) is a pattern placed on a canvas
``margin`` larger along every axis, filled with ``background``; its position is the offset of its first
(top-left) sample, ``0..margin`` per axis.

- **Training region.** For every size k in ``regions``, each model is trained on patterns placed at positions
  drawn uniformly from ``region_start .. region_start + k - 1`` on every axis (one placement per training
  example, drawn once from ``seed``: every model and seed sees the same data), then tested with every test
  pattern at every position of the grid ``0..margin`` by ``position_step``. Accuracy by position is a curve
  (1D) or a map (2D); seen and unseen accuracy average it inside and outside the training region.
- **Transfer.** The classes are split in two halves. A model is first trained on the first half at positions
  drawn from the whole canvas, then fine-tuned (every weight, a fresh optimizer) on the second half inside the
  region of size ``transfer_region`` only; the same model trained on the second half in that region from
  scratch is the control. Both are tested on the second half's test patterns at every position: does the
  invariance learnt on other classes transfer to new ones?

A test pattern at position p is the canvas holding it at position 0, rolled by p: exact placement, because the
pattern never wraps (every position keeps it inside the canvas).
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle
from pydantic import Field

from equivar.checkpoints import TrainedModel
from equivar.config import RunConfig
from equivar.data import Dataset, load_dataset
from equivar.errors import ConfigError
from equivar.evaluate import ShiftEvaluator
from equivar.experiment import base_fields, obtain, record_fields, unmeasured
from equivar.metrics import accuracy
from equivar.models import check_model
from equivar.plot import draw_chance, error_bars, model_color, model_text_color, over_seeds, save, share_axis
from equivar.results import ExperimentResult, Headline, MeanStd, MeanStdSeries, ModelRecord, seeds_phrase
from equivar.schema import Float, NonNegativeInt, PositiveInt
from equivar.schema import Options as OptionsBase

log = logging.getLogger(__name__)


class Options(OptionsBase):
    """``unseen_positions.*``."""

    margin: PositiveInt | None = Field(None, description="the canvas is this much larger than the pattern along "
                                                         "every axis (null: the pattern's shortest side)")
    background: Float = Field(0.0, description="canvas value around the pattern")
    regions: list[PositiveInt] = Field([1, 5, 15], min_length=1, description="training region sizes: positions "
                                       "per axis the training patterns are drawn from; each trains every model")
    region_start: NonNegativeInt = Field(0, description="first position of every training region, on every axis")
    # 2D tests (margin + 1)**2 positions: every 4th keeps MNIST's 29x29 to 8x8 (a map, at a 13th of the cost)
    position_step: PositiveInt | None = Field(None, description="test positions 0..margin by this step on every "
                                                                "axis (null: 1 in 1D, 4 in 2D)")
    transfer: bool = Field(True, description="also pretrain on half the classes everywhere, then fine-tune on "
                                             "the other half in one region, against the same from scratch")
    transfer_region: PositiveInt | None = Field(None, description="the fine-tuning region's size (null: the "
                                                                  "smallest of regions)")
    n_train: PositiveInt = Field(10000, description="training patterns: the first N of the training set")
    n_test: PositiveInt = Field(500, description="test patterns: the first N of the test set, each tested at "
                                                 "every position")


class PositionRecord(ModelRecord):
    """One model trained one way, tested at every position of the grid, over its healthy seeds."""

    headline = (Headline("seen_accuracy", "accuracy at seen positions"),
                Headline("unseen_accuracy", "accuracy at unseen positions"))

    model: str  # the zoo entry
    stage: str  # region (every class in the region), pretrain (first classes everywhere), scratch or transfer
    region: int | None  # the training region's size per axis; None when trained everywhere
    classes: list[int]  # the classes trained and tested
    accuracy_by_position: MeanStdSeries  # in ``positions`` order
    seen_accuracy: MeanStd | None  # mean over the grid positions inside the training region (None: none there)
    unseen_accuracy: MeanStd | None  # mean over the others (None: trained everywhere)
    farthest_accuracy: MeanStd | None  # at the grid position farthest from the region


class Result(ExperimentResult[PositionRecord]):
    pattern_shape: list[int]  # spatial shape of one pattern
    canvas_shape: list[int]
    margin: int
    background: float
    positions: list[list[int]]  # the test grid: (n_positions, rank)
    grid_shape: list[int]  # test positions per axis
    region_start: int
    regions: list[int]
    transfer_region: int | None
    n_train: int
    n_test: int


def _margin(opts: Options, spatial: tuple[int, ...]) -> int:
    return opts.margin if opts.margin is not None else min(spatial)


def checkpoints(config: RunConfig) -> list[str]:
    """The models this experiment trains (and, with ``load_from``, loads): one per model and training region,
    and with ``transfer`` its pretrained, scratch and transferred twins."""
    opts: Options = config.options
    names = [f"{spec.name}_region{size}" for size in opts.regions for spec in config.models]
    if opts.transfer:
        names += [f"{spec.name}_{stage}" for spec in config.models for stage in ("pretrain", "scratch", "transfer")]
    return names


def check(config: RunConfig, spatial: tuple[int, ...] | None = None) -> None:
    """Every training region (and the transfer region) fits the canvas: one line before any training."""
    opts: Options = config.options
    if spatial is None:
        known = config.dataset.shape()
        if known is None:
            return
        spatial = tuple(known[0][:-1])
    margin = _margin(opts, spatial)
    sizes = [*opts.regions, *([opts.transfer_region] if opts.transfer and opts.transfer_region else [])]
    too_big = [k for k in sizes if opts.region_start + k > margin + 1]
    if too_big:
        raise ConfigError(f"unseen_positions.regions={opts.regions}: a region of {max(too_big)} positions from "
                          f"region_start={opts.region_start} does not fit the {margin + 1} positions per axis "
                          f"(margin {margin}); use sizes <= {margin + 1 - opts.region_start}")


def positions(margin: int, step: int, rank: int) -> np.ndarray:
    """Every position ``0..margin`` by ``step`` (and ``margin`` itself) on every axis: ``(n, rank)``."""
    axis = sorted(set(range(0, margin + 1, step)) | {margin})
    return np.array(list(itertools.product(axis, repeat=rank)), dtype=np.int32).reshape(-1, rank)


def place(x: np.ndarray, offsets: np.ndarray, margin: int, background: float) -> np.ndarray:
    """Patterns ``x`` (``(N, *spatial, C)``) at per-example ``offsets`` (``(N, rank)``) on canvases ``margin``
    larger per axis, filled with ``background``."""
    n, *spatial, c = x.shape
    canvas = np.full((n, *(s + margin for s in spatial), c), background, dtype=np.float32)
    for i, offset in enumerate(offsets):
        window: tuple[int | slice, ...] = (i, *(slice(int(o), int(o) + s) for o, s in zip(offset, spatial)))
        canvas[window] = x[i]
    return canvas


def draw_offsets(rng: np.random.Generator, n: int, rank: int, start: int, size: int) -> np.ndarray:
    """``n`` positions drawn uniformly from ``start..start + size - 1`` on every axis."""
    return rng.integers(start, start + size, size=(n, rank)).astype(np.int32)


def _inside(grid: np.ndarray, start: int, size: int | None) -> np.ndarray:
    if size is None:
        return np.ones(len(grid), dtype=bool)
    return np.asarray(((grid >= start) & (grid < start + size)).all(axis=1))


def _distance(grid: np.ndarray, start: int, size: int) -> np.ndarray:
    """Each grid position's largest per-axis distance to the region (0 inside)."""
    below = np.maximum(start - grid, 0)
    above = np.maximum(grid - (start + size - 1), 0)
    return np.maximum(below, above).max(axis=1)


def _classes_data(name: str, x: np.ndarray, y: np.ndarray, xt: np.ndarray, yt: np.ndarray, classes: list[int],
                  n_classes: int) -> Dataset:
    keep, keep_t = np.isin(y, classes), np.isin(yt, classes)
    return Dataset(name=name, x_train=x[keep], y_train=y[keep], x_test=xt[keep_t], y_test=yt[keep_t],
                   n_classes=n_classes)


def run(config: RunConfig, out_dir: Path) -> Result:
    opts: Options = config.options
    check(config)
    data = load_dataset(config.dataset)
    spatial = tuple(data.input_shape[:-1])
    check(config, spatial)
    margin = _margin(opts, spatial)
    rank = data.rank
    step = opts.position_step or (1 if rank == 1 else 4)
    grid = positions(margin, step, rank)
    x_pat, y_pat = data.x_train[:opts.n_train], data.y_train[:opts.n_train]
    xt_pat, yt_pat = data.x_test[:opts.n_test], data.y_test[:opts.n_test]
    x_test = place(xt_pat, np.zeros((len(yt_pat), rank), np.int32), margin, opts.background)
    canvas = Dataset(name=data.name, x_train=x_test[:1], y_train=yt_pat[:1], x_test=x_test,
                     y_test=yt_pat, n_classes=data.n_classes)  # the shape every model is built for
    for s in config.models:  # bad options fail before any training, on the canvas's shape
        check_model(s.target, canvas.input_shape, canvas.n_classes, s.options, s.where)
    rng = np.random.default_rng(config.seed)
    plan = config.plan()
    classes = list(range(data.n_classes))
    records: dict[str, PositionRecord] = {}
    lost: dict[str, ModelRecord] = {}
    measured: list[TrainedModel] = []

    def train_and_test(key: str, spec, train: Dataset, stage: str, size: int | None, kept_classes: list[int],
                       start: TrainedModel | None = None) -> TrainedModel:
        model = obtain(config, train, out_dir, key, spec.target, spec.options, plan, spec.where, start=start)
        measured.append(model)
        if (diverged := unmeasured(model)) is not None:
            lost[key] = diverged
            return model
        chosen = np.isin(yt_pat, kept_classes)
        preds = ShiftEvaluator(model.graphdef, "roll", plan).predict(model.variables(), x_test[chosen], grid)
        acc = accuracy(preds, yt_pat[chosen])  # (seeds, positions)
        inside = _inside(grid, opts.region_start, size)
        records[key] = PositionRecord(
            **record_fields(model), model=spec.name, stage=stage, region=size, classes=kept_classes,
            accuracy_by_position=MeanStdSeries.of(acc),
            seen_accuracy=MeanStd.of(acc[:, inside].mean(1)) if inside.any() else None,
            unseen_accuracy=MeanStd.of(acc[:, ~inside].mean(1)) if (~inside).any() else None,
            farthest_accuracy=None if size is None else
            MeanStd.of(acc[:, int(np.argmax(_distance(grid, opts.region_start, size)))]))
        r = records[key]
        log.info("%s: seen %s, unseen %s", key, r.seen_accuracy and r.seen_accuracy.text(),
                 r.unseen_accuracy and r.unseen_accuracy.text())
        return model

    def region_data(size: int, kept: list[int], label: str) -> Dataset:
        offsets = draw_offsets(rng, len(y_pat), rank, opts.region_start, size)
        placed = place(x_pat, offsets, margin, opts.background)
        return _classes_data(label, placed, y_pat, x_test, yt_pat, kept, data.n_classes)

    for size in opts.regions:
        train = region_data(size, classes, f"{data.name} in a region of {size}")
        for spec in config.models:
            train_and_test(f"{spec.name}_region{size}", spec, train, "region", size, classes)

    transfer_size = None
    if opts.transfer:
        transfer_size = opts.transfer_region or min(opts.regions)
        half = data.n_classes // 2
        first, second = classes[:half], classes[half:]
        everywhere = _classes_data(f"{data.name} classes {first} everywhere", place(
            x_pat, draw_offsets(rng, len(y_pat), rank, 0, margin + 1), margin, opts.background),
            y_pat, x_test, yt_pat, first, data.n_classes)
        new = region_data(transfer_size, second, f"{data.name} classes {second} in a region of {transfer_size}")
        for spec in config.models:
            pretrained = train_and_test(f"{spec.name}_pretrain", spec, everywhere, "pretrain", None, first)
            train_and_test(f"{spec.name}_scratch", spec, new, "scratch", transfer_size, second)
            # A seed that diverged in pretraining continues from its last finite parameters (its status says so).
            train_and_test(f"{spec.name}_transfer", spec, new, "transfer", transfer_size, second,
                           start=None if config.load_from else pretrained)
    return Result(**base_fields(config, canvas, measured), pattern_shape=list(spatial),
                  canvas_shape=list(canvas.input_shape[:-1]), margin=margin, background=opts.background,
                  positions=grid.tolist(), grid_shape=[len(set(grid[:, a])) for a in range(rank)],
                  region_start=opts.region_start, regions=list(opts.regions), transfer_region=transfer_size,
                  n_train=int(len(y_pat)), n_test=int(len(yt_pat)), models=records, unmeasured=lost)


def _text(value: MeanStd | None) -> str:
    return value.text(3) if value is not None else "—"


def _by_stage(result: Result, stage: str) -> dict[str, PositionRecord]:
    return {k: r for k, r in result.models.items() if r.stage == stage}


def summary(result: Result) -> str:
    dataset = result.dataset.name if result.dataset else "?"
    shape = "x".join(map(str, result.pattern_shape))
    canvas = "x".join(map(str, result.canvas_shape))
    lines = [f"unseen_positions on {dataset}: patterns of {shape} on a canvas of {canvas}, positions "
             f"0..{result.margin} per axis, {len(result.positions)} test positions x {result.n_test} test patterns "
             f"({seeds_phrase(result.n_seeds)}); trained in a region of k positions per axis from "
             f"{result.region_start}", "",
             "| model | region k | params | seen accuracy | unseen accuracy | farthest position |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in _by_stage(result, "region").values():
        lines.append(f"| {r.model}{r.seeds_note()} | {r.region} | {r.n_params} | {_text(r.seen_accuracy)} | "
                     f"{_text(r.unseen_accuracy)} | {_text(r.farthest_accuracy)} |")
    transfer = _by_stage(result, "transfer")
    if transfer or _by_stage(result, "scratch"):
        scratch = _by_stage(result, "scratch")
        pre = _by_stage(result, "pretrain")
        first = next(iter(pre.values()), None)
        second = next(iter(scratch.values()), None)
        lines += ["", f"Transfer: pretrained on classes {first.classes if first else '?'} at every position, then "
                  f"fine-tuned on classes {second.classes if second else '?'} in a region of "
                  f"{result.transfer_region} only; scratch: the same fine-tuning from a random start. Accuracy on "
                  "the fine-tuned classes.", "",
                  "| model | pretrained (all positions) | scratch: seen | scratch: unseen | transfer: seen | "
                  "transfer: unseen |", "|---|---:|---:|---:|---:|---:|"]
        models = dict.fromkeys(r.model for r in [*pre.values(), *scratch.values(), *transfer.values()])
        for m in models:
            p, s, t = pre.get(f"{m}_pretrain"), scratch.get(f"{m}_scratch"), transfer.get(f"{m}_transfer")
            lines.append(f"| {m} | {_text(p.seen_accuracy if p else None)} | "
                         f"{_text(s.seen_accuracy if s else None)} | {_text(s.unseen_accuracy if s else None)} | "
                         f"{_text(t.seen_accuracy if t else None)} | {_text(t.unseen_accuracy if t else None)} |")
    lines += result.unmeasured_rows(5)
    return "\n".join(lines)


def _region_models(result: Result) -> dict[str, dict[int, PositionRecord]]:
    """model -> region size -> record (trained with every class in that region)."""
    out: dict[str, dict[int, PositionRecord]] = {}
    for r in _by_stage(result, "region").values():
        assert r.region is not None
        out.setdefault(r.model, {})[r.region] = r
    return out


def _region_colors(regions: list[int]) -> dict[int, tuple]:
    cmap = plt.get_cmap("viridis")
    ordered = sorted(regions)
    return {k: cmap(0.1 + 0.75 * i / max(1, len(ordered) - 1)) for i, k in enumerate(ordered)}


def plot(result: Result, out_dir: Path) -> list[Path]:
    """``unseen_positions.png`` (accuracy by test position per model and region: curves in 1D, maps in 2D),
    ``unseen_by_region.png`` (seen and unseen accuracy against the region's size) and, with the transfer
    variant, ``unseen_transfer.png``."""
    out_dir = Path(out_dir)
    by_model = _region_models(result)
    if not by_model:
        return []
    written = [_position_figure(result, by_model, out_dir), _region_figure(result, by_model, out_dir)]
    if _by_stage(result, "transfer") or _by_stage(result, "scratch"):
        written.append(_transfer_figure(result, out_dir))
    return written


def _position_figure(result: Result, by_model: dict[str, dict[int, PositionRecord]], out_dir: Path) -> Path:
    grid = np.asarray(result.positions)
    rank = grid.shape[1]
    dataset = result.dataset.name if result.dataset else "?"
    models = list(by_model)
    regions = sorted(result.regions)
    start = result.region_start
    if rank == 1:
        cols = min(3, len(models))
        rows = -(-len(models) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols + 1.6, 3.2 * rows + 0.6), squeeze=False,
                                 sharey=True, layout="constrained")
        colors = _region_colors(regions)
        for ax, m in zip(axes.flat, models):
            for k in regions[::-1]:  # the largest region's span at the back
                ax.axvspan(start - 0.5, start + k - 0.5, color=colors[k], alpha=0.12, lw=0)
            for k, r in sorted(by_model[m].items()):
                acc = r.accuracy_by_position
                ax.plot(grid[:, 0], acc.mean, color=colors[k], label=f"k = {k}{r.seeds_note()}", lw=1.4)
                if acc.n > 1:
                    ax.fill_between(grid[:, 0], np.subtract(acc.mean, acc.std), np.add(acc.mean, acc.std),
                                    color=colors[k], alpha=0.2)
            draw_chance(ax, result.chance)
            share_axis(ax, "test accuracy")
            ax.set_title(m, fontsize=10)
            ax.set_xlabel("position of the pattern (first sample)")
            ax.grid(alpha=0.3)
        spare = list(axes.flat)[len(models):]
        for ax in spare[1:]:
            ax.set_visible(False)
        handles, labels = axes.flat[0].get_legend_handles_labels()
        # the legend in the empty panel when there is one, else right of the panels: never over a curve
        where = "0..k-1" if start == 0 else f"{start}..{start}+k-1"
        style = {"fontsize": 8, "title": f"trained in {where}", "title_fontsize": 8}
        if spare:
            spare[0].axis("off")
            spare[0].legend(handles, labels, loc="center", **style)
        else:
            fig.legend(handles, labels, loc="outside right center", **style)
    else:
        side = result.grid_shape
        fig, axes = plt.subplots(len(regions), len(models), figsize=(max(2.3 * len(models) + 1.6, 5.5),
                                                                     2.3 * len(regions) + 1.0),
                                 squeeze=False, layout="constrained")
        axis0 = sorted(set(grid[:, 0].tolist()))
        axis1 = sorted(set(grid[:, 1].tolist()))
        image = None
        for i, k in enumerate(regions):
            for j, m in enumerate(models):
                ax = axes[i, j]
                record = by_model[m].get(k)
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    ax.set_ylabel(f"trained in k = {k}", fontsize=8)
                if i == 0:
                    ax.set_title(m, fontsize=9, color=model_text_color(m))
                if record is None:
                    ax.text(0.5, 0.5, "not measured", ha="center", va="center", fontsize=7, transform=ax.transAxes)
                    continue
                values = np.asarray(record.accuracy_by_position.mean).reshape(side)
                step0 = axis0[1] - axis0[0] if len(axis0) > 1 else 1
                step1 = axis1[1] - axis1[0] if len(axis1) > 1 else 1
                extent = (axis1[0] - step1 / 2, axis1[-1] + step1 / 2, axis0[-1] + step0 / 2, axis0[0] - step0 / 2)
                image = ax.imshow(values, vmin=0, vmax=1, cmap="magma", extent=extent, interpolation="nearest")
                ax.add_patch(Rectangle((start - 0.5, start - 0.5), k, k, fill=False, ec="cyan", lw=1.2))
                ax.text(0.03, 0.04, f"unseen {_text(record.unseen_accuracy).split(' ')[0]}", color="white", fontsize=7,
                        transform=ax.transAxes, bbox={"facecolor": "black", "alpha": 0.6, "lw": 0, "pad": 1.5})
        if image is not None:
            fig.colorbar(image, ax=axes, shrink=0.8, label="test accuracy (cyan: training region)")
    fig.suptitle(f"Accuracy by the pattern's position on {dataset} ({over_seeds(result.n_seeds)}; "
                 f"patterns of {'x'.join(map(str, result.pattern_shape))} on a canvas of "
                 f"{'x'.join(map(str, result.canvas_shape))})", fontsize=10)
    return save(fig, out_dir / "unseen_positions.png")


def _region_figure(result: Result, by_model: dict[str, dict[int, PositionRecord]], out_dir: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7.4, 4.2), layout="constrained")
    for m, per_region in by_model.items():
        ks = sorted(k for k, r in per_region.items() if r.unseen_accuracy is not None)
        if not ks:
            continue
        unseen = [per_region[k].unseen_accuracy for k in ks]
        seen = [per_region[k].seen_accuracy for k in ks]
        n = unseen[0].n  # type: ignore[union-attr]
        ax.errorbar(ks, [u.mean for u in unseen], yerr=error_bars([u.std for u in unseen], n),  # type: ignore
                    color=model_color(m), marker="o", capsize=3, label=f"{m}")
        ax.plot(ks, [s.mean if s else np.nan for s in seen], color=model_color(m), ls=":", marker=".", lw=1)
    draw_chance(ax, result.chance)
    share_axis(ax, "test accuracy")
    ax.set_xscale("log")
    ax.set_xticks(sorted(result.regions), [str(k) for k in sorted(result.regions)])
    ax.minorticks_off()
    ax.set_xlabel("training region: positions per axis (k)")
    dataset = result.dataset.name if result.dataset else "?"
    ax.set_title(f"{dataset}: accuracy at unseen positions (solid) and seen ones (dotted)\n"
                 f"{over_seeds(result.n_seeds)}; test positions 0..{result.margin} per axis", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, out_dir / "unseen_by_region.png")


def _transfer_figure(result: Result, out_dir: Path) -> Path:
    pre, scratch, transfer = (_by_stage(result, s) for s in ("pretrain", "scratch", "transfer"))
    models = list(dict.fromkeys(r.model for r in [*scratch.values(), *transfer.values()]))
    bars = [("scratch: seen", scratch, "_scratch", "seen_accuracy", "lightgray"),
            ("scratch: unseen", scratch, "_scratch", "unseen_accuracy", "tab:gray"),
            ("transfer: seen", transfer, "_transfer", "seen_accuracy", "lightgreen"),
            ("transfer: unseen", transfer, "_transfer", "unseen_accuracy", "tab:green")]
    fig, ax = plt.subplots(figsize=(max(3.6 + 1.3 * len(models), 6.5), 4.4), layout="constrained")
    width = 0.8 / len(bars)
    for b, (label, records, suffix, field, color) in enumerate(bars):
        for i, m in enumerate(models):
            r = records.get(m + suffix)
            value = getattr(r, field) if r is not None else None
            if value is None:
                continue
            ax.bar(i - 0.4 + width * (b + 0.5), value.mean, width, color=color, edgecolor="black", lw=0.4,
                   yerr=error_bars([value.std], value.n), capsize=2, label=label if i == 0 else None)
    for i, m in enumerate(models):
        p = pre.get(f"{m}_pretrain")
        if p is not None and p.seen_accuracy is not None:
            ax.plot([i - 0.4, i + 0.4], [p.seen_accuracy.mean] * 2, color="black", lw=1,
                    label="pretrained: its own classes, everywhere" if i == 0 else None)
    draw_chance(ax, 1 / max(1, len(next(iter(scratch.values())).classes)) if scratch else result.chance)
    share_axis(ax, "test accuracy")
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)
    dataset = result.dataset.name if result.dataset else "?"
    ax.set_title(f"{dataset}: does invariance learnt on other classes transfer?\nfine-tuned in a region of "
                 f"{result.transfer_region} per axis ({over_seeds(result.n_seeds)})", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return save(fig, out_dir / "unseen_transfer.png")
