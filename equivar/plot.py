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


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


PLOTTERS: dict[str, Callable[[dict[str, Any], Path], list[Path]]] = {
    "shift_test": plot_shift_test,
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
