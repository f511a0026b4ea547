"""feature_pooling: the lecture's pooling across feature maps buys invariance to rotations.

Two variants of ``group_pool`` (``zoo.group_pool`` options) are trained on upright data: filters tied to
their rotated copies with a max over the copies (``pooled``), and the same net without that cross-map max
(``unpooled``). On 2D data the transforms are rotations by 0/90/180/270 degrees, on 1D data (MNIST-1D) the
identity and reversal. Each variant is tested on every transformed copy of the test set: accuracy, the
relative change of its logits ``||f(Rx) - f(x)|| / ||f(x)||``, and the share of test inputs predicted the
same under every transform.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from equivar.config import RunConfig
from equivar.data import load_dataset
from equivar.equivariance import relative_error
from equivar.errors import ConfigError
from equivar.experiment import base_fields, check_before_data, obtain, record_fields, unmeasured
from equivar.metrics import accuracy
from equivar.plot import (
    FLOAT32_EPS,
    LOG_FLOOR,
    draw_chance,
    error_bars,
    legend_columns,
    model_color,
    over_seeds,
    save,
)
from equivar.results import EVERY_SEED_DIVERGED, ExperimentResult, Headline, MeanStd, ModelRecord, seeds_phrase
from equivar.train import make_logits

log = logging.getLogger(__name__)


def group_transforms(rank: int) -> dict[str, Any]:
    if rank == 2:
        return {f"rot{90 * r}": (lambda x, r=r: jnp.rot90(x, r, axes=(1, 2))) for r in range(4)}
    if rank == 1:
        return {"identity": lambda x: x, "reversed": lambda x: jnp.flip(x, axis=1)}
    raise ConfigError(f"feature_pooling needs 1D or 2D data, got {rank} spatial axes")


class Variant(ModelRecord):
    """``group_pool`` with (``pooled``) or without (``unpooled``) the max over rotated copies."""

    headline = (Headline("worst_accuracy", "accuracy on the worst transform"),
                Headline("same_prediction_under_all", "same prediction under all"))

    pool_copies: bool
    accuracy: dict[str, MeanStd]  # per transform of the test set
    logit_change: dict[str, MeanStd]  # per transform: ||f(Rx) - f(x)|| / ||f(x)||
    same_prediction_under_all: MeanStd

    @property
    def worst_accuracy(self) -> MeanStd:
        return min(self.accuracy.values(), key=lambda m: m.mean)


class Result(ExperimentResult[Variant]):
    transforms: list[str]


def run(config: RunConfig, out_dir: Path) -> Result:
    entry = config.zoo_spec("group_pool")
    base, target = dict(entry.options), entry.target
    check_before_data(config, [(target, dict(base, pool_copies=p), "zoo.group_pool") for p in (True, False)])
    data = load_dataset(config.dataset)
    if data.rank == 2 and data.input_shape[0] != data.input_shape[1]:
        raise ConfigError(f"feature_pooling rotates images by 90 degrees: they must be square, got "
                          f"{data.input_shape[:-1]}")
    transforms = group_transforms(data.rank)
    plan = config.plan()
    x_test = jnp.asarray(data.x_test)
    records, lost, measured = {}, {}, []
    for variant, pool in (("pooled", True), ("unpooled", False)):
        options = dict(base, pool_copies=pool)
        model = obtain(config, data, out_dir, f"group_pool_{variant}", target, options, plan, "zoo.group_pool")
        measured.append(model)
        if (diverged := unmeasured(model)) is not None:
            lost[variant] = diverged
            continue
        logits_fn = jax.jit(jax.vmap(make_logits(model.graphdef), in_axes=(0, None)))
        logits = {name: np.asarray(_chunked(logits_fn, model.variables(), t(x_test)))
                  for name, t in transforms.items()}
        reference = logits[next(iter(transforms))]
        preds = {name: lg.argmax(-1) for name, lg in logits.items()}
        agree = np.mean(np.stack([preds[n] == preds[next(iter(transforms))] for n in transforms]).all(0), axis=-1)
        records[variant] = Variant(
            **record_fields(model),
            pool_copies=pool,
            accuracy={name: MeanStd.of(accuracy(p, data.y_test)) for name, p in preds.items()},
            logit_change={name: MeanStd.of([float(np.mean(relative_error(jnp.asarray(lg[s]), jnp.asarray(reference[s]),
                                                                         jnp.asarray(reference[s]))))
                                            for s in range(len(lg))]) for name, lg in logits.items()},
            same_prediction_under_all=MeanStd.of(agree))
        log.info("%s: accuracy %s", variant, {n: round(v.mean, 4) for n, v in records[variant].accuracy.items()})
    return Result(**base_fields(config, data, measured), transforms=list(transforms), models=records,
                  unmeasured=lost)


def _chunked(fn, params, x, size: int = 2048):
    return jnp.concatenate([fn(params, x[i:i + size]) for i in range(0, x.shape[0], size)], axis=1)


def summary(result: Result) -> str:
    names = result.transforms
    dataset = result.dataset.name if result.dataset else "?"
    lines = [f"feature_pooling on {dataset} ({seeds_phrase(result.n_seeds)}): test accuracy per transform of the "
             "test set, and the logits' relative change", "",
             "| variant | params | " + " | ".join(f"acc {n}" for n in names) + " | max logit change | "
             "same prediction under all |", "|---|---:|" + "---:|" * (len(names) + 2)]
    for variant, r in result.models.items():
        accs = " | ".join(r.accuracy[n].text() for n in names)
        change = max(r.logit_change[n].mean for n in names)
        lines.append(f"| {variant}{r.seeds_note()} | {r.n_params} | {accs} | {change:.1e} | "
                     f"{r.same_prediction_under_all.mean:.4f} |")
    lines += result.unmeasured_rows(len(names) + 3, lambda r: [str(r.n_params)])
    return "\n".join(lines)


def plot(result: Result, out_dir: Path) -> list[Path]:
    """Accuracy on each transformed test set per variant (bars, mean ± std over seeds), and the logits' change
    (dots on a log axis: a bar there would start at an arbitrary floor); one legend under both panels."""
    names = result.transforms
    variants: dict[str, Variant | None] = {**result.models, **{v: None for v in result.unmeasured}}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 3.8 + 0.12 * len(variants)), layout="constrained")
    width = 0.8 / len(variants)
    # Every variant is the same zoo model (group_pool): its colour, with hatching for all but the first variant.
    color = model_color("group_pool")
    markers = ("o", "s", "D", "^", "v", "P", "X", "*")
    for i, (variant, r) in enumerate(variants.items()):
        x = np.arange(len(names)) + (i - (len(variants) - 1) / 2) * width
        if r is None:  # every seed diverged: named in the legend, nothing to draw
            ax.bar(x, np.zeros(len(names)), width, label=f"{variant}: {EVERY_SEED_DIVERGED}", color="lightgray")
            continue
        style = {"color": color, "alpha": 1.0 if i == 0 else 0.55, "hatch": None if i == 0 else "//",
                 "edgecolor": "white" if i else color}
        n = r.same_prediction_under_all.n
        ax.bar(x, [r.accuracy[t].mean for t in names], width, yerr=error_bars([r.accuracy[t].std for t in names], n),
               capsize=3, label=f"{variant} ({r.n_params:,} params){r.seeds_note()}", **style)
        change = np.maximum([r.logit_change[t].mean for t in names], LOG_FLOOR)
        spread = np.asarray([r.logit_change[t].std for t in names], dtype=float)
        low = change - np.maximum(change - spread, LOG_FLOOR)  # the lower bar stops at the floor
        ax2.errorbar(x, change, yerr=np.stack([low, spread]) if n > 1 else None, fmt=markers[i % len(markers)],
                     color=color, mfc=color if i == 0 else "white", capsize=3, ms=6, label=variant)
    draw_chance(ax, result.chance)
    for a in (ax, ax2):
        a.set_xticks(range(len(names)), names)
        a.grid(axis="y", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", fontsize=8,
               ncol=legend_columns(len(labels), 10.5, max(len(label) for label in labels)))
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title("accuracy on transformed test inputs (trained upright)", fontsize=9)
    ax2.set_yscale("log")
    ax2.axhline(FLOAT32_EPS, color="gray", ls="--", lw=0.8)
    ax2.set_ylabel("‖f(Rx) − f(x)‖ / ‖f(x)‖")
    ax2.set_title(f"change of the logits (grey: float32 precision; zeros drawn at {LOG_FLOOR:g})", fontsize=9)
    dataset = result.dataset.name if result.dataset else "?"
    fig.suptitle(f"pooling across rotated feature maps on {dataset} ({over_seeds(result.n_seeds)})", fontsize=10)
    return [save(fig, Path(out_dir) / "feature_pooling.png")]
