"""equivariance: how exactly each layer commutes with shifts, per padding, shift mode and training stage.

Every model in ``config.models`` that has a ``padding`` option is built once per padding in
``equivariance.paddings`` (for ``CIRCULAR`` its pooling windows wrap too). For each seed, at initialisation
and after training, each layer's relative equivariance error ``||f(T_s x) - T_{s/J} f(x)|| / ||f(x)||`` is
measured on test inputs for shifts 0..max (all axes at once), under ``roll`` and ``zero`` shifts, over all
positions and over the interior (positions no border can reach); layers after flatten/global pooling get
the invariance error. Rotation by 90 degrees (2D; reflection in 1D) and magnification by 2 are measured too:
convolutions do not commute with them.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from equivar.config import RunConfig
from equivar.options import check, option
from equivar.data import load_dataset
from equivar.equivariance import layer_shift_errors, transform_errors
from equivar.errors import ConfigError
from equivar.layers import PADDINGS
from equivar.metrics import mean_std
from equivar.plot import plot_equivariance
from equivar.transforms import INTEGER_MODES, SHIFT_MODES, SUBPIXEL_MODES
from equivar.experiments.common import (
    as_trained,
    builder,
    check_before_data,
    execution_plan,
    init_seeds,
    obtain,
    publish,
    run_record,
)
from equivar.models import model_options, resolve_target
from equivar.text import seeds_phrase
from equivar.trained import TrainedModel

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Options:
    """``equivariance.*``."""

    paddings: list[str] = option(list(PADDINGS), "paddings to build each model with (models with a padding "
                                 "option)", choices=PADDINGS)
    modes: list[str] = option(list(INTEGER_MODES), "how inputs are shifted (integer shifts 0..max_shift)",
                              choices=SHIFT_MODES)
    max_shift: int = option(8, "shifts 0..max_shift along every spatial axis at once", minimum=1)
    n_examples: int = option(256, "test inputs per measurement", minimum=1)
    trained: bool = option(True, "also measure after training (train.*), not only at initialisation")
    step: float = option(1.0, "spacing of the shifts; fractional steps need a sub-pixel mode in modes "
                              "(fourier, bilinear-*)", minimum=1e-3)
    grid: bool = option(False, "2D data: also every (dy, dx) shift in 0..max_shift on both axes, not only the "
                               "diagonal (max_shift + 1 squared forward passes per model)")


def _options(config: RunConfig, rank: int, spatial: tuple[int, ...]) -> tuple[Options, list[str]]:
    opts = check(Options, config.raw.get("equivariance"), "equivariance")
    if not float(opts.step).is_integer() and not any(m in SUBPIXEL_MODES for m in opts.modes):
        raise ConfigError(f"equivariance.step={opts.step} is fractional but equivariance.modes={opts.modes} shift "
                          "by whole positions: add fourier or bilinear-zero|reflect|circular")
    if opts.max_shift >= min(spatial):
        raise ConfigError(f"equivariance.max_shift={opts.max_shift} must be smaller than the input size {spatial}")
    transforms = ["rotate90", "scale2"] if rank == 2 and spatial[0] == spatial[1] else ["flip", "scale2"]
    return opts, transforms


def _aggregate(per_seed: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per layer: mean/std over seeds of every per-shift error list."""
    out = {}
    for layer, first in per_seed[0].items():
        row = {k: first[k] for k in ("shift", "divisible", "role") if k in first}
        if "jump" in first:
            row["jump"] = first["jump"]
        for key in ("full", "interior", "grid"):
            values = [s[layer].get(key) for s in per_seed]
            if values[0]:
                row[key] = mean_std(np.asarray(values, dtype=np.float64))
        out[layer] = row
    return out


def _variants(config: RunConfig, paddings: list[str]) -> list[tuple[Any, str | None, dict[str, Any]]]:
    """(model spec, padding, options): every padding for models with a ``padding`` option, trained here; the
    model as configured otherwise (and always for models loaded from an earlier run)."""
    out = []
    for spec in config.models:
        accepted, _ = model_options(resolve_target(spec.target, spec.where))
        if "padding" not in accepted or config.load_from:
            out.append((spec, None, dict(spec.options)))
            continue
        for padding in paddings:
            options = dict(spec.options, padding=padding)
            if padding == "CIRCULAR" and "pool_padding" in accepted:
                options["pool_padding"] = "CIRCULAR"
            out.append((spec, padding, options))
    return out


