"""Figure helpers every experiment's plots share (no JAX), and ``python -m equivar.plot RUN_DIR``, which
redraws a run's plots from its metrics.json with the plot function of the experiment that wrote it.

Each experiment draws its own figures (its module's ``plot``); what they share lives here: one colour per
model name, the same in every figure and process; the chance line; ± std bands; seed counts in titles;
saving.
"""

from __future__ import annotations

import argparse
import colorsys
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
from numpy.typing import ArrayLike  # noqa: E402

from equivar.text import seeds_phrase  # noqa: E402

AXIS_NAMES = {1: ("shift",), 2: ("dy (rows)", "dx (columns)")}
FLOAT32_EPS = 1.2e-7  # relative rounding of float32: errors below this are "exact"
LOG_FLOOR = 1e-9  # exact zeros are drawn here on log axes

# The zoo's models keep fixed colours (tab10, in the order the default runs drew them); every other name (a
# variant, a user's model) gets a colour of its own from a hash of its name.
MODEL_COLORS = {"mlp": "#1f77b4", "lenet": "#ff7f0e", "local": "#2ca02c", "cnn_gap": "#d62728",
                "group_pool": "#9467bd", "stack": "#8c564b", "cnn_aps": "#17becf", "lenet_blur": "#bcbd22",
                "lenet_aps": "#e377c2", "paper_linear": "#7f7f7f", "paper_mlp": "#393b79", "paper_cnn": "#637939",
                "alias_free": "#7b4173"}
CHANCE_STYLE: dict[str, Any] = {"color": "gray", "ls": "--", "lw": 1}


# Colours for names outside the zoo: well separated from each other and from the zoo's (tab20's light
# shades, a few darker ones, black, grey and gold: never a near-copy of a zoo colour), taken in a name's
# hash order; a name whose preferred colour another name of this process already holds gets the next
# free one, so two user models of a figure never look alike.
EXTRA_COLORS = ("#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d",
                "#9edae5", "#8c6d31", "#843c39", "#5254a3", "#000000", "#636363", "#e7ba52", "#756bb1")
_ASSIGNED: dict[str, str] = {}


