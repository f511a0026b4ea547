"""pooling_invariance: how much invariance each pooling buys, as a function of shift and pooling size.

Features are a circular convolution + ReLU (``pooling_invariance.channels`` maps, kernel ``kernel``; one random
initialisation per seed, the same for every pooling) on the test inputs. Each pooling ``g`` is applied to them and
its invariance error ``||g(T_s x) - g(x)|| / ||g(x)||`` is measured for circular shifts ``s = 0..shift.max`` (by
``shift.step``; ``shift.mode`` roll, or fourier for sub-pixel steps) along every axis: local max and mean pooling,
Zhang's (2019) blur pooling (max with stride 1, binomial blur, subsample) and Chaman & Dokmanic's (2021) adaptive
polyphase sampling (APS; max with stride 1, then the largest-norm polyphase component), each with window = stride =
``p`` for every ``p`` in ``sizes``, and global average and global max pooling. Everything is circular, so global
pooling is exactly invariant.

Expected: errors grow with the shift and saturate; larger ``p`` rise more slowly (invariance to larger
displacements); blur pooling is smoother than max pooling; APS output is a shifted copy of itself, so it is
*equivariant* (error 0 after undoing the shift, reported as ``aps_shift_aligned``) though not invariant; global
pooling stays at 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx
from pydantic import Field

from equivar.checkpoints import TrainedModel
from equivar.config import RunConfig
from equivar.data import Dataset, load_dataset
from equivar.equivariance import relative_error
from equivar.errors import ConfigError
from equivar.experiment import base_fields, obtain, record_fields
from equivar.layers import Blur, GlobalPool, PolyphaseDownsample, Pool
from equivar.plot import band, legend_below, over_seeds, save
from equivar.results import (
    ExperimentResult,
    Headline,
    MeanStd,
    MeanStdSeries,
    ModelRecord,
    Record,
    SeedRecord,
    SeedStatus,
    seeds_phrase,
)
from equivar.schema import Options as OptionsBase
from equivar.schema import PositiveInt
from equivar.transforms import shift

log = logging.getLogger(__name__)

Pooling = Callable[[jax.Array], jax.Array]


def poolings(rank: int, sizes: list[int]) -> dict[str, dict[str, Any]]:
    """Name -> {"fn", "type", "size"}; every local pooling has window = stride = size, circular windows."""
    out: dict[str, dict[str, Any]] = {}
    for p in sizes:
        window = (p,) * rank
        dense_max = Pool("max", window, (1,) * rank, "CIRCULAR")
        out[f"max{p}"] = {"fn": Pool("max", window, window), "type": "max", "size": p}
        out[f"mean{p}"] = {"fn": Pool("mean", window, window), "type": "mean", "size": p}
        blur = Blur(3, window, "CIRCULAR")
        out[f"blur{p}"] = {"fn": lambda x, m=dense_max, b=blur: b(m(x)), "type": "blur", "size": p}
        aps = PolyphaseDownsample(window)
        out[f"aps{p}"] = {"fn": lambda x, m=dense_max, a=aps: a(m(x)), "type": "aps", "size": p}
    out["global_mean"] = {"fn": GlobalPool("mean"), "type": "global mean", "size": None}
    out["global_max"] = {"fn": GlobalPool("max"), "type": "global max", "size": None}
    return out


def _aligned_error(pooled_shifted: jax.Array, pooled: jax.Array) -> jax.Array:
    """The smallest error over every circular shift of the pooled map (how far from equivariant it is)."""
    spatial = pooled.shape[1:-1]
    grids = np.stack(np.meshgrid(*[np.arange(n) for n in spatial], indexing="ij"), -1).reshape(-1, len(spatial))
    errs = jnp.stack([relative_error(pooled_shifted, shift(pooled, g), pooled) for g in grids])
    return errs.min(0)


class Options(OptionsBase):
    """``pooling_invariance.*`` (the shifts are the ``shift.*`` grid: 0..max by step, roll or fourier)."""

    sizes: list[PositiveInt] = Field([2, 4, 8], min_length=1, description="pooling sizes (window = stride)")
    channels: PositiveInt = Field(16, description="feature maps of the circular conv + ReLU")
    kernel: PositiveInt = Field(5, description="kernel size of that conv along every axis")
    n_examples: PositiveInt = Field(256, description="test inputs")
    features: Literal["random", "trained"] = Field(
        "random", description="the conv's weights: random (a fresh initialisation per seed) or trained (a circular "
                              "conv + ReLU + global max pool + linear net trained on the dataset with train.*; with "
                              "load_from, the one saved there)")


class PoolingResult(ModelRecord):
    """One pooling's invariance error per shift, over seeds."""

    headline = (Headline("error_at_1", "invariance error at shift 1", share=False),)

    type: str  # max, mean, blur, aps, global mean, global max
    size: int | None  # window = stride (None: global)
    error: MeanStdSeries  # per shift of ``shifts``
    shift_aligned_error: MeanStdSeries | None = None  # APS: the error after undoing the best circular shift

    @property
    def error_at_1(self) -> MeanStd | None:
        return self.error.at(1) if len(self.error.mean) > 1 else None


