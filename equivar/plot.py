"""Figure helpers every experiment's plots share (no JAX), and ``python -m equivar.plot RUN_DIR``, which
redraws a run's plots from its metrics.json with the plot function of the experiment that wrote it.

Each experiment draws its own figures (its module's ``plot``); what they share lives here: one colour per
model name, the same in every figure and process; the chance line; ± std bands; seed counts in titles;
saving.
"""

from __future__ import annotations

import argparse
import colorsys
import contextlib
import hashlib
import re
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.axis  # noqa: E402
import matplotlib.category  # noqa: E402
import matplotlib.colors  # noqa: E402
import matplotlib.layout_engine  # noqa: E402
import matplotlib.legend  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.text  # noqa: E402
import matplotlib.ticker  # noqa: E402
import matplotlib.transforms  # noqa: E402
import numpy as np  # noqa: E402
from numpy.typing import ArrayLike  # noqa: E402

from equivar.results import seeds_phrase  # noqa: E402

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
    else:  # a hue and lightness from the hash, moved on to the next free one (144 in all)
        for k in range(144):
            step = digest + k
            r, g, b = colorsys.hls_to_rgb((step % 48) / 48, (0.38, 0.48, 0.58)[(step // 48) % 3], 0.75)
            color = "#{:02x}{:02x}{:02x}".format(*(round(255 * c) for c in (r, g, b)))
            if color not in taken and color not in MODEL_COLORS.values():
                break
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
        if hi / lo < 10:  # a few labelled ticks (below the values too where they are all alike: one model)
            lo = min(lo, hi / 3)
            ticks = sorted({float(f"{t:.2g}") for t in np.geomspace(lo, hi, 4)})
            ax.set_yticks(ticks, [f"{t:.2g}" for t in ticks])
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_ylim(bottom=min(ax.get_ylim()[0], ticks[0] / 1.3))
    ax.set_ylim(top=hi * 1.6)  # head room: the tallest bar and its error bar stay inside the frame


def dot_chart(ax: plt.Axes, names: Sequence[str], values: Sequence[Any], fontsize: float = 8) -> None:
    """A non-negative quantity that spans decades (an LEE), one dot per model with its ± std over seeds (cut at
    0), on a log axis (:func:`nonnegative_log_axis`): dots, not bars, since a bar on a log axis starts at an
    arbitrary floor and its length means nothing.

    Args:
        ax: where to draw.
        names: the models, one tick each (in their colours: the dots; the tick labels stay black).
        values: a ``MeanStd`` (``mean``, ``std``, ``n``) per name.
    """
    means, stds = [float(v.mean) for v in values], [float(v.std) for v in values]
    errors = clipped_errors(means, stds, values[0].n if values else 1)
    for i, name in enumerate(names):
        ax.errorbar([i], [means[i]], yerr=None if errors is None else errors[:, i:i + 1], fmt="o", ms=6,
                    color=model_color(name), capsize=3)
    ax.set_xticks(np.arange(len(names)), list(names), fontsize=fontsize)  # save() rotates them where crowded
    ax.set_xlim(-0.6, len(names) - 0.4)
    nonnegative_log_axis(ax, means + [m + s for m, s in zip(means, stds)])
    ax.grid(axis="y", alpha=0.3)


def integer_ticks(axis: matplotlib.axis.Axis, lo: float, hi: float, most: int = 8) -> None:
    """Whole-number ticks (epochs, integer shifts, radii) from ``lo`` to ``hi``: at most ``most`` labelled, never a
    fraction; the one value itself when ``lo == hi`` (a single epoch)."""
    if hi <= lo:
        axis.set_ticks([lo], [f"{lo:g}"])
        return
    axis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=min(most, int(hi - lo) + 1), integer=True,
                                                         min_n_ticks=2))


def share_axis(ax: plt.Axes, label: str) -> None:
    """An axis for a share (accuracy, consistency): 0 to 1, so no figure exaggerates a difference."""
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(label)


DPI = 110  # every PNG's resolution


def save(fig: plt.Figure, path: Path) -> Path:
    """Writes ``fig`` to ``path`` (``DPI``) and closes it. Titles too wide for their room are wrapped and tick
    labels that run into each other rotated or thinned first (:func:`fit_figure`); :func:`figure_problems`
    lists what still does not fit or read (tests/test_figures.py calls it on every figure saved)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fit_figure(fig)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


# Figures that fit their canvas and read: text colours, wrapping, legends, and the checks.

TEXT_CONTRAST = 4.5  # text drawn in a model's colour gets at least this contrast against white (WCAG AA)
MIN_CONTRAST = 3.0  # figure_problems flags text below this (WCAG's minimum, for large text)
TOLERANCE = 2.0  # pixels an artist may stick out or two texts may overlap (antialiasing, rounding)
TICK_GAP = 2.0  # pixels between two tick labels of an axis, at least (touching labels read as one)


def _luminance(color: Any) -> float:
    """WCAG relative luminance of an (opaque) colour."""
    rgb = np.asarray(matplotlib.colors.to_rgb(color), dtype=float)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return float(linear @ [0.2126, 0.7152, 0.0722])


def contrast_ratio(color: Any, background: Any = "white") -> float:
    """WCAG contrast ratio (1 to 21) of ``color`` (its alpha blended over the background) on ``background``."""
    r, g, b, a = matplotlib.colors.to_rgba(color)
    bg = np.asarray(matplotlib.colors.to_rgb(background))
    blended = a * np.array([r, g, b]) + (1 - a) * bg
    hi, lo = sorted((_luminance(blended), _luminance(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def text_color(color: Any, contrast: float = TEXT_CONTRAST) -> str:
    """``color`` darkened (same hue and saturation, less lightness) until text in it reads on white: what a title
    or a tick label drawn in a model's colour uses (the model's lines and markers keep the colour itself)."""
    r, g, b = matplotlib.colors.to_rgb(color)
    hue, lightness, saturation = colorsys.rgb_to_hls(r, g, b)
    while lightness > 0 and contrast_ratio((r, g, b)) < contrast:
        lightness = max(0.0, lightness - 0.02)
        r, g, b = colorsys.hls_to_rgb(hue, lightness, saturation)
    return matplotlib.colors.to_hex((r, g, b))


def model_text_color(name: str) -> str:
    """The colour of text naming model ``name``: its :func:`model_color`, darkened where too pale to read."""
    return text_color(model_color(name))


_UNBREAKABLE = re.compile(r"(\d+) (seeds?|trainings?|inputs|epochs?)|(±) ")


def wrap(text: str, width: int) -> str:
    """``text`` wrapped to ``width`` characters per line, its own line breaks kept; "3 seeds" and "± std" are
    never cut apart."""
    width = max(12, int(width))
    kept = _UNBREAKABLE.sub(lambda m: m.group(0).replace(" ", "\u00a0"), text)
    lines = [textwrap.fill(line, width, break_on_hyphens=False, break_long_words=False) or line
             for line in kept.split("\n")]
    return "\n".join(lines).replace("\u00a0", " ")


def chars_per_line(width_inches: float, fontsize: float) -> int:
    """About how many characters of a proportional font at ``fontsize`` points fit in ``width_inches``."""
    return max(12, int(width_inches * 72 / (0.56 * fontsize)))


def legend_columns(n_entries: int, width_inches: float, longest: int, fontsize: float = 8) -> int:
    """Columns for a legend spread below a plot ``width_inches`` wide: as many entries side by side as fit."""
    entry = (longest + 6) * 0.56 * fontsize / 72  # the handle and padding: about 6 characters
    return int(max(1, min(n_entries, width_inches // max(entry, 0.1))))


def legend_below(ax: plt.Axes, handles: list | None = None, labels: list[str] | None = None, fontsize: float = 8,
                 width: float | None = None, **kwargs: Any) -> matplotlib.legend.Legend | None:
    """A legend under an axes, below its tick labels and x label (:func:`fit_figure` moves it there once they
    are drawn), with as many columns as fit ``width`` inches (default: the axes' width): it never covers a
    curve, and a figure laid out with ``layout="constrained"`` makes room for it however many entries."""
    if handles is None or labels is None:
        handles, labels = ax.get_legend_handles_labels()
    if not labels:
        return None
    if width is None:
        fig = ax.get_figure(root=True)
        assert fig is not None
        width = ax.get_position().width * fig.get_figwidth()
    ncol = legend_columns(len(labels), width, max(len(str(label)) for label in labels), fontsize)
    legend = ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=ncol,
                       fontsize=fontsize, **kwargs)
    legend._equivar_below = True  # type: ignore[attr-defined]
    return legend


def _place_legends(fig: plt.Figure) -> bool:
    """Moves every :func:`legend_below` legend to just under its axes' tick labels and x label."""
    changed = False
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None or not getattr(legend, "_equivar_below", False) or not ax.get_visible():
            continue
        box = ax.get_window_extent()
        below = ax.xaxis.get_tightbbox() if ax.axison else None
        bottom = min(box.y0, below.y0) if below is not None else box.y0
        offset = (box.y0 - bottom + 4) / fig.dpi  # inches from the frame down to the legend's top
        current = getattr(legend, "_equivar_offset", None)
        if current is None or abs(current - offset) > 1 / 72:
            legend.set_bbox_to_anchor((0.5, 0.0), transform=ax.transAxes + matplotlib.transforms.ScaledTranslation(
                0, -offset, fig.dpi_scale_trans))
            legend._equivar_offset = offset  # type: ignore[attr-defined]
            changed = True
    return changed


def _titles(ax: plt.Axes) -> list[matplotlib.text.Text]:
    """An axes' centre, left and right titles (``set_title(loc=...)``), in that order."""
    return [ax.title, *[getattr(ax, f"_{side}_title") for side in ("left", "right")]]


def _room(ax: plt.Axes, others: list[plt.Axes], width: float) -> tuple[float, float]:
    """The horizontal span (display pixels) an axes' title may use: to halfway to its neighbours in its row."""
    box = ax.get_window_extent()
    left, right = 0.0, width
    for other in others:
        o = other.get_window_extent()
        if other is ax or o.y1 <= box.y0 or o.y0 >= box.y1:  # not beside it
            continue
        if o.x1 <= box.x0 + 1:
            left = max(left, (o.x1 + box.x0) / 2)
        elif o.x0 >= box.x1 - 1:
            right = min(right, (box.x1 + o.x0) / 2)
    return left, right


def fit_figure(fig: plt.Figure, dpi: float = DPI) -> None:
    """Makes a figure's texts fit before it is saved (run by :func:`save`): every title wider than its room is
    wrapped (the suptitle and the figure's other texts to the canvas, an axes' title to its share of its row:
    halfway to its neighbours); tick labels that run into each other are rotated (30, 45, then 90 degrees,
    then a smaller font) where they name categories, and thinned where they are numbers; a :func:`legend_below`
    legend is moved to just under its axes' labels. A figure laid out with ``layout="constrained"`` makes room
    for the extra lines, the rotated labels and the legends at the next draw."""
    original = fig.dpi
    fig.dpi = dpi
    try:
        for _ in range(6):
            fig.draw_without_rendering()
            with _drawn_state():
                changed = _spread_ticks(fig)
            changed = _wrap_titles(fig) or changed
            changed = _place_legends(fig) or changed
            if not changed:
                break
            engine = fig.get_layout_engine()
            if isinstance(engine, matplotlib.layout_engine.TightLayoutEngine):
                engine.execute(fig)
    finally:
        fig.dpi = original


def _wrap_titles(fig: plt.Figure) -> bool:
    width = fig.bbox.width
    pad = 0.01 * width
    axes = [ax for ax in fig.axes if ax.get_visible()]
    wide = []
    for text in fig.texts:
        if text.get_visible() and text.get_text():
            x = text.get_transform().transform(text.get_position())[0]
            room = {"left": width - pad - x, "right": x - pad,
                    "center": 2 * min(x - pad, width - pad - x)}[text.get_horizontalalignment()]
            wide.append((text, room))
    for ax in axes:
        left, right = _room(ax, axes, width)
        box = ax.get_window_extent()
        for loc, title in zip(("center", "left", "right"), _titles(ax)):
            if title.get_visible() and title.get_text():
                room = {"center": 2 * min(box.x0 + box.width / 2 - left, right - box.x0 - box.width / 2),
                        "left": right - box.x0, "right": box.x1 - left}[loc]
                wide.append((title, room - pad))
    changed = False
    for text, room in wide:
        drawn = text.get_window_extent().width
        if drawn > room + 1:
            longest = max(len(line) for line in text.get_text().split("\n"))
            wrapped = wrap(text.get_text(), int(longest * room / drawn * 0.95))
            changed = changed or wrapped != text.get_text()
            text.set_text(wrapped)
    return changed


ROTATIONS = (30, 45, 90)


def _categorical(axis: matplotlib.axis.Axis) -> bool:
    """Whether an axis' ticks were chosen (``set_xticks(positions, names)``, bars per name), not a scale."""
    return isinstance(axis.get_major_locator(), (matplotlib.ticker.FixedLocator,
                                                 matplotlib.category.StrCategoryLocator))


def _overlapping(labels: list[matplotlib.text.Text], gap: float = TICK_GAP) -> bool:
    return any(_rotated_overlap(a, b, -gap) for a, b in zip(labels, labels[1:]))


def _spread_ticks(fig: plt.Figure) -> bool:
    """Rotates (categories) or thins (numbers) the tick labels of every axis where two overlap."""
    changed = False
    for ax in fig.axes:
        if not (ax.get_visible() and ax.axison):
            continue
        for axis in (ax.xaxis, ax.yaxis):
            labels = _ticklabels(axis)
            if not _overlapping(labels):
                continue
            if not _categorical(axis):  # numbers: fewer
                if axis.get_scale() == "linear":
                    integer = getattr(axis.get_major_locator(), "_integer", False)
                    axis.set_major_locator(matplotlib.ticker.MaxNLocator(max(2, len(labels) // 2),
                                                                         integer=integer))
                    changed = True
                continue
            rotation = labels[0].get_rotation()
            later = [r for r in ROTATIONS if r > rotation + 0.5]
            size = float(labels[0].get_fontsize())
            if axis is ax.xaxis and later:
                for tick in axis.get_major_ticks():
                    for label in (tick.label1, tick.label2):
                        label.set_rotation(later[0])
                        label.set_horizontalalignment("right")
                        label.set_verticalalignment("center" if later[0] == 90 else "top")
                        label.set_rotation_mode("anchor")
                changed = True
            elif size > 6:
                axis.set_tick_params(labelsize=max(6.0, size - 1))
                changed = True
    return changed


_CACHE: dict[int, Any] | None = None  # tick labels and extents while one drawn state is being judged


@contextlib.contextmanager
def _drawn_state() -> Iterator[None]:
    """Within it, each axis' tick labels and each artist's extent are computed once (the figure does not change)."""
    global _CACHE
    previous, _CACHE = _CACHE, {}
    try:
        yield
    finally:
        _CACHE = previous


def _ticklabels(axis: matplotlib.axis.Axis) -> list[matplotlib.text.Text]:
    """The tick labels an axis draws (ticks inside the view limits, visible, non-empty), in their order along
    the axis (label1 and label2 apart)."""
    if _CACHE is not None:
        if id(axis) not in _CACHE:
            _CACHE[id(axis)] = _find_ticklabels(axis)
        return list(_CACHE[id(axis)])
    return _find_ticklabels(axis)


def _find_ticklabels(axis: matplotlib.axis.Axis) -> list[matplotlib.text.Text]:
    if not axis.get_visible():
        return []
    labels: dict[int, list[matplotlib.text.Text]] = {1: [], 2: []}
    for tick in axis._update_ticks():  # type: ignore[attr-defined]  # the ticks Axis.draw draws
        if tick.get_visible():
            for side, t in ((1, tick.label1), (2, tick.label2)):
                if t.get_visible() and t.get_text():
                    labels[side].append(t)
    along = 0 if isinstance(axis, matplotlib.axis.XAxis) else 1
    ordered = []
    for side in (1, 2):
        ordered += sorted(labels[side], key=lambda t: float(np.mean(t.get_window_extent().get_points()[:, along])))
    return ordered


def _name(ax: plt.Axes, i: int) -> str:
    title = ax.get_title() or ax.get_title("left") or ax.get_ylabel() or ax.get_xlabel()
    return f"axes {i}" + (f" ({title.splitlines()[0][:40]!r})" if title else "")


def _describe(text: matplotlib.text.Text) -> str:
    return repr(text.get_text().replace("\n", " ")[:60])


def _drawn_artists(fig: plt.Figure) -> list[tuple[str, Any, Any, str]]:
    """Every drawn piece of the figure: (description, artist, the axes it belongs to or None, role), the role one
    of figure text, figure legend, axes, title, text (inside an axes: a bar's value), label, offset, tick,
    legend."""
    out: list[tuple[str, Any, Any, str]] = []
    for t in fig.texts:
        if t.get_visible() and t.get_text():
            out.append((f"figure text {_describe(t)}", t, None, "figure text"))
    for legend in fig.legends:
        if legend.get_visible():
            out.append(("figure legend", legend, None, "figure legend"))
    for i, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        name = _name(ax, i)
        if ax.axison or ax.patch.get_visible():
            out.append((name, ax, ax, "axes"))
        for role, t in [*[("title", t) for t in _titles(ax)], *[("text", t) for t in ax.texts]]:
            if t.get_visible() and t.get_text():
                out.append((f"{name}: {role} {_describe(t)}", t, ax, role))
        if ax.axison:
            for axis, letter in ((ax.xaxis, "x"), (ax.yaxis, "y")):
                if not axis.get_visible():
                    continue
                for t, role in [(axis.label, "label"), (axis.offsetText, "offset")]:
                    if t.get_visible() and t.get_text():
                        out.append((f"{name}: {letter} {role} {_describe(t)}", t, ax, role))
                out += [(f"{name}: {letter} tick label {_describe(t)}", t, ax, "tick") for t in _ticklabels(axis)]
        own = ax.get_legend()
        if own is not None and own.get_visible():
            out.append((f"{name}: legend", own, ax, "legend"))
    return out


def _extent(artist: Any) -> Any:
    """An artist's window extent (None when not finite), once per drawn state."""
    if _CACHE is not None and ("extent", id(artist)) in _CACHE:
        return _CACHE["extent", id(artist)]  # type: ignore[index]
    box = artist.get_window_extent()
    box = box if np.isfinite(box.get_points()).all() else None
    if _CACHE is not None:
        _CACHE["extent", id(artist)] = box  # type: ignore[index]
    return box


def outside_canvas(fig: plt.Figure, tolerance: float = TOLERANCE, draw: bool = True) -> list[str]:
    """What the figure draws (partly) outside its canvas, described: every visible axes, title, suptitle, axis
    label, tick label, legend and text whose window extent leaves the figure's bbox by more than
    ``tolerance`` pixels. An empty list: everything fits."""
    if draw:
        fig.draw_without_rendering()
    canvas = fig.bbox
    problems = []
    for description, artist, _, _ in _drawn_artists(fig):
        box = _extent(artist)
        if box is None or (box.width == 0 and box.height == 0):
            continue
        sides = {"left": canvas.x0 - box.x0, "right": box.x1 - canvas.x1, "bottom": canvas.y0 - box.y0,
                 "top": box.y1 - canvas.y1}
        out = {side: by for side, by in sides.items() if by > tolerance}
        if out:
            problems.append(f"{description} is outside the canvas (" + ", ".join(
                f"{by:.0f} px past the {side}" for side, by in out.items()) + ")")
    return problems


def _rotated_overlap(a: matplotlib.text.Text, b: matplotlib.text.Text, tolerance: float) -> bool:
    """Whether two labels' (rotated) rectangles overlap by more than ``tolerance`` pixels (a negative tolerance:
    come closer than that)."""
    boxes = []
    for t in (a, b):
        angle = np.deg2rad(t.get_rotation())
        rotation = t.get_rotation()
        t.set_rotation(0)
        flat = t.get_window_extent()
        t.set_rotation(rotation)
        center = t.get_window_extent()
        boxes.append((np.array([(center.x0 + center.x1) / 2, (center.y0 + center.y1) / 2]), flat.width,
                      flat.height, angle))
    (ca, wa, ha, angle), (cb, wb, hb, _) = boxes
    along, across = np.array([np.cos(angle), np.sin(angle)]), np.array([-np.sin(angle), np.cos(angle)])
    d = cb - ca
    return bool(abs(d @ along) < (wa + wb) / 2 - tolerance and abs(d @ across) < (ha + hb) / 2 - tolerance)


def crowded_ticks(fig: plt.Figure, gap: float = TICK_GAP, draw: bool = True) -> list[str]:
    """Tick labels of one axis that overlap or touch each other (less than ``gap`` pixels apart), and numeric
    axes that label a single tick (nothing to read a scale from), described. Categorical axes (labels set with
    the ticks, one per model) may have one."""
    if draw:
        fig.draw_without_rendering()
    problems = []
    for i, ax in enumerate(fig.axes):
        if not (ax.get_visible() and ax.axison):
            continue
        for axis, letter in ((ax.xaxis, "x"), (ax.yaxis, "y")):
            labels = _ticklabels(axis)
            for a, b in zip(labels, labels[1:]):  # neighbours along the axis
                if _rotated_overlap(a, b, -gap):
                    problems.append(f"{_name(ax, i)}: {letter} tick labels {_describe(a)} and {_describe(b)} "
                                    "overlap")
            if not _categorical(axis) and len(labels) == 1:
                problems.append(f"{_name(ax, i)}: the {letter} axis labels one tick only ({_describe(labels[0])})")
    return problems


LAYOUT_TEXTS = {"figure text", "figure legend", "title", "label", "legend"}


def overlapping_texts(fig: plt.Figure, tolerance: float = TOLERANCE, draw: bool = True) -> list[str]:
    """Titles, axis labels, legends and figure texts (the suptitle) that overlap one another, a tick label or
    another axes' frame, described (texts drawn inside an axes, such as a bar's value, and a legend inside its
    own axes are not judged)."""
    if draw:
        fig.draw_without_rendering()
    items = []
    for description, artist, ax, role in _drawn_artists(fig):
        box = _extent(artist) if role not in ("text", "offset") else None
        if box is not None and box.width > 0 and box.height > 0:
            items.append((description, ax, role, box.x0, box.y0, box.x1, box.y1))
    if not items:
        return []
    boxes = np.array([item[3:] for item in items])
    overlap_x = np.minimum(boxes[:, None, 2], boxes[None, :, 2]) - np.maximum(boxes[:, None, 0], boxes[None, :, 0])
    overlap_y = np.minimum(boxes[:, None, 3], boxes[None, :, 3]) - np.maximum(boxes[:, None, 1], boxes[None, :, 1])
    problems = []
    for j, k in zip(*np.nonzero(np.triu((overlap_x > tolerance) & (overlap_y > tolerance), 1))):
        (da, axa, ra, *_), (db, axb, rb, *_) = items[j], items[k]
        if ra not in LAYOUT_TEXTS and rb not in LAYOUT_TEXTS:
            continue  # frames and tick labels among themselves: crowded_ticks' business
        if axa is axb and "axes" in (ra, rb):
            continue  # a text on its own axes (a legend inside it)
        problems.append(f"{da} overlaps {db}")
    return problems


def _background(text: matplotlib.text.Text, ax: Any) -> Any:
    """The colour behind a text: its own box, else its axes' face (None: an image, unknown), else the figure's."""
    patch = text.get_bbox_patch()
    if patch is not None and patch.get_visible() and matplotlib.colors.to_rgba(patch.get_facecolor())[3] > 0.5:
        return patch.get_facecolor()
    if ax is not None:
        inside = ax.get_window_extent().contains(*np.asarray(text.get_window_extent().get_points()).mean(axis=0))
        if inside and ax.images:
            return None
        if inside:
            return ax.patch.get_facecolor()
    return text.figure.get_facecolor() if text.figure is not None else "white"


def low_contrast_text(fig: plt.Figure, minimum: float = MIN_CONTRAST, draw: bool = True) -> list[str]:
    """Texts whose colour has a WCAG contrast ratio below ``minimum`` against what lies behind them (white, an
    axes' face, the text's own box; texts over an image are not judged), described."""
    if draw:
        fig.draw_without_rendering()
    texts = []
    for description, artist, ax, _ in _drawn_artists(fig):
        if isinstance(artist, matplotlib.text.Text):
            texts.append((description, artist, ax))
        elif isinstance(artist, matplotlib.legend.Legend):
            texts += [(f"{description} entry {_describe(t)}", t, ax) for t in artist.get_texts() if t.get_text()]
            title = artist.get_title()
            if title.get_visible() and title.get_text():
                texts.append((f"{description} title {_describe(title)}", title, ax))
    problems = []
    for description, text, ax in texts:
        background = _background(text, ax)
        if background is None:
            continue
        ratio = contrast_ratio(text.get_color(), matplotlib.colors.to_rgb(background))
        if ratio < minimum:
            problems.append(f"{description} in {matplotlib.colors.to_hex(text.get_color())} has contrast "
                            f"{ratio:.1f} (< {minimum:g})")
    return problems


def figure_problems(fig: plt.Figure, dpi: float = DPI, draw: bool = True) -> list[str]:
    """Everything :func:`outside_canvas`, :func:`crowded_ticks`, :func:`overlapping_texts` and
    :func:`low_contrast_text` find in ``fig`` drawn at ``dpi`` (the PNG's resolution); empty: it fits and reads.
    ``draw=False`` judges the layout of the figure's last draw at ``dpi`` (the one :func:`save` made: the PNG's)."""
    original = fig.dpi
    fig.dpi = dpi
    try:
        if draw:
            fig.draw_without_rendering()
        with _drawn_state():
            return [*outside_canvas(fig, draw=False), *crowded_ticks(fig, draw=False),
                    *overlapping_texts(fig, draw=False), *low_contrast_text(fig, draw=False)]
    finally:
        fig.dpi = original


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
                                 sharey=True, squeeze=False, layout="constrained")
        for ax in grid.flat[len(records):]:
            ax.set_visible(False)
    else:
        fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(12.5, 4.2), layout="constrained")
    n_seeds, held, n_epochs = 0, set(), 1
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
                n_epochs = max(n_epochs, kept.shape[1])
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
            integer_ticks(ax.xaxis, 1, n_epochs)
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
            integer_ticks(ax.xaxis, 1, n_epochs)
            ax.grid(alpha=0.3)
        ax_acc.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
        fig.suptitle(f"Training curves{where} ({over_seeds(n_seeds)})\nsolid: training batches{heldout}; the "
                     "log-scale loss band is cut at the lowest seed's loss", fontsize=10)
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
