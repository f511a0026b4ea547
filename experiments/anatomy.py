"""anatomy: per-layer shapes, parameter counts and receptive fields of every model, computed, not derived.

For each model in ``config.models`` on the chosen input shape: the forward and the backward receptive-field
analysis (which must agree), the exact set of input positions each layer's central unit depends on, and the
empirical field (the support of the input gradient); the effective receptive field maps are plotted per layer.
No training: the analysis is of the architecture (maps use the initial weights of ``seed``).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Optional

import jax
from flax import nnx

from equivar import trained
from equivar.anatomy import anatomy, format_table
from equivar.config import RunConfig
from equivar.data import load_dataset
from equivar.errors import ConfigError
from equivar.io import environment, write_json
from equivar.models import build_model
from equivar.options import check, option
from equivar.plot import plot_anatomy
from equivar.introspect import to_inference

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Options:
    """``anatomy.*``."""

    input_shape: Optional[list[int]] = option(None, "one example's shape, e.g. [28, 28, 1] or [40, 1]; null: "
                                                    "the dataset's", minimum=1)
    n_classes: Optional[int] = option(None, "classifier outputs; null: the dataset's", minimum=1)
    n_inputs: int = option(64, "random inputs whose input gradients are averaged (effective receptive field)",
                           minimum=1)


def run(config: RunConfig, out_dir: Path) -> dict[str, Any]:
    opts = check(Options, config.raw.get("anatomy"), "anatomy")
    input_shape, n_classes, n_inputs = opts.input_shape, opts.n_classes, opts.n_inputs
    if input_shape is None or n_classes is None:
        data = load_dataset(config.dataset.loader, config.dataset.options)
        input_shape = data.input_shape if input_shape is None else input_shape
        n_classes = data.n_classes if n_classes is None else n_classes
        source = data.name
    else:
        source = "anatomy.input_shape"
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) < 2:
        raise ConfigError(f"anatomy.input_shape={list(input_shape)} needs spatial axes and channels, "
                          "e.g. [28, 28, 1] or [40, 1]")
    n_classes = int(n_classes)

    results, tables = {}, []
    for i, spec in enumerate(config.models):
        if config.load_from:  # a trained model: its first healthy seed's weights give the maps
            model = trained.load(Path(config.load_from), spec.name, spec.target, spec.options, input_shape,
                                 n_classes, spec.where).modules()[0]
        else:
            model = to_inference(build_model(spec.target, input_shape, n_classes, spec.options,
                                             nnx.Rngs(config.seed), where=spec.where))
        result = anatomy(model, input_shape, jax.random.key(config.seed + i), n_inputs, where=spec.where)
        result["target"] = spec.target
        results[spec.name] = result
        tables.append(format_table(spec.name, result))
    metrics = {
        "experiment": "anatomy",
        "input_shape": list(input_shape),
        "input_source": source,
        "n_classes": n_classes,
        "n_inputs": n_inputs,
        "models": results,
        "load_from": config.load_from,
        "environment": environment(),
    }
    write_json(out_dir / "metrics.json", metrics)
    markdown = "\n\n".join(tables)
    (out_dir / "anatomy.md").write_text(markdown + "\n")
    plot_anatomy(metrics, out_dir)
    print(markdown)
    return metrics