def model_color(name: str) -> str:
    """The colour a model is drawn in, the same in every plot of a run and of a redraw.

    Args:
        name: A model name as it appears in a result's ``models`` (e.g. ``"lenet"`` or ``"my_net"``).

    Returns:
        A hex colour: a fixed one for the zoo's models; otherwise one of ``EXTRA_COLORS`` chosen by a hash of
        the name (stable across processes), moved to the next free one when another name of this process holds
        it; past 16 such names, a hue from the hash.
    """
    if name in MODEL_COLORS:
        return MODEL_COLORS[name]
    if name in _ASSIGNED:
        return _ASSIGNED[name]
    # hashlib, not hash(): Python salts str hashes per process, and the colour must not change between runs.
    digest = int.from_bytes(hashlib.sha256(str(name).encode()).digest()[:4], "big")
    taken = set(_ASSIGNED.values())
    for k in range(len(EXTRA_COLORS)):
        color = EXTRA_COLORS[(digest + k) % len(EXTRA_COLORS)]
        if color not in taken:
            break
    else:
        hue = (digest % 48) / 48
        lightness = (0.38, 0.48, 0.58)[(digest // 48) % 3]
        r, g, b = colorsys.hls_to_rgb(hue, lightness, 0.75)
        color = "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in (r, g, b)))
    _ASSIGNED[name] = color
    return color


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


def draw_chance(ax: plt.Axes, chance: float | None) -> None:
    """The dashed grey "chance" line of an accuracy axis; nothing when chance is unknown."""
    if chance is not None:
        ax.axhline(chance, label="chance", zorder=1.5, **CHANCE_STYLE)


def band(ax: plt.Axes, x: ArrayLike, mean: ArrayLike, std: ArrayLike, n: int, color: Any, label: str | None = None,
         **line: Any) -> None:
    """A mean line with its ± std band over seeds (no band for one seed: a spread of one value is none)."""
    mean_a, std_a = np.asarray(mean, dtype=float), np.asarray(std, dtype=float)
    ax.plot(x, mean_a, color=color, label=label, **line)
    if n > 1:
        ax.fill_between(x, mean_a - std_a, mean_a + std_a, color=color, alpha=0.2)


def error_bars(stds: Sequence[float], n: int) -> Sequence[float] | None:
    """The ± std error bars of bars summarising ``n`` seeds (none for one seed)."""
    return list(stds) if n > 1 else None


def clipped_errors(means: Sequence[float], stds: Sequence[float], n: int) -> np.ndarray | None:
    """± std error bars for a quantity that cannot be negative: the lower bar stops at 0 (``yerr`` rows)."""
    if n <= 1:
        return None
    m, sd = np.asarray(means, dtype=float), np.asarray(stds, dtype=float)
    return np.stack([np.minimum(sd, m), sd])


def nonnegative_log_axis(ax: plt.Axes, values: Sequence[float]) -> None:
    """A log y axis for non-negative values (an error, a squared norm) that stays readable: symlog only when a
    value is 0 (linear below the smallest value's decade, or below 5 decades under the largest: float noise
    reads as 0), never below 0; on a plain log axis, a few labelled ticks when every value lies within one
    decade (where the decade ticks would fall outside)."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    positive = v[v > 0]
    if not len(positive):
        return
    lo, hi = positive.min(), positive.max()
    if (v <= 0).any():  # linear from 0 up to the smallest value's decade, at most 5 decades below the largest
        floor = max(np.floor(np.log10(lo)), np.floor(np.log10(hi)) - 5)
        ax.set_yscale("symlog", linthresh=10 ** floor)
        ax.set_ylim(bottom=0)
    else:
        ax.set_yscale("log")
        if hi / lo < 10:
            ticks = sorted({float(f"{t:.2g}") for t in np.geomspace(lo, hi, 4)})
            ax.set_yticks(ticks, [f"{t:.2g}" for t in ticks])
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylim(top=hi * 1.6)  # head room: the tallest bar and its error bar stay inside the frame


def share_axis(ax: plt.Axes, label: str) -> None:
    """An axis for a share (accuracy, consistency): 0 to 1, so no figure exaggerates a difference."""
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(label)


def save(fig: plt.Figure, path: Path) -> Path:
    """Writes ``fig`` to ``path`` (110 dpi) and closes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


TRAINING_FIGURE = "training.png"
FEW_TRAININGS = 8  # up to this many trainings share two panels (16 legend entries with the held-out curves)


def training_figure(result: Any, out_dir: Path) -> list[Path]:
    """``training.png``: per model, the training loss and accuracy (mean over the epoch's steps, solid) and the
    held-out ones (after each epoch, inference mode, dashed) against the epoch, mean ± std over the seeds that
    stayed finite. Up to ``FEW_TRAININGS`` trainings share one loss and one accuracy panel; more (a run that
    trains every model several times) get one accuracy panel each, so every curve stays readable. Nothing
    when no model of the run was trained in it.

    Args:
        result: an experiment's result (``models`` and ``unmeasured`` hold records with ``training``).
        out_dir: where to write.
    """
    records = {name: r for name, r in [*result.models.items(), *result.unmeasured.items()]
               if getattr(r, "training", None) is not None}
    if not records:
        return []
    many = len(records) > FEW_TRAININGS
    if many:
        cols = min(6, len(records))
        rows = -(-len(records) // cols)
        fig, grid = plt.subplots(rows, cols, figsize=(2.4 * cols + 0.6, 2.0 * rows + 1.1), sharex=True,
                                 sharey=True, squeeze=False)
        for ax in grid.flat[len(records):]:
            ax.set_visible(False)
    else:
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12.5, 4.2))
    n_seeds, held = 0, set()
    for i, (name, record) in enumerate(records.items()):
        t = record.training
        color = model_color(getattr(record, "model", name))  # a model trained several times keeps its colour
        curves = [("loss", "accuracy", "-", "train")]
        if t.heldout_loss is not None:
            curves.append(("heldout_loss", "heldout_accuracy", "--", "held-out"))
            held.add(int(t.heldout_examples))
        panels = [(grid.flat[i], "accuracy")] if many else [(ax_loss, "loss"), (ax_acc, "accuracy")]
        for loss_key, acc_key, style, kind in curves:
            for ax, quantity in panels:
                key = loss_key if quantity == "loss" else acc_key
                values = np.asarray(getattr(t, key), dtype=float)  # (seeds, epochs); NaN after a divergence
                finite = np.isfinite(values).any(axis=1)
                if not finite.any():
                    continue
                kept = values[finite]
                n_seeds = max(n_seeds, len(kept))
                epochs = np.arange(1, kept.shape[1] + 1)
                with np.errstate(invalid="ignore"):
                    mean, std = np.nanmean(kept, axis=0), np.nanstd(kept, axis=0)
                ax.plot(epochs, mean, color=color, label=kind if many else f"{name} ({kind})", ls=style,
                        marker="o" if len(epochs) < 12 else None, ms=3)
                if len(kept) > 1:  # ± std; on the log axis the lower edge stops at the lowest seed (> 0)
                    low = np.maximum(mean - std, np.nanmin(kept, axis=0)) if quantity == "loss" else mean - std
                    ax.fill_between(epochs, low, mean + std, color=color, alpha=0.2)
        if many:
            ax = grid.flat[i]
            ax.set_title(name, fontsize=8)
            classes = getattr(record, "classes", None)  # a training on some of the classes: its own chance
            n_classes = len(classes) if classes else (result.dataset.n_classes if result.dataset else None)
            draw_chance(ax, 1.0 / n_classes if n_classes else None)
    where = f" on {result.dataset.name}" if result.dataset is not None else ""
    counts = sorted(held)
    examples = "" if not counts else str(counts[0]) if len(counts) == 1 else f"{counts[0]} to {counts[-1]}"
    heldout = f"; dashed: {examples} held-out test examples after each epoch" if counts else ""
    if many:
        for ax in grid.flat[:len(records)]:
            ax.set_ylim(0, 1.05)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        for ax in grid[-1]:
            ax.set_xlabel("epoch")
        for ax in grid[:, 0]:
            ax.set_ylabel("accuracy")
        fig.suptitle(f"Training accuracy{where}, {len(records)} trainings ({over_seeds(n_seeds)})\nsolid: "
                     f"training batches{heldout}; grey: chance; every loss is in metrics.json", fontsize=10)
    else:
        ax_loss.set_yscale("log")
        ax_loss.set_ylabel("cross-entropy loss")
        share_axis(ax_acc, "accuracy")
        if result.dataset is not None:
            draw_chance(ax_acc, 1.0 / result.dataset.n_classes)
        for ax in (ax_loss, ax_acc):
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        ax_acc.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        fig.suptitle(f"Training curves{where} ({over_seeds(n_seeds)})\nsolid: training batches{heldout}; the "
                     "log-scale loss band is cut at the lowest seed's loss", fontsize=10)
    fig.tight_layout()
    return [save(fig, Path(out_dir) / TRAINING_FIGURE)]


def main(argv: list[str] | None = None) -> int:
    """``python -m equivar.plot RUN_DIR [--out DIR]``."""
    from equivar.config import load_experiment, read_result
    from equivar.errors import UserError

    parser = argparse.ArgumentParser(prog="python -m equivar.plot",
                                     description="Redraw a run's plots from its metrics.json.")
    parser.add_argument("run_dir", type=Path, help="a run folder holding metrics.json")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: RUN_DIR)")
    args = parser.parse_args(argv)
    try:
        result = read_result(args.run_dir)
        module = load_experiment(result.module)
    except UserError as err:
        print(f"equivar.plot: error: {err}", file=sys.stderr)
        return 2
    out = args.out or args.run_dir
    for written in [*module.plot(result, out), *training_figure(result, out)]:
        print(written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