def run(config: RunConfig, out_dir: Path) -> dict[str, Any]:
    paddings = check(Options, config.raw.get("equivariance"), "equivariance").paddings
    check_before_data(config, [(spec.target, options, spec.where) for spec, _, options in
                               _variants(config, paddings)])
    data = load_dataset(config.dataset.loader, config.dataset.options)
    opts, transform_names = _options(config, data.rank, data.input_shape[:-1])
    plan = execution_plan(config)
    x = jnp.asarray(data.x_test[:opts.n_examples])
    variants: dict[str, Any] = {}
    measured: list[TrainedModel] = []
    for spec, padding, options in _variants(config, opts.paddings):
        name = spec.name if padding is None else f"{spec.name}/{padding}"
        where = spec.where
        stages: dict[str, TrainedModel] = {}
        if not config.load_from:
            graphdef, states = init_seeds(builder(spec.target, options, data, where), config)
            stages["init"] = as_trained(name, spec.target, options, data, graphdef, states, config, None)
        if opts.trained or config.load_from:
            stages["trained"] = obtain(config, data, out_dir, name if padding is None else
                                       f"{spec.name}-{padding}", spec.target, options, plan, where)
        result: dict[str, Any] = {"model": spec.name, "target": spec.target,
                                  "padding": padding or options.get("padding", "as built"), "stages": {}}
        if "trained" in stages:
            result["train_status"] = stages["trained"].status  # per seed: ok, or the step it diverged at
            result["source"] = stages["trained"].source
        for stage, model in stages.items():
            models = model.modules()
            if not models:
                continue
            shifts = {mode: _aggregate([layer_shift_errors(m, x, opts.max_shift, mode, opts.grid,
                                                        opts.step if mode in SUBPIXEL_MODES else 1) for m in models])
                      for mode in opts.modes}
            transforms = {}
            for t in transform_names:
                per_seed = [transform_errors(m, x, t) for m in models]  # {} where the model cannot take R x
                transforms[t] = {layer: mean_std([s[layer] for s in per_seed]) for layer in per_seed[0]}
            result["stages"][stage] = {"shift": shifts, "transforms": transforms}
        variants[name] = result
        measured += list(stages.values())
        log.info("%s: done (%s)", name, ", ".join(stages))
    metrics = run_record("equivariance", config, data.summary(), measured) | {
        "n_examples": int(x.shape[0]),
        "max_shift": opts.max_shift,
        "modes": opts.modes,
        "variants": variants,
    }
    return publish(metrics, out_dir, plot_equivariance, summary(metrics), measured)


def summary(metrics: dict[str, Any]) -> str:
    """Per variant, stage and mode: the last spatial layer's error at shift 1 and at shift J (its jump), full
    and interior, and the logits' invariance error at shift 1."""
    lines = [f"equivariance on {metrics['dataset']['name']} ({seeds_phrase(metrics['n_seeds'])}, "
             f"{metrics['n_examples']} test inputs): relative error, mean over seeds", "",
             "| variant | stage | mode | last spatial layer | shift 1 full | shift 1 interior | shift J full | "
             "shift J interior | logits at shift 1 |", "|---|---|---|---|---:|---:|---:|---:|---:|"]

    def fmt(r, key, shift):
        """The mean error of row ``r`` at the shift of that value ('—' where it was not measured)."""
        i = r["shift"].index(shift) if shift in r["shift"] else None
        value = r[key]["mean"][i] if key in r and i is not None and i < len(r[key]["mean"]) else None
        return "—" if value is None or value != value else f"{value:.1e}"

    for name, v in metrics["variants"].items():
        for stage, st in v["stages"].items():
            for mode, layers in st["shift"].items():
                spatial = [k for k, r in layers.items() if r["role"] == "equivariance"]
                logits = layers[list(layers)[-1]]
                if not spatial:  # e.g. an MLP: no spatial maps, only its invariance
                    lines.append(f"| {name} | {stage} | {mode} | none | — | — | — | — | {fmt(logits, 'full', 1)} |")
                    continue
                last = layers[spatial[-1]]
                j = last["jump"][0]
                lines.append(f"| {name} | {stage} | {mode} | {spatial[-1]} (J={j}) | {fmt(last, 'full', 1)} | "
                             f"{fmt(last, 'interior', 1)} | {fmt(last, 'full', j)} | {fmt(last, 'interior', j)} | "
                             f"{fmt(logits, 'full', 1)} |")
    return "\n".join(lines)
