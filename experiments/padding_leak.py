"""padding_leak: zero padding tells a convolution where it is (Kayhan & van Gemert 2020).

Each dataset example becomes a patch on a larger canvas of constant ``background``, placed either in the first
corner (offset 0 on every axis, class 0) or the last corner (offset ``margin``, class 1); every patch appears in
both corners, so the classes are balanced and carry no content cue, only position. The net is one
convolution (padding under test) + ReLU + global max pooling + linear. With zero padding (``SAME``) the border
between canvas and padding is an edge the filters can see, and which corner the patch hides tells the class.
With circular padding the two placements are circular shifts of each other, a circular convolution commutes
with them and the global max forgets them: the two inputs of a pair get identical logits, so accuracy is
exactly chance. That is checked on the data itself (``pairs_identical``, ``max_pair_logit_difference``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from pydantic import Field

from equivar.config import RunConfig
from equivar.data import Dataset, load_dataset
from equivar.experiment import base_fields, obtain, record_fields, unmeasured
from equivar.layers import Padding
from equivar.metrics import accuracy
from equivar.plot import draw_chance, error_bars, save
from equivar.results import EVERY_SEED_DIVERGED, ExperimentResult, Headline, MeanStd, ModelRecord, Record, seeds_phrase
from equivar.schema import Float, PositiveInt
from equivar.schema import Options as OptionsBase
from equivar.train import make_logits

log = logging.getLogger(__name__)


def corner_dataset(x: np.ndarray, margin: int, background: float) -> tuple[np.ndarray, np.ndarray]:
    """Every patch in ``x`` (``(N, *spatial, C)``) placed at offset 0 (label 0) and at offset ``margin`` on every
    axis (label 1) of a canvas ``margin`` larger per axis. Returns ``(2N, ...)`` inputs, interleaved as pairs."""
    n, *spatial, c = x.shape
    canvas_shape = (n, *(s + margin for s in spatial), c)
    first = np.full(canvas_shape, background, dtype=np.float32)
    last = first.copy()
    first[(slice(None), *(slice(0, s) for s in spatial))] = x
    last[(slice(None), *(slice(margin, margin + s) for s in spatial))] = x
    inputs = np.stack([first, last], axis=1).reshape(2 * n, *canvas_shape[1:])
    labels = np.tile(np.array([0, 1], dtype=np.int32), n)
    return inputs, labels


class Options(OptionsBase):
    """``padding_leak.*``."""

    paddings: list[Padding] = Field(["SAME", "CIRCULAR"], min_length=1, description="paddings of the one convolution")
    margin: PositiveInt = Field(8, description="the canvas is this much larger than the patch along every axis")
    # Outside most data values (MNIST-1D is standardised, MNIST is in [0, 1]); 0 would make zero padding look
    # like canvas: nothing to leak. Measured on MNIST-1D: background 1.0 gives SAME 0.68, 3.0 gives 0.998.
    background: Float = Field(3.0, description="canvas value around the patch")
    channels: PositiveInt = Field(16, description="feature maps of the convolution")
    kernel: PositiveInt = Field(5, description="kernel size along every axis")
    n_train: PositiveInt = Field(2000, description="patches to train on (each in both corners)")
    n_test: PositiveInt = Field(1000, description="patches to test on (each in both corners)")


class PaddingResult(ModelRecord):
    """The corner classifier with one padding, over its healthy seeds."""

    headline = (Headline("test_accuracy", "which-corner accuracy"),)

    test_accuracy: MeanStd
    train_accuracy_last_epoch: MeanStd | None  # None for a model loaded from an earlier run
    max_pair_logit_difference: list[float]  # per seed: the largest logit difference within a pair of placements
    pairs_identical: bool  # every pair got identical logits (circular padding: exactly)
    pairs_same_prediction: list[float]  # per seed: share of pairs predicted alike
    per_seed_accuracy: list[float]


class Net(Record):
    conv_channels: int
    kernel: int
    then: str


class Result(ExperimentResult[PaddingResult]):
    source: str  # the dataset the patches come from
    margin: int
    background: float
    net: Net


def run(config: RunConfig, out_dir: Path) -> Result:
    opts: Options = config.options
    data = load_dataset(config.dataset)
    x_train, y_train = corner_dataset(data.x_train[:opts.n_train], opts.margin, opts.background)
    x_test, y_test = corner_dataset(data.x_test[:opts.n_test], opts.margin, opts.background)
    corners = Dataset(name=f"{data.name} corners", x_train=x_train, y_train=y_train, x_test=x_test,
                      y_test=y_test, n_classes=2)
    plan = config.plan()
    records, lost, measured = {}, {}, []
    for padding in opts.paddings:
        layers = [{"type": "conv", "features": opts.channels, "kernel": opts.kernel, "padding": padding},
                  {"type": "activation", "fn": "relu"}, {"type": "global_pool", "kind": "max"}]
        model = obtain(config, corners, out_dir, f"padding_{padding}", "equivar.models.Stack",
                       {"layers": layers}, plan, where=f"padding_leak.paddings[{padding}]")
        measured.append(model)
        if (diverged := unmeasured(model)) is not None:
            lost[padding] = diverged
            continue
        logits_fn = jax.jit(jax.vmap(make_logits(model.graphdef), in_axes=(0, None)))
        logits = np.asarray(logits_fn(model.variables(), jnp.asarray(x_test)))
        preds = logits.argmax(-1)
        pair_diff = np.abs(logits[:, 0::2] - logits[:, 1::2]).max(axis=(1, 2))
        same_prediction = (preds[:, 0::2] == preds[:, 1::2]).mean(axis=1)
        acc = accuracy(preds, y_test)
        records[padding] = PaddingResult(
            **record_fields(model),
            test_accuracy=MeanStd.of(acc),
            train_accuracy_last_epoch=MeanStd.of(np.asarray(model.train_record["accuracy"])[model.ok, -1])
            if model.train_record else None,
            max_pair_logit_difference=pair_diff.tolist(),
            pairs_identical=bool((pair_diff == 0).all()),
            pairs_same_prediction=same_prediction.tolist(),
            per_seed_accuracy=acc.tolist())
        log.info("padding %s: test accuracy %s, max pair logit difference %s", padding, np.round(acc, 4),
                 pair_diff)
    return Result(**base_fields(config, corners, measured),
                  source=data.name, margin=opts.margin, background=opts.background,
                  net=Net(conv_channels=opts.channels, kernel=opts.kernel, then="relu, global max pool, linear"),
                  models=records, unmeasured=lost)


def summary(result: Result) -> str:
    lines = [f"padding_leak on {result.source} patches in two corners of a canvas {result.margin} larger "
             f"({seeds_phrase(result.n_seeds)}; chance 0.5)", "",
             "| padding | test accuracy | pairs with identical logits | max pair logit difference |",
             "|---|---:|---|---:|"]
    for padding, r in result.models.items():
        lines.append(f"| {padding}{r.seeds_note()} | {r.test_accuracy.text()} | "
                     f"{'all' if r.pairs_identical else 'no'} | {max(r.max_pair_logit_difference):.2e} |")
    lines += result.unmeasured_rows(3)
    return "\n".join(lines)


def plot(result: Result, out_dir: Path) -> list[Path]:
    """Test accuracy per padding (mean ± std over seeds, seeds as dots) against chance."""
    paddings: dict[str, PaddingResult | None] = {**result.models, **{p: None for p in result.unmeasured}}
    fig, ax = plt.subplots(figsize=(max(4.5, 2.8 + 1.2 * len(paddings)), 3.8), layout="constrained")
    for i, r in enumerate(paddings.values()):
        if r is None:  # every seed diverged
            ax.text(i, 0.05, EVERY_SEED_DIVERGED.replace(" diverged", "\ndiverged"), ha="center", fontsize=8)
            continue
        acc = r.test_accuracy
        ax.bar(i, acc.mean, 0.6, capsize=4, yerr=error_bars([acc.std], acc.n),
               color="tab:red" if r.pairs_identical else "tab:blue")
        seeds = r.per_seed_accuracy
        ax.plot(np.full(len(seeds), i) + np.linspace(-0.12, 0.12, len(seeds)), seeds, "k.", ms=5)
        ax.text(i, acc.mean + 0.03, f"{acc.mean:.3f}", ha="center", fontsize=9)
    draw_chance(ax, result.chance)
    ax.set_xticks(range(len(paddings)), [p + (r.seeds_note() if r else "") for p, r in paddings.items()])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("test accuracy: which corner?")
    ax.set_title(f"padding leak on {result.source} patches\n(red: the two corners get identical logits)",
                 fontsize=9)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over one
    return [save(fig, Path(out_dir) / "padding_leak.png")]


