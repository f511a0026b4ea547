"""shift_test: how much accuracy each model loses when test inputs are translated.

Trains every model in ``config.models`` on unshifted training data (``n_seeds`` seeds each), then predicts the
test set under every shift of a grid (1D: -S..S; 2D: the full (dy, dx) grid), and reports per model the clean
accuracy, the accuracy per shift and the label-free shift consistency, each as mean and std over seeds.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from equivar.config import RunConfig
from equivar.data import Dataset, dataset_shape, load_dataset
from equivar.errors import ConfigError
from equivar.evaluate import ShiftEvaluator
from equivar.experiments.common import (check_batch, check_before_data, execution_plan, measurable, obtain, publish,
                                       run_record, spec_variants)
from equivar.metrics import accuracy, consistency, mean_std
from equivar.plot import plot_shift_test
from equivar.text import mean_std_text, seeds_phrase
from equivar.transforms import shift_grid

log = logging.getLogger(__name__)


def check_shift_range(max_shift: int, spatial: tuple[int, ...]) -> None:
    if max_shift > min(spatial):
        raise ConfigError(f"shift.max={max_shift} is larger than the input's spatial size {spatial}; "
                          f"use shift.max <= {min(spatial)}")


def eval_subset(data: Dataset, n: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``n`` test examples (all when ``n`` is None): a fixed subset shared by every model."""
    if n is None or n >= len(data.y_test):
        return data.x_test, data.y_test
    return data.x_test[:n], data.y_test[:n]


def run(config: RunConfig, out_dir: Path) -> dict[str, Any]:
    # Everything that can be checked from the config alone is checked before any data is read.
    known = dataset_shape(config.dataset.loader, config.dataset.options)
    if known is not None:
        check_shift_range(config.shift.max, known[0][:-1])
    check_before_data(config, spec_variants(config.models))
    data = load_dataset(config.dataset.loader, config.dataset.options)
    spatial = data.input_shape[:-1]
    check_shift_range(config.shift.max, spatial)
    if not config.load_from:
        check_batch(config.train.batch_size, len(data.y_train))  # before evaluating anything
    offsets = shift_grid(config.shift.max, data.rank, config.shift.step)
    zero = np.zeros((1, data.rank), dtype=np.int32)
    plan = execution_plan(config)
    x_grid, y_grid = eval_subset(data, config.shift_subset)
    log.info("data %s: train %s, test %s; %d shifts (%s), grid on %d test examples; plan %s",
             data.name, data.x_train.shape, data.x_test.shape, len(offsets), config.shift.mode,
             len(y_grid), plan.describe())

    results, measured = {}, []
    for spec in config.models:
        model = obtain(config, data, out_dir, spec.name, spec.target, spec.options, plan)
        measured.append(model)
        record = {"target": model.target, "n_params": model.n_params, "status": model.status,
                  "source": model.source}
        if model.train_record is not None:
            record["train"] = model.train_record
        if not measurable(model):
            results[spec.name] = record
            continue
        kept = model.variables()  # diverged seeds are left out
        start = time.perf_counter()
        evaluator = ShiftEvaluator(model.graphdef, config.shift.mode, plan)
        clean_preds = evaluator.predict(kept, data.x_test, zero)[:, 0]
        grid_preds = evaluator.predict(kept, x_grid, offsets)  # (seeds, shifts, examples)
        eval_seconds = time.perf_counter() - start
        clean = accuracy(clean_preds, data.y_test)
        per_shift = accuracy(grid_preds, y_grid)
        cons = np.array([consistency(p, data.n_classes) for p in grid_preds])
        results[spec.name] = record | {
            "clean_accuracy": mean_std(clean),
            "shift_accuracy": mean_std(per_shift),
            "consistency": mean_std(cons),
            "grid_mean_accuracy": mean_std(per_shift.mean(axis=1)),
            "worst_shift_accuracy": mean_std(per_shift.min(axis=1)),
            "per_seed": {"seeds": model.healthy_seeds(),
                         "clean_accuracy": clean.tolist(), "grid_mean_accuracy": per_shift.mean(1).tolist(),
                         "consistency": cons.tolist()},
            "eval_seconds": eval_seconds,
        }
        log.info("%s: clean %.4f, grid mean %.4f, consistency %.4f (eval %.1fs)", spec.name,
                 clean.mean(), per_shift.mean(), cons.mean(), eval_seconds)

    metrics = run_record("shift_test", config, data.summary(), measured) | {
        "shift_mode": config.shift.mode,
        "shifts": offsets.tolist(),
        "n_eval_shift": int(len(y_grid)),
        "models": results,
        "execution": plan.describe(),
    }
    return publish(metrics, out_dir, plot_shift_test, summary_table(metrics), measured)


def summary_table(metrics: dict[str, Any]) -> str:
    """A markdown table of the headline numbers, mean ± std over seeds."""
    fmt = mean_std_text

    lines = [f"shift_test on {metrics['dataset']['name']} ({seeds_phrase(metrics['n_seeds'])}, "
             f"{len(metrics['shifts'])} shifts, mode {metrics['shift_mode']})", "",
             "| model | params | clean acc | grid-mean acc | worst-shift acc | consistency |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, m in metrics["models"].items():
        if "clean_accuracy" not in m:
            lines.append(f"| {name} | {m['n_params']} | every seed diverged | | | |")
            continue
        diverged = sum(st != "ok" for st in m["status"])
        if diverged:
            name = f"{name} ({diverged}/{len(m['status'])} diverged)"
        lines.append(f"| {name} | {m['n_params']} | {fmt(m['clean_accuracy'])} | "
                     f"{fmt(m['grid_mean_accuracy'])} | {fmt(m['worst_shift_accuracy'])} | "
                     f"{fmt(m['consistency'])} |")
    return "\n".join(lines)
