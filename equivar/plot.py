"""Figures drawn from ``metrics.json``-shaped dicts only (no JAX): ``python -m equivar.plot RUN_DIR`` redraws.

Each experiment registers a plotter that takes the metrics dict and an output folder and returns the files
it wrote.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

AXIS_NAMES = {1: ("shift",), 2: ("dy (rows)", "dx (columns)")}


def _axis_slice(shifts: np.ndarray, axis: int) -> np.ndarray:
    """Indices of the grid points where every other axis is unshifted, sorted along ``axis``."""
    others = [a for a in range(shifts.shape[1]) if a != axis]
    rows = np.where((shifts[:, others] == 0).all(axis=1))[0] if others else np.arange(len(shifts))
    return rows[np.argsort(shifts[rows, axis])]


def plot_shift_test(metrics: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    shifts = np.asarray(metrics["shifts"])
    rank = shifts.shape[1]
    models = metrics["models"]
    mode = metrics["shift_mode"]
    dataset = metrics["dataset"]["name"]
    n_seeds = metrics["n_seeds"]
    written = []

    fig, axes = plt.subplots(1, rank, figsize=(6 * rank, 4.2), squeeze=False)
    for axis in range(rank):
        ax = axes[0, axis]
        rows = _axis_slice(shifts, axis)
        for name, m in models.items():
            mean = np.asarray(m["shift_accuracy"]["mean"])[rows]
            std = np.asarray(m["shift_accuracy"]["std"])[rows]
            x = shifts[rows, axis]
            line, = ax.plot(x, mean, marker="o", ms=3, label=name)
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
        ax.set_xlabel(f"{AXIS_NAMES[rank][axis]} shift (pixels, mode={mode})" if rank > 1 else
                      f"shift (positions, mode={mode})")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if rank > 1:
            ax.set_title(f"shift along {AXIS_NAMES[rank][axis]}, other axis 0")
    axes[0, 0].legend(loc="lower center")
    fig.suptitle(f"Accuracy vs shift on {dataset} (mean ± std over {n_seeds} seeds)")
    fig.tight_layout()
    written.append(_save(fig, out_dir / "accuracy_vs_shift.png"))

    if rank == 2:
        side = int(round(np.sqrt(len(shifts))))
        lo = min(float(np.min(m["shift_accuracy"]["mean"])) for m in models.values())
        fig, axes = plt.subplots(1, len(models), figsize=(4.6 * len(models) + 1.0, 4.4), squeeze=False,
                                 layout="constrained")
        for i, (ax, (name, m)) in enumerate(zip(axes[0], models.items())):
            grid = np.asarray(m["shift_accuracy"]["mean"]).reshape(side, side)
            extent = (shifts[:, 1].min() - 0.5, shifts[:, 1].max() + 0.5,
                      shifts[:, 0].max() + 0.5, shifts[:, 0].min() - 0.5)
            im = ax.imshow(grid, vmin=lo, vmax=1.0, cmap="viridis", extent=extent)
            ax.set_title(f"{name}: mean {grid.mean():.3f}, min {grid.min():.3f}")
            ax.set_xlabel("dx (columns)")
            if i == 0:
                ax.set_ylabel("dy (rows)")
        fig.colorbar(im, ax=axes[0].tolist(), label="test accuracy", shrink=0.85)
        fig.suptitle(f"Accuracy over (dy, dx) shifts on {dataset}, mode={mode}, mean of {n_seeds} seeds")
        written.append(_save(fig, out_dir / "accuracy_heatmap.png"))

    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(models), 4))
    names = list(models)
    means = [models[n]["consistency"]["mean"] for n in names]
    stds = [models[n]["consistency"]["std"] for n in names]
    bars = ax.bar(names, means, yerr=stds, capsize=5, color=[f"C{i}" for i in range(len(names))])
    for bar, mean in zip(bars, means):
        ax.text(bar.get_x() + bar.get_width() / 2, min(mean, 1.0) + 0.02, f"{mean:.3f}", ha="center")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("consistency (same class under two random shifts)")
    ax.set_title(f"Shift consistency, {dataset}, mode={mode}\n(mean ± std over {n_seeds} seeds)")
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
            rf = "×".join(str(v) for v in row["rf_forward"])
            seen = "×".join(str(v) for v in row["support_size"])
            if seen != rf:
                rf += f", sees {seen}"
            ok = {True: "grad = analytic", False: "grad ≠ analytic"}.get(row.get("empirical_equals_analytic"), "")
            ax.set_title(f"{row['layer']}: RF {rf}\n{ok}", fontsize=9)
            (lo0, hi0), *rest = row["support_range"]
            if m.ndim == 2:
                ax.imshow(m, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
                (lo1, hi1) = rest[0]
                ax.add_patch(plt.Rectangle((lo1 - 0.5, lo0 - 0.5), hi1 - lo1 + 1, hi0 - lo0 + 1, fill=False,
                                           edgecolor="cyan", linewidth=1.2))
                ax.set_xticks([])
                ax.set_yticks([])
            elif m.ndim == 1:
                ax.bar(np.arange(len(m)), m, width=1.0, color="tab:purple")
                ax.axvspan(lo0 - 0.5, hi0 + 0.5, color="tab:cyan", alpha=0.2)
                ax.set_xlim(-0.5, len(m) - 0.5)
                ax.set_ylim(0, 1.05)
                ax.tick_params(labelsize=7)
        for ax in axes.ravel()[len(rows):]:
            ax.axis("off")
        shape = "×".join(str(v) for v in model["input_shape"])
        fig.suptitle(f"{name} on {shape}: effective receptive field of each layer's central unit "
                     f"(mean |∂unit/∂input| over {metrics['n_inputs']} inputs; box/band: analytic extent)",
                     fontsize=10)
        fig.tight_layout()
        written.append(_save(fig, out_dir / f"erf_{name}.png"))
    return written


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


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


PLOTTERS: dict[str, Callable[[dict[str, Any], Path], list[Path]]] = {
    "shift_test": plot_shift_test,
    "anatomy": plot_anatomy,
    "conv_compare": plot_conv_compare,
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
