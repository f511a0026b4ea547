"""Figures drawn from ``metrics.json``-shaped dicts only (no JAX): ``python -m equivar.plot RUN_DIR`` redraws.

Each experiment registers a plotter that takes the metrics dict and an output folder and returns the files
it wrote.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from equivar.text import seeds_phrase  # noqa: E402

AXIS_NAMES = {1: ("shift",), 2: ("dy (rows)", "dx (columns)")}

# One colour per model in every figure (plot.py and report.py), so a reader can follow a model across plots.
# The zoo's models keep the tab10 colours they had when the default run drew them in order.
MODEL_COLORS = {"mlp": "#1f77b4", "lenet": "#ff7f0e", "local": "#2ca02c", "cnn_gap": "#d62728",
                "group_pool": "#9467bd", "stack": "#8c564b"}
# Other names hash into colours set apart from the zoo's (and from the grey of chance and precision lines).
HASH_PALETTE = ("#e377c2", "#bcbd22", "#17becf", "#393b79", "#637939", "#7b4173", "#9c9ede", "#e7ba52")
CHANCE_STYLE = {"color": "gray", "ls": "--", "lw": 1}


def model_color(name: str) -> str:
    """The colour a model is drawn in, the same in every plot and every process.

    Args:
        name: A model name as it appears in ``metrics["models"]`` (e.g. ``"lenet"`` or ``"lenet_blur"``).

    Returns:
        A hex colour: a fixed one for the zoo's models, otherwise one picked by a hash of the name.
    """
    if name in MODEL_COLORS:
        return MODEL_COLORS[name]
    # hashlib, not hash(): Python salts str hashes per process, and the colour must not change between runs.
    digest = hashlib.sha256(str(name).encode()).digest()
    return HASH_PALETTE[int.from_bytes(digest[:4], "big") % len(HASH_PALETTE)]


def over_seeds(n: int | None, stat: str = "mean ± std") -> str:
    """How a figure says what its numbers summarise: ``"mean ± std over 3 seeds"``, or ``"1 seed"`` (one
    seed has no spread, so no "±" is promised).

    Args:
        n: The number of seeds (None: unknown).
        stat: What is taken over several seeds.
    """
    if n is None:
        return f"{stat} over seeds"
    return seeds_phrase(n) if n == 1 else f"{stat} over {seeds_phrase(n)}"


def chance_level(metrics: dict[str, Any]) -> float | None:
    """1 / n_classes from ``metrics["dataset"]`` (what ``Dataset.summary()`` writes), or None when unknown."""
    dataset = metrics.get("dataset")
    n = dataset.get("n_classes") if isinstance(dataset, dict) else None
    if isinstance(n, bool) or not isinstance(n, (int, float)) or n < 1:
        return None
    return 1.0 / n


def draw_chance(ax: plt.Axes, chance: float | None) -> None:
    """The dashed grey "chance" line of an accuracy axis; nothing when chance is unknown."""
    if chance is not None:
        ax.axhline(chance, label="chance", zorder=1.5, **CHANCE_STYLE)


def n_summarised(summary: Any, model: dict[str, Any] | None = None, default: int | None = None) -> int | None:
    """How many seeds a ``{"mean", "std"}`` summary is over: its ``n`` (``metrics.mean_std`` writes it), else
    the model's healthy seeds (diverged ones are left out of the statistics), else ``default``.

    Args:
        summary: One metric's summary dict from metrics.json.
        model: The model's record, whose ``status`` lists one entry per seed.
        default: The run's ``n_seeds``, for records that carry neither.
    """
    n = summary.get("n") if isinstance(summary, dict) else None
    if isinstance(n, int) and not isinstance(n, bool):
        return n
    status = model.get("status") if isinstance(model, dict) else None
    if isinstance(status, list):
        return sum(s == "ok" for s in status)
    return default


def _axis_slice(shifts: np.ndarray, axis: int) -> np.ndarray:
    """Indices of the grid points where every other axis is unshifted, sorted along ``axis``."""
    others = [a for a in range(shifts.shape[1]) if a != axis]
    rows = np.where((shifts[:, others] == 0).all(axis=1))[0] if others else np.arange(len(shifts))
    return rows[np.argsort(shifts[rows, axis])]


def _seed_label(name: str, m: dict[str, Any]) -> str:
    diverged = sum(s != "ok" for s in m.get("status", []))
    return f"{name} ({diverged}/{seeds_phrase(len(m['status']))} diverged)" if diverged else name


def plot_shift_test(metrics: dict[str, Any], out_dir: Path) -> list[Path]:
    """Accuracy vs shift per axis (with chance), the (dy, dx) heatmap for 2D data, and consistency bars."""
    out_dir = Path(out_dir)
    shifts = np.asarray(metrics["shifts"])
    rank = shifts.shape[1]
    # Models whose every seed diverged have nothing to draw; the others say how many seeds they lost.
    models = {_seed_label(name, m): m for name, m in metrics["models"].items() if "shift_accuracy" in m}
    if not models:
        return []
    colors = {_seed_label(name, m): model_color(name) for name, m in metrics["models"].items()}
    mode = metrics["shift_mode"]
    dataset = metrics["dataset"]["name"]
    n_seeds = metrics["n_seeds"]
    chance = chance_level(metrics)
    written = []

    fig, axes = plt.subplots(1, rank, figsize=(6 * rank, 4.2), squeeze=False)
    for axis in range(rank):
        ax = axes[0, axis]
        rows = _axis_slice(shifts, axis)
        for name, m in models.items():
            mean = np.asarray(m["shift_accuracy"]["mean"])[rows]
            std = np.asarray(m["shift_accuracy"]["std"])[rows]
            x = shifts[rows, axis]
            ax.plot(x, mean, marker="o", ms=3, label=name, color=colors[name])
            ax.fill_between(x, mean - std, mean + std, color=colors[name], alpha=0.2)
        draw_chance(ax, chance)
        ax.set_xlabel(f"{AXIS_NAMES[rank][axis]} shift (pixels, mode={mode})" if rank > 1 else
                      f"shift (positions, mode={mode})")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if rank > 1:
            ax.set_title(f"shift along {AXIS_NAMES[rank][axis]}, other axis 0")
    axes[0, 0].legend(loc="lower center")
    fig.suptitle(f"Accuracy vs shift on {dataset} ({over_seeds(n_seeds)})")
    fig.tight_layout()
    written.append(_save(fig, out_dir / "accuracy_vs_shift.png"))

    if rank == 2:
        side = int(round(np.sqrt(len(shifts))))
        lo = min(float(np.min(m["shift_accuracy"]["mean"])) for m in models.values())
        fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models) + 1.0, 4.4), squeeze=False,
                                 layout="constrained")
        for i, (ax, (name, m)) in enumerate(zip(axes[0], models.items())):
            grid = np.asarray(m["shift_accuracy"]["mean"]).reshape(side, side)
            values = np.unique(shifts[:, 1])
            half = (values[1] - values[0]) / 2 if len(values) > 1 else 0.5  # half a grid step (sub-pixel too)
            extent = (shifts[:, 1].min() - half, shifts[:, 1].max() + half,
                      shifts[:, 0].max() + half, shifts[:, 0].min() - half)
            im = ax.imshow(grid, vmin=lo, vmax=1.0, cmap="viridis", extent=extent)
            ax.set_title(f"{name}: mean {grid.mean():.3f}, min {grid.min():.3f}")
            ax.set_xlabel("dx (columns)")
            if i == 0:
                ax.set_ylabel("dy (rows)")
        fig.colorbar(im, ax=axes[0].tolist(), label="test accuracy", shrink=0.85)
        fig.suptitle(f"Accuracy over (dy, dx) shifts on {dataset}, mode={mode}, "
                     f"{over_seeds(n_seeds, 'mean')}")
        written.append(_save(fig, out_dir / "accuracy_heatmap.png"))

    # At least 4.5 inches: the title's two lines must fit above a single bar too.
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 + 1.4 * len(models)), 4))
    names = list(models)
    means = [models[n]["consistency"]["mean"] for n in names]
    # No error bar where a model has one seed left: a std of 0 would claim a precision it does not have.
    stds = [np.nan if n_summarised(models[n]["consistency"], models[n], n_seeds) == 1
            else models[n]["consistency"]["std"] for n in names]
    bars = ax.bar(names, means, yerr=stds, capsize=5, color=[colors[n] for n in names])
    for bar, mean in zip(bars, means):
        ax.text(bar.get_x() + bar.get_width() / 2, min(mean, 1.0) + 0.02, f"{mean:.3f}", ha="center")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("consistency (same class under two random shifts)")
    ax.set_title(f"Shift consistency, {dataset}, mode={mode}\n({over_seeds(n_seeds)})")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    written.append(_save(fig, out_dir / "consistency.png"))
    return written


def plot_anatomy(metrics: dict[str, Any], out_dir: Path) -> list[Path]:
    """Per model, the effective receptive field (mean |input gradient|) of each layer's central unit, with the
    analytic support's extent outlined (activations are left out: they share their input layer's field)."""
    out_dir = Path(out_dir)
    written = []
    for name, model in metrics["models"].items():
        rows = [r for r in model["layers"] if r["type"] != "Activation"]
        maps = model.get("gradient_maps", {})
        cols = min(5, len(rows))
        n_rows = -(-len(rows) // cols)
        fig, axes = plt.subplots(n_rows, cols, figsize=(3.1 * cols, 2.9 * n_rows), squeeze=False)
        for ax, row in zip(axes.ravel(), rows):
            m = np.asarray(maps.get(row["layer"], []))
            if "rf_forward" in row:
                rf = "×".join(str(v) for v in row["rf_forward"])
                seen = "×".join(str(v) for v in row["support_size"])
                if seen != rf:
                    rf += f", sees {seen}"
                ok = {True: "grad = analytic", False: "grad ≠ analytic"}.get(row.get("empirical_equals_analytic"),
                                                                             "")
                ax.set_title(f"{row['layer']}: RF {rf}\n{ok}", fontsize=9)
                (lo0, hi0), *rest = row["support_range"]
            else:  # no analytic field (the model computes between its layers): the gradient's extent only
                seen = "×".join(str(v) for v in row.get("empirical_support_size") or ["?"])
                ax.set_title(f"{row['layer']}: gradient sees {seen}\n(no analytic field)", fontsize=9)
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
        shape = "×".join(str(v) for v in model["input_shape"])
        fig.suptitle(f"{name} on {shape}: effective receptive field of each layer's central unit "
                     f"(mean |∂unit/∂input| over {metrics['n_inputs']} inputs; box/band: analytic extent, or the "
                     "gradient's where the model has no analytic field)",
                     fontsize=10)
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"erf_{name}.png"))
    return written


def _extent(m: np.ndarray) -> list[tuple[int, int]]:
    """Per axis, the first and last index where a map is non-zero (the whole axis when it is all zero)."""
    out = []
    for axis in range(m.ndim):
        nonzero = np.flatnonzero(np.any(m > 0, axis=tuple(a for a in range(m.ndim) if a != axis)))
        out.append((int(nonzero[0]), int(nonzero[-1])) if nonzero.size else (0, m.shape[axis] - 1))
    return out or [(0, 0)]


def plot_conv_compare(metrics: dict[str, Any], out_dir: Path) -> list[Path]:
    """Left: every implementation's output on the lecture's example, coloured by what it computes.
    Right: the 1D layer matrices (Toeplitz for VALID and SAME, circulant for CIRCULAR)."""
    rows = metrics["implementations"]
    colours = {"convolution": "tab:blue", "cross-correlation": "tab:red", "other": "tab:gray"}
    fig = plt.figure(figsize=(14, 0.42 * len(rows) + 2.2))
    grid = fig.add_gridspec(3, 2, width_ratios=[1.5, 1])
    ax = fig.add_subplot(grid[:, 0])
    longest = max(r["lecture_output_length"] for r in rows)
    for i, r in enumerate(rows):
        y = len(rows) - 1 - i
        ax.text(-0.6, y, r["name"], ha="right", va="center", fontsize=8)
        for j, v in enumerate(r["lecture_output"]):
            ax.text(j, y, f"{v:g}", ha="center", va="center", fontsize=8, color=colours[r["operation"]],
                    fontweight="bold" if v != 0 else "normal")
    ex = metrics["lecture_example"]
    ax.set_xlim(-0.6, longest - 0.4)
    ax.set_ylim(-0.8, len(rows) - 0.2)
    ax.set_xticks(range(longest))
    ax.set_yticks([])
    ax.set_xlabel("output position")
    for spine in ("left", "right", "top"):
        ax.spines[spine].set_visible(False)
    ax.set_title(f"x = {ex['x']}, w = {ex['w']}: blue = convolution, red = cross-correlation", fontsize=10,
                 loc="left")
    for k, padding in enumerate(("VALID", "SAME", "CIRCULAR")):
        entry = metrics["toeplitz"].get(f"1d.{padding}")
        if entry is None:
            continue
        mat = np.asarray(entry["matrix"])
        axm = fig.add_subplot(grid[k, 1])
        lim = np.abs(mat).max() or 1.0
        axm.imshow(mat, cmap="coolwarm", vmin=-lim, vmax=lim)
        axm.set_title(f"{padding}: {mat.shape[0]}×{mat.shape[1]} matrix, "
                      f"{100 * entry['weights_zeroed_fraction']:.0f}% zero, error {entry['max_abs_error']:.0e}",
                      fontsize=9)
        axm.set_xticks([])
        axm.set_yticks([])
    fig.tight_layout()
    return [_save(fig, Path(out_dir) / "conv_compare.png")]


FLOAT32_EPS = 1.2e-7  # relative rounding of float32: errors below this are "exact"
_FLOOR = 1e-9  # exact zeros are drawn here on log axes


def plot_equivariance(metrics: dict[str, Any], out_dir: Path) -> list[Path]:
    """Per stage: error vs shift per layer (log scale; solid = all positions, dotted = interior; filled marks:
    shifts the layer's jump divides), one row per variant and one column per shift mode. Plus a bar chart of
    the transforms convolutions do not commute with."""
    out_dir = Path(out_dir)
    variants = metrics["variants"]
    modes = metrics["modes"]
    stages = list(next(iter(variants.values()))["stages"])
    written = []
    for stage in stages:
        fig, axes = plt.subplots(len(variants), len(modes), figsize=(6.2 * len(modes), 2.9 * len(variants)),
                                 squeeze=False, sharey=True)
        for row, (name, v) in enumerate(variants.items()):
            for col, mode in enumerate(modes):
                ax = axes[row, col]
                layers = v["stages"][stage]["shift"][mode]
                shown = [k for k in layers if not k.startswith("act")]
                colours = plt.cm.viridis(np.linspace(0, 0.9, len(shown)))
                for colour, layer in zip(colours, shown):
                    r = layers[layer]
                    s = np.asarray(r["shift"])
                    full = np.maximum(np.asarray(r["full"]["mean"], dtype=float), _FLOOR)
                    div = np.asarray(r["divisible"])
                    label = f"{layer} (J={r['jump'][0]})" if "jump" in r else f"{layer} (invariance)"
                    ax.plot(s, full, "-", color=colour, lw=1.3, label=label)
                    ax.plot(s[div], full[div], "o", color=colour, ms=4)
                    ax.plot(s[~div], full[~div], "o", mfc="none", color=colour, ms=4)
                    if "interior" in r:
                        interior = np.asarray([np.nan if m is None else m for m in r["interior"]["mean"]], float)
                        ax.plot(s, np.maximum(interior, _FLOOR), ":", color=colour, lw=1.3)
                ax.axhline(FLOAT32_EPS, color="gray", lw=0.8, ls="--")
                ax.set_yscale("log")
                ax.set_ylim(_FLOOR / 2, 3)
                ax.set_title(f"{name}, {mode} shift", fontsize=10, color=model_color(v.get("model", name)))
                ax.grid(alpha=0.3, which="both", axis="y")
                if row == len(variants) - 1:
                    ax.set_xlabel("shift (pixels, every axis)")
                if col == 0:
                    ax.set_ylabel("relative error")
                if col == len(modes) - 1:
                    ax.legend(fontsize=6.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.suptitle(f"{stage}: ‖f(Tₛx) − T_(s/J) f(x)‖ / ‖f(x)‖ per layer on {metrics['dataset']['name']}, "
                     f"{over_seeds(metrics['n_seeds'], 'mean')}\nsolid: all positions; dotted: interior; "
                     f"hollow marks: the jump J does not divide s; dashed grey: float32 precision; "
                     f"exact zeros drawn at {_FLOOR:g}",
                     fontsize=9)
        fig.tight_layout(rect=(0, 0, 1, 0.97))
        written.append(_save(fig, out_dir / f"equivariance_{stage}.png"))

    for stage in stages:
        grid_plot = _plot_equivariance_grid(metrics, stage, out_dir)
        if grid_plot is not None:
            written.append(grid_plot)

    stage = stages[-1]
    transforms = list(next(iter(variants.values()))["stages"][stage]["transforms"])
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(variants) * len(transforms) / 2, 3.8))
    width = 0.8 / len(transforms)
    for t_i, t in enumerate(transforms):
        means, stds = [], []
        for v in variants.values():
            errors = v["stages"].get(stage, {}).get("transforms", {}).get(t, {})
            spatial = [k for k in errors if not k.startswith("act")]
            if not spatial:  # no spatial layer measured (an MLP, or a model that only takes its own size)
                means.append(np.nan)
                stds.append(0.0)
                continue
            means.append(errors[spatial[-1]]["mean"])
            stds.append(errors[spatial[-1]]["std"])
        x = np.arange(len(variants)) + (t_i - (len(transforms) - 1) / 2) * width
        # Greys, not C0, C1, ...: those are the colours of models (model_color), and these bars are transforms.
        ax.bar(x, means, width, yerr=stds, capsize=3, label=t,
               color=plt.cm.Greys(0.35 + 0.45 * t_i / max(len(transforms) - 1, 1)))
    ax.set_xticks(np.arange(len(variants)), list(variants), rotation=20, fontsize=8)
    for tick, v in zip(ax.get_xticklabels(), variants.values()):  # bars are transforms; labels name the model
        tick.set_color(model_color(v.get("model", tick.get_text())))
    ax.set_ylabel("relative error, last spatial layer")
    ax.set_title(f"{stage}: transforms convolutions do not commute with ({over_seeds(metrics.get('n_seeds'))})",
                 fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    written.append(_save(fig, out_dir / "transforms.png"))
    return written


def _plot_equivariance_grid(metrics: dict[str, Any], stage: str, out_dir: Path) -> Path | None:
    """Per variant and shift mode: the last spatial layer's error over the full (dy, dx) grid (log scale)."""
    variants = {n: v for n, v in metrics["variants"].items() if stage in v["stages"]}
    modes = metrics["modes"]
    cells = {}
    for name, v in variants.items():
        for mode in modes:
            layers = v["stages"][stage]["shift"][mode]
            spatial = [k for k, r in layers.items() if r["role"] == "equivariance" and "grid" in r]
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
            grid = np.maximum(np.asarray(r["grid"]["mean"], dtype=float), 1e-9)
            image = ax.imshow(np.log10(grid), vmin=-9, vmax=0.5, cmap="magma", origin="upper")
            ax.set_title(f"{name}, {mode}: {layer} (J={r['jump'][0]})", fontsize=8,
                         color=model_color(variants[name].get("model", name)))
            ax.set_xlabel("dx")
            ax.set_ylabel("dy")
    if image is not None:
        fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label="log10 relative error (1e-9: exact)")
    fig.suptitle(f"{stage}: equivariance error of the last spatial layer over every (dy, dx) shift, "
                 f"{over_seeds(metrics.get('n_seeds'), 'mean')}", fontsize=9)
    return _save(fig, Path(out_dir) / f"equivariance_grid_{stage}.png")


