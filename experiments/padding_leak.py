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

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from equivar.config import RunConfig
from equivar.options import check, option
from equivar.data import Dataset, load_dataset
from equivar.layers import PADDINGS
from equivar.metrics import accuracy, mean_std
from equivar.plot import plot_padding_leak
from equivar.text import mean_std_text, seeds_phrase
from equivar.train import make_logits
from equivar.experiments.common import execution_plan, measurable, obtain, publish, run_record

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


@dataclasses.dataclass
class Options:
    """``padding_leak.*``."""

    paddings: list[str] = option(["SAME", "CIRCULAR"], "paddings of the one convolution", choices=PADDINGS)
    margin: int = option(8, "the canvas is this much larger than the patch along every axis", minimum=1)
    # Outside most data values (MNIST-1D is standardised, MNIST is in [0, 1]); 0 would make zero padding look
    # like canvas: nothing to leak. Measured on MNIST-1D: background 1.0 gives SAME 0.68, 3.0 gives 0.998.
    background: float = option(3.0, "canvas value around the patch")
    channels: int = option(16, "feature maps of the convolution", minimum=1)
    kernel: int = option(5, "kernel size along every axis", minimum=1)
    n_train: int = option(2000, "patches to train on (each in both corners)", minimum=1)
    n_test: int = option(1000, "patches to test on (each in both corners)", minimum=1)


def run(config: RunConfig, out_dir: Path) -> dict[str, Any]:
    opts = check(Options, config.raw.get("padding_leak"), "padding_leak")
    paddings, margin, background = opts.paddings, opts.margin, opts.background
    channels, kernel, n_train, n_test = opts.channels, opts.kernel, opts.n_train, opts.n_test
    data = load_dataset(config.dataset.loader, config.dataset.options)
    x_train, y_train = corner_dataset(data.x_train[:n_train], margin, background)
    x_test, y_test = corner_dataset(data.x_test[:n_test], margin, background)
    corners = Dataset(name=f"{data.name} corners", x_train=x_train, y_train=y_train, x_test=x_test,
                      y_test=y_test, n_classes=2)
    plan = execution_plan(config)
    results, measured = {}, []
    for padding in paddings:
        layers = [{"type": "conv", "features": channels, "kernel": kernel, "padding": padding},
                  {"type": "activation", "fn": "relu"}, {"type": "global_pool", "kind": "max"}]
        model = obtain(config, corners, out_dir, f"padding_{padding}", "equivar.models.Stack",
                       {"layers": layers}, plan, where=f"padding_leak.paddings[{padding}]")
        measured.append(model)
        if not measurable(model):
            results[padding] = {"train_status": model.status, "source": model.source}
            continue
        logits_fn = jax.jit(jax.vmap(make_logits(model.graphdef), in_axes=(0, None)))
        logits = np.asarray(logits_fn(model.variables(), jnp.asarray(x_test)))
        preds = logits.argmax(-1)
        pair_diff = np.abs(logits[:, 0::2] - logits[:, 1::2]).max(axis=(1, 2))
        same_prediction = (preds[:, 0::2] == preds[:, 1::2]).mean(axis=1)
        acc = accuracy(preds, y_test)
        results[padding] = {
            "test_accuracy": mean_std(acc),
            "train_accuracy_last_epoch": mean_std(np.asarray(model.train_record["accuracy"])[model.ok, -1])
            if model.train_record else None,
            "max_pair_logit_difference": pair_diff.tolist(),
            "pairs_identical": bool((pair_diff == 0).all()),
            "pairs_same_prediction": same_prediction.tolist(),
            "per_seed": {"test_accuracy": acc.tolist()},
            "train_status": model.status,
            "source": model.source,
        }
        log.info("padding %s: test accuracy %s, max pair logit difference %s", padding, np.round(acc, 4),
                 pair_diff)
    metrics = run_record("padding_leak", config, corners.summary()) | {
        "source": data.name,
        "margin": margin,
        "background": background,
        "net": {"conv_channels": channels, "kernel": kernel, "then": "relu, global max pool, linear"},
        "chance": 0.5,
        "paddings": results,
    }
    return publish(metrics, out_dir, plot_padding_leak, summary(metrics), measured)


def summary(metrics: dict[str, Any]) -> str:
    lines = [f"padding_leak on {metrics['source']} patches in two corners of a canvas {metrics['margin']} larger "
             f"({seeds_phrase(metrics['n_seeds'])}; chance 0.5)", "",
             "| padding | test accuracy | pairs with identical logits | max pair logit difference |",
             "|---|---:|---|---:|"]
    for padding, r in metrics["paddings"].items():
        if "test_accuracy" not in r:
            lines.append(f"| {padding} | every seed diverged | | |")
            continue
        lines.append(f"| {padding} | {mean_std_text(r['test_accuracy'])} | "
                     f"{'all' if r['pairs_identical'] else 'no'} | {max(r['max_pair_logit_difference']):.2e} |")
    return "\n".join(lines)