class Features(Record):
    channels: int
    kernel: int
    padding: str
    activation: str
    weights: str


class Result(ExperimentResult[PoolingResult]):
    features: Features
    n_examples: int
    shift_mode: str
    shifts: list[float]
    sizes: list[int]


def feature_convs(config: RunConfig, data: Dataset, out_dir: Path, opts: Options
                  ) -> tuple[list[nnx.Conv], TrainedModel | None]:
    """One circular convolution per seed: freshly initialised, or the first layer of a trained (or loaded)
    circular conv + ReLU + global max pool + linear classifier (its healthy seeds)."""
    if opts.features == "random":
        return [nnx.Conv(data.input_shape[-1], opts.channels, (opts.kernel,) * data.rank, padding="CIRCULAR",
                         rngs=nnx.Rngs(config.seed + i)) for i in range(config.n_seeds)], None
    layers = [{"type": "conv", "features": opts.channels, "kernel": opts.kernel, "padding": "CIRCULAR"},
              {"type": "activation", "fn": "relu"}, {"type": "global_pool", "kind": "max"}]
    model = obtain(config, data, out_dir, "pooling_features", "equivar.models.Stack", {"layers": layers},
                   config.plan(), where="pooling_invariance.features")
    return [m.conv1 for m in model.modules()], model  # type: ignore[attr-defined]  # the Stack's first layer


def check(config: RunConfig, spatial: tuple[int, ...] | None = None) -> None:
    """A circular shift mode, and shifts and pooling sizes that fit the input (when its shape is known)."""
    config.shift.one_mode("pooling_invariance", ("roll", "fourier"))
    known = config.dataset.shape()
    spatial = spatial or (known[0][:-1] if known is not None else None)
    if spatial is None:
        return
    too_big = [p for p in config.options.sizes if p > min(spatial)]
    if too_big:
        raise ConfigError(f"pooling_invariance.sizes {too_big} exceed the input size {spatial}")
    config.shift.check_fits(spatial)


def run(config: RunConfig, out_dir: Path) -> Result:
    opts: Options = config.options
    mode = config.shift.one_mode("pooling_invariance", ("roll", "fourier"))
    data = load_dataset(config.dataset)
    spatial = data.input_shape[:-1]
    check(config, spatial)
    x = jnp.asarray(data.x_test[:opts.n_examples])
    values = config.shift.values()
    shifts = [(v,) * data.rank for v in values]
    pools = poolings(data.rank, opts.sizes)

    per_seed: dict[str, list[list[float]]] = {name: [] for name in pools}
    aligned: dict[str, list[list[float]]] = {name: [] for name in pools if pools[name]["type"] == "aps"}
    convs, features_model = feature_convs(config, data, out_dir, opts)
    for conv in convs:
        features = jax.jit(lambda v, c=conv: jax.nn.relu(c(v)))
        base = features(x)
        moved = [features(shift(x, s, mode)) for s in shifts]
        for name, p in pools.items():
            fn = jax.jit(p["fn"])
            pooled = fn(base)
            pooled_moved = [fn(m) for m in moved]
            per_seed[name].append([float(relative_error(pm, pooled, pooled).mean()) for pm in pooled_moved])
            if name in aligned:
                aligned[name].append([float(_aligned_error(pm, pooled).mean()) for pm in pooled_moved])
    if features_model is None:
        fields: dict[str, Any] = {"target": "equivar.layers.Pool", "source": "initialised",
                                  "seeds": [SeedRecord(seed=s, status=SeedStatus.OK) for s in config.seeds]}
    else:
        fields = record_fields(features_model)
    records, lost = {}, {}
    for name, p in pools.items():
        if not convs:  # trained features whose every seed diverged
            lost[name] = ModelRecord(**fields)
            continue
        records[name] = PoolingResult(**fields, type=p["type"], size=p["size"],
                                      error=MeanStdSeries.of(per_seed[name]),
                                      shift_aligned_error=MeanStdSeries.of(aligned[name]) if name in aligned else None)
    return Result(**base_fields(config, data, [features_model] if features_model else []),
                  features=Features(channels=opts.channels, kernel=opts.kernel, padding="CIRCULAR", activation="relu",
                                    weights="random (one initialisation per seed)" if opts.features == "random" else
                                    "trained (circular conv + ReLU + global max pool + linear, one model per seed)"),
                  n_examples=int(x.shape[0]), shift_mode=mode, shifts=values, sizes=opts.sizes, models=records,
                  unmeasured=lost)