def plot_pooling_invariance(metrics: dict[str, Any], out_dir: Path) -> list[Path]:
    """Invariance error vs shift, one panel per pooling type, one line per size (± std band); and error vs
    pooling size at a few shifts."""
    out_dir = Path(out_dir)
    pools = metrics["poolings"]
    if not pools:  # trained features whose every seed diverged: nothing to draw
        return []
    shifts = np.asarray(metrics["shifts"])
    types = list(dict.fromkeys(r["type"] for r in pools.values() if r["size"] is not None))
    fig, axes = plt.subplots(1, len(types) + 1, figsize=(3.6 * (len(types) + 1), 3.4), sharey=True)
    colours = plt.cm.plasma(np.linspace(0, 0.8, len(metrics["sizes"])))
    for ax, t in zip(axes, types):
        for colour, (name, r) in zip(colours, [(n, r) for n, r in pools.items() if r["type"] == t]):
            mean, std = np.asarray(r["error"]["mean"]), np.asarray(r["error"]["std"])
            ax.plot(shifts, mean, "-o", ms=3, color=colour, label=f"size {r['size']}")
            ax.fill_between(shifts, mean - std, mean + std, color=colour, alpha=0.2)
            if "shift_aligned_error" in r:
                ax.plot(shifts, r["shift_aligned_error"]["mean"], ":", color=colour, lw=1)
        ax.set_title(f"{t} pooling" + (" (dotted: after undoing the shift)" if t == "aps" else ""), fontsize=9)
        ax.set_xlabel("circular shift (every axis)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    ax = axes[-1]
    for name, r in pools.items():
        if r["size"] is None:
            ax.plot(shifts, r["error"]["mean"], "-o", ms=3, label=name)
    ax.set_title("global pooling", fontsize=9)
    ax.set_xlabel("circular shift (every axis)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    axes[0].set_ylabel("‖g(Tₛx) − g(x)‖ / ‖g(x)‖")
    fig.suptitle(f"pooling invariance on {metrics['dataset']['name']}: circular conv + ReLU features, "
                 f"{over_seeds(metrics['n_seeds'])}", fontsize=10)
    fig.tight_layout()
    written = [_save(fig, out_dir / "pooling_invariance.png")]

    picks = [s for s in (1, 2, 4) if s in set(shifts.tolist())]
    fig, axes = plt.subplots(1, len(picks), figsize=(4.2 * len(picks), 3.4), sharey=True, squeeze=False)
    for ax, s in zip(axes[0], picks):
        for t in types:
            rows = [r for r in pools.values() if r["type"] == t]
            sizes = [r["size"] for r in rows]
            ax.errorbar(sizes, [r["error"]["mean"][s] for r in rows], yerr=[r["error"]["std"][s] for r in rows],
                        marker="o", capsize=3, label=t)
        ax.set_xscale("log", base=2)
        ax.set_xticks(metrics["sizes"], [str(v) for v in metrics["sizes"]])
        ax.set_title(f"shift {s}", fontsize=10)
        ax.set_xlabel("pooling size (= stride)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("invariance error")
    fig.suptitle("larger pooling regions: invariance to larger displacements", fontsize=10)
    fig.tight_layout()
    written.append(_save(fig, out_dir / "pooling_size.png"))
    return written


def seeds_note(status: list[str] | None) -> str:
    """`` (k/n seeds diverged)`` where some seeds of a model diverged (they are left out of its numbers)."""
    bad = sum(s != "ok" for s in status or [])
    return f" ({bad}/{len(status)} seeds diverged)" if bad else ""


def plot_padding_leak(metrics: dict[str, Any], out_dir: Path) -> list[Path]:
    """Test accuracy per padding (mean ± std over seeds, seeds as dots) against chance."""
    paddings = metrics["paddings"]
    fig, ax = plt.subplots(figsize=(1.8 + 1.4 * len(paddings), 3.6))
    for i, (padding, r) in enumerate(paddings.items()):
        if "test_accuracy" not in r:  # every seed diverged
            ax.text(i, 0.05, "every seed\ndiverged", ha="center", fontsize=8)
            continue
        ax.bar(i, r["test_accuracy"]["mean"], 0.6, capsize=4,
               yerr=None if metrics.get("n_seeds") == 1 else r["test_accuracy"]["std"],
               color="tab:red" if r["pairs_identical"] else "tab:blue")
        seeds = r["per_seed"]["test_accuracy"]
        ax.plot(np.full(len(seeds), i) + np.linspace(-0.12, 0.12, len(seeds)), seeds, "k.", ms=5)
        ax.text(i, r["test_accuracy"]["mean"] + 0.03, f"{r['test_accuracy']['mean']:.3f}", ha="center", fontsize=9)
    draw_chance(ax, metrics.get("chance") or chance_level(metrics))
    ax.set_xticks(range(len(paddings)), [p + seeds_note(r.get("train_status")) for p, r in paddings.items()])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("test accuracy: which corner?")
    ax.set_title(f"padding leak on {metrics['source']} patches\n(red: the two corners get identical logits)",
                 fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return [_save(fig, Path(out_dir) / "padding_leak.png")]


def plot_feature_pooling(metrics: dict[str, Any], out_dir: Path) -> list[Path]:
    """Accuracy on each transformed test set per variant (mean ± std over seeds), and the logits' change."""
    names = metrics["transforms"]
    variants = metrics["variants"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / len(variants)
    # Every variant is the same zoo model (group_pool): its colour, with hatching for all but the first variant.
    color = model_color(metrics.get("model", "group_pool"))
    one_seed = metrics.get("n_seeds") == 1
    for i, (variant, r) in enumerate(variants.items()):
        x = np.arange(len(names)) + (i - (len(variants) - 1) / 2) * width
        if "accuracy" not in r:  # every seed diverged: named in the legend, nothing to draw
            ax.bar(x, np.zeros(len(names)), width, label=f"{variant}: every seed diverged", color="lightgray")
            continue
        style = {"color": color, "alpha": 1.0 if i == 0 else 0.55, "hatch": None if i == 0 else "//",
                 "edgecolor": "white" if i else color}
        ax.bar(x, [r["accuracy"][n]["mean"] for n in names], width,
               yerr=None if one_seed else [r["accuracy"][n]["std"] for n in names],
               capsize=3, label=f"{variant} ({r['n_params']:,} params){seeds_note(r.get('train_status'))}",
               **style)
        change = np.maximum([r["logit_change"][n]["mean"] for n in names], _FLOOR)
        ax2.bar(x, change, width, yerr=None if one_seed else [r["logit_change"][n]["std"] for n in names],
                capsize=3, label=variant, **style)
    draw_chance(ax, chance_level(metrics))
    for a in (ax, ax2):
        a.set_xticks(range(len(names)), names)
        a.grid(axis="y", alpha=0.3)
        a.legend(fontsize=8)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title("accuracy on transformed test inputs (trained upright)", fontsize=9)
    ax2.set_yscale("log")
    ax2.axhline(FLOAT32_EPS, color="gray", ls="--", lw=0.8)
    ax2.set_ylabel("‖f(Rx) − f(x)‖ / ‖f(x)‖")
    ax2.set_title(f"change of the logits (grey: float32 precision; zeros drawn at {_FLOOR:g})", fontsize=9)
    fig.suptitle(f"pooling across rotated feature maps on {metrics['dataset']['name']} "
                 f"({over_seeds(metrics['n_seeds'])})", fontsize=10)
    fig.tight_layout()
    return [_save(fig, Path(out_dir) / "feature_pooling.png")]


def plot_lie_derivative(metrics: dict[str, Any], out_dir: Path) -> list[Path]:
    """Per-layer contributions to the translation Lie derivative (one panel per model), the saw-tooth of the
    predicted probability under sub-pixel shifts, and LEE against integer-shift consistency and accuracy."""
    out_dir = Path(out_dir)
    models = {n: m for n, m in metrics["models"].items() if "lee" in m}
    if not models:
        return []
    gens = metrics["generators"]
    translate = [g for g in gens if g.startswith("translate_")]
    n_seeds = metrics["n_seeds"]
    written = []

    layered = {n: m for n, m in models.items() if "layers" in m}
    if layered:
        fig, axes = plt.subplots(len(layered), 1, figsize=(9, 2.6 * len(layered)), squeeze=False)
        for ax, (name, m) in zip(axes[:, 0], layered.items()):
            width = 0.8 / len(m["layers"])
            for i, g in enumerate(m["layers"]):
                parts = m["layers"][g]["probs"]
                layers = list(parts)
                x = np.arange(len(layers)) + (i - (len(m["layers"]) - 1) / 2) * width
                ax.bar(x, [parts[k]["mean"] for k in layers], width, label=g, color=model_color(name),
                       alpha=1.0 - 0.4 * i, yerr=[parts[k]["std"] for k in layers] if n_seeds > 1 else None,
                       capsize=2)
                ax.set_xticks(np.arange(len(layers)), layers, rotation=30, fontsize=8)
            total = m["lee"][translate[-1]]["probs"]["mse"]["mean"]
            ax.set_title(f"{name}: end-to-end LEE {total:.3g} ({translate[-1]})", fontsize=9)
            ax.set_ylabel("contribution\n(mean ||·||², softmax)", fontsize=8)
            ax.set_yscale("symlog", linthresh=1e-6)
            if len(m["layers"]) > 1:
                ax.legend(fontsize=7)
            ax.grid(axis="y", alpha=0.3)
        fig.suptitle(f"Which layers break translation equivariance, {metrics['dataset']['name']} "
                     f"({over_seeds(n_seeds)}; per pixel)", fontsize=10)
        fig.tight_layout()
        written.append(_save(fig, out_dir / "lie_layers.png"))

    saw = {n: m["sawtooth"] for n, m in models.items() if m.get("sawtooth")}
    if saw:
        fig, axes = plt.subplots(1, len(saw), figsize=(3.6 * len(saw), 3.2), squeeze=False, sharey=True)
        for ax, (name, s) in zip(axes[0], saw.items()):
            for curve in s["probability"]:
                ax.plot(s["shifts"], curve, color=model_color(name), alpha=0.8, lw=1)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("Fourier shift (pixels)")
            ax.set_ylim(0, 1.02)
            ax.grid(alpha=0.3)
        axes[0, 0].set_ylabel("p(clean predicted class)")
        fig.suptitle("Predicted-class probability of a few test inputs under sub-pixel shifts (first seed)",
                     fontsize=10)
        fig.tight_layout()
        written.append(_save(fig, out_dir / "lie_sawtooth.png"))

    gen = translate[-1]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, m in models.items():
        lee = m["lee"][gen]["probs"]["mse"]
        for ax, key in zip(axes, ("consistency", "clean_accuracy")):
            ax.errorbar(m[key]["mean"], lee["mean"], xerr=m[key]["std"] if n_seeds > 1 else None,
                        yerr=lee["std"] if n_seeds > 1 else None, fmt="o", ms=7, color=model_color(name),
                        label=name, capsize=3)
    axes[0].set_xlabel("consistency under integer rolls")
    axes[1].set_xlabel("clean test accuracy")
    for ax in axes:
        ax.set_ylabel(f"LEE ({gen}, softmax, per pixel)")
        ax.set_yscale("symlog", linthresh=1e-6)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Local equivariance error against integer-shift consistency and accuracy, "
                 f"{metrics['dataset']['name']} ({over_seeds(n_seeds)})", fontsize=10)
    fig.tight_layout()
    written.append(_save(fig, out_dir / "lie_vs_consistency.png"))
    return written


def plot_mnist1d_baselines(metrics: dict[str, Any], out_dir: Path) -> list[Path]:
    """Test accuracy per model (mean ± std over seeds) beside the paper's number."""
    models = {n: m for n, m in metrics["models"].items() if "test_accuracy" in m}
    if not models:
        return []
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(models), 4))
    x = np.arange(len(models))
    ours = [m["test_accuracy"]["mean"] for m in models.values()]
    spread = [m["test_accuracy"]["std"] if metrics["n_seeds"] > 1 else 0 for m in models.values()]
    ax.bar(x - 0.2, ours, 0.4, yerr=spread, capsize=4, color=[model_color(n) for n in models], label="equivar")
    paper = [np.nan if m["paper_accuracy"] is None else m["paper_accuracy"] for m in models.values()]
    ax.bar(x + 0.2, paper, 0.4, color="lightgrey", edgecolor="grey", label="paper")
    for xi, v in zip(x, ours):
        ax.text(xi - 0.2, v + 0.02, f"{v:.3f}", ha="center", fontsize=8)
    draw_chance(ax, chance_level(metrics))
    ax.set_xticks(x, list(models))
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    p = metrics["protocol"]
    ax.set_title(f"MNIST-1D baselines ({over_seeds(metrics['n_seeds'])}; {p['optimizer']} {p['learning_rate']:g}, "
                 f"batch {p['batch_size']}, {p['steps']} steps)", fontsize=9)
    fig.tight_layout()
    return [_save(fig, Path(out_dir) / "mnist1d_baselines.png")]


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


PLOTTERS: dict[str, Callable[[dict[str, Any], Path], list[Path]]] = {
    "shift_test": plot_shift_test,
    "anatomy": plot_anatomy,
    "conv_compare": plot_conv_compare,
    "equivariance": plot_equivariance,
    "pooling_invariance": plot_pooling_invariance,
    "padding_leak": plot_padding_leak,
    "feature_pooling": plot_feature_pooling,
    "lie_derivative": plot_lie_derivative,
    "mnist1d_baselines": plot_mnist1d_baselines,
}


def plot_metrics(metrics: dict[str, Any], out_dir: Path) -> list[Path]:
    """Draws the plots of whichever experiment produced ``metrics``."""
    name = metrics.get("experiment")
    if name not in PLOTTERS:
        raise KeyError(f"no plots for experiment {name!r}; known: {sorted(PLOTTERS)}")
    return PLOTTERS[name](metrics, out_dir)


def main(argv: list[str] | None = None) -> int:
    from equivar.io import read_json

    parser = argparse.ArgumentParser(prog="python -m equivar.plot",
                                     description="Redraw a run's plots from its metrics.json.")
    parser.add_argument("run_dir", type=Path, help="a run folder holding metrics.json")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: RUN_DIR)")
    args = parser.parse_args(argv)
    path = args.run_dir / "metrics.json"
    if not path.is_file():
        print(f"equivar.plot: error: {path} does not exist", file=sys.stderr)
        return 2
    for written in plot_metrics(read_json(path), args.out or args.run_dir):
        print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