def summary(result: Result) -> str:
    shifts = result.shifts
    picks = sorted({0.5, 1, 2, 4, shifts[-1]} & set(shifts))
    dataset = result.dataset.name if result.dataset else "?"
    lines = [f"pooling_invariance on {dataset} ({seeds_phrase(result.n_seeds)}, {result.n_examples} test inputs, "
             f"{result.shift_mode} shifts along every axis): invariance error", "",
             "| pooling | " + " | ".join(f"shift {s:g}" for s in picks) + " |",
             "|---|" + "---:|" * len(picks)]
    for name, r in result.models.items():
        cells = [r.error.at(shifts.index(s)).text(3) for s in picks]
        lines.append(f"| {name}{r.seeds_note()} | " + " | ".join(cells) + " |")
    lines += result.unmeasured_rows(len(picks))
    return "\n".join(lines)


def plot(result: Result, out_dir: Path) -> list[Path]:
    """Invariance error vs shift, one panel per pooling type, one line per size (± std band); and error vs
    pooling size at a few shifts."""
    out_dir = Path(out_dir)
    pools = result.models
    if not pools:  # trained features whose every seed diverged: nothing to draw
        return []
    shifts = np.asarray(result.shifts)
    types = list(dict.fromkeys(r.type for r in pools.values() if r.size is not None))
    fig, axes = plt.subplots(1, len(types) + 1, figsize=(max(3.6 * (len(types) + 1), 7.5), 3.9), sharey=True,
                             layout="constrained")
    colours = plt.cm.plasma(np.linspace(0, 0.8, len(result.sizes)))
    for ax, t in zip(axes, types):
        for colour, r in zip(colours, [r for r in pools.values() if r.type == t]):
            band(ax, shifts, r.error.mean, r.error.std, r.error.n, colour, f"size {r.size}", marker="o", ms=3)
            if r.shift_aligned_error is not None:
                ax.plot(shifts, r.shift_aligned_error.mean, ":", color=colour, lw=1)
        ax.set_title(f"{t} pooling" + (" (dotted: after undoing the shift)" if t == "aps" else ""), fontsize=9)
        ax.set_xlabel("circular shift (every axis)")
        ax.grid(alpha=0.3)
    legend_below(axes[0], fontsize=7)  # the sizes, the same in every panel: once, under the curves
    ax = axes[-1]
    for name, r in pools.items():
        if r.size is None:
            ax.plot(shifts, r.error.mean, "-o", ms=3, label=name)
    ax.set_title("global pooling", fontsize=9)
    ax.set_xlabel("circular shift (every axis)")
    ax.grid(alpha=0.3)
    legend_below(ax, fontsize=7)
    axes[0].set_ylabel("‖g(Tₛx) − g(x)‖ / ‖g(x)‖")
    dataset = result.dataset.name if result.dataset else "?"
    fig.suptitle(f"pooling invariance on {dataset}: {result.shift_mode} shifts of circular conv + ReLU features, "
                 f"{over_seeds(result.n_seeds)}", fontsize=10)
    written = [save(fig, out_dir / "pooling_invariance.png")]

    picks = [s for s in (1, 2, 4) if s in set(shifts.tolist())]
    fig, axes = plt.subplots(1, len(picks), figsize=(max(4.2 * len(picks), 5.5), 3.6), sharey=True, squeeze=False,
                             layout="constrained")
    for ax, s in zip(axes[0], picks):
        at = list(shifts).index(s)
        for t in types:
            rows = [r for r in pools.values() if r.type == t]
            sizes = [r.size for r in rows]
            ax.errorbar(sizes, [r.error.mean[at] for r in rows], yerr=[r.error.std[at] for r in rows],
                        marker="o", capsize=3, label=t)
        ax.set_xscale("log", base=2)
        ax.set_xticks(result.sizes, [str(v) for v in result.sizes])
        ax.set_title(f"shift {s}", fontsize=10)
        ax.set_xlabel("pooling size (= stride)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("invariance error")
    fig.suptitle("larger pooling regions: invariance to larger displacements", fontsize=10)
    written.append(save(fig, out_dir / "pooling_size.png"))
    return written


