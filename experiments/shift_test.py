"""shift_test: how much accuracy each model loses when test inputs are translated.

Trains every model in ``config.models`` on unshifted training data (``n_seeds`` seeds each), then predicts the
test set under every shift of a grid (1D: -S..S; 2D: the full (dy, dx) grid), and reports per model the clean
accuracy, the accuracy per shift and the label-free shift consistency, each as mean and std over seeds.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from equivar.config import RunConfig
from equivar.data import Dataset, dataset_shape, load_dataset
from equivar.errors import ConfigError
from equivar.evaluate import ShiftEvaluator
from equivar.io import environment, write_json
from equivar.metrics import accuracy, consistency, mean_std
from equivar.models import build_model
from equivar.plot import plot_shift_test
from equivar.strategy import plan_execution
from equivar.train import SeedTrainer, init_states, make_optimizer, seed_keys
from equivar.transforms import shift_grid

log = logging.getLogger(__name__)


def check_shift_range(max_shift: int, spatial: tuple[int, ...]) -> None:
    if max_shift > min(spatial):
        raise ConfigError(f"shift.max={max_shift} is larger than the input's spatial size {spatial}; "
                          f"use shift.max <= {min(spatial)}")


def check_batch(batch_size: int, n_train: int) -> None:
    if batch_size > n_train:
        raise ConfigError(f"train.batch_size={batch_size} exceeds the {n_train} training examples")


def model_builders(config: RunConfig, input_shape: tuple[int, ...], n_classes: int) -> dict[str, Any]:
    """A constructor per model, each checked once abstractly so bad options fail before any training."""
    builders = {}
    for spec in config.models:
        build = functools.partial(build_model, spec.kind, input_shape, n_classes, spec.options)
        nnx.eval_shape(lambda b=build: b(nnx.Rngs(0)))
        builders[spec.name] = build
    return builders


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
        model_builders(config, *known)
    data = load_dataset(config.dataset.loader, config.dataset.options)
    spatial = data.input_shape[:-1]
    check_shift_range(config.shift.max, spatial)
    check_batch(config.train.batch_size, len(data.y_train))
    builders = model_builders(config, data.input_shape, data.n_classes)
    offsets = shift_grid(config.shift.max, data.rank)
    zero = np.zeros((1, data.rank), dtype=np.int32)
    plan = plan_execution(config.seed_packing, steps_per_call=config.steps_per_call)
    keys = seed_keys(config.seed, config.n_seeds)
    tx = make_optimizer(config.train)
    x_train, y_train = jax.device_put(data.x_train), jax.device_put(data.y_train)
    x_grid, y_grid = eval_subset(data, config.shift_subset)
    log.info("data %s: train %s, test %s; %d shifts (%s), grid on %d test examples; plan %s",
             data.name, data.x_train.shape, data.x_test.shape, len(offsets), config.shift.mode,
             len(y_grid), plan.describe())

    results = {}
    for spec in config.models:
        graphdef, states = init_states(builders[spec.name], tx, keys)
        n_params = sum(int(np.prod(a.shape[1:])) for a in jax.tree.leaves(states.params))
        trainer = SeedTrainer(graphdef, tx, plan, augment_shift=config.train.augment_shift,
                              augment_mode=config.train.augment_mode)
        states, history = trainer.fit(states, x_train, y_train, keys, config.train, label=spec.name)
        status = history.status()
        ok = np.array([st == "ok" for st in status])
        train_record = {"loss": history.loss.tolist(), "accuracy": history.accuracy.tolist(),
                        "seconds": history.seconds}
        if not ok.any():
            results[spec.name] = {"kind": spec.kind, "n_params": n_params, "status": status, "train": train_record}
            log.error("%s: every seed diverged; no evaluation", spec.name)
            continue
        kept = jax.tree.map(lambda a: a[np.flatnonzero(ok)], states.params)  # diverged seeds are left out
        start = time.perf_counter()
        evaluator = ShiftEvaluator(graphdef, config.shift.mode, plan)
        clean_preds = evaluator.predict(kept, data.x_test, zero)[:, 0]
        grid_preds = evaluator.predict(kept, x_grid, offsets)  # (seeds, shifts, examples)
        eval_seconds = time.perf_counter() - start
        clean = accuracy(clean_preds, data.y_test)
        per_shift = accuracy(grid_preds, y_grid)
        cons = np.array([consistency(p, data.n_classes) for p in grid_preds])
        results[spec.name] = {
            "kind": spec.kind,
            "n_params": n_params,
            "status": status,
            "clean_accuracy": mean_std(clean),
            "shift_accuracy": mean_std(per_shift),
            "consistency": mean_std(cons),
            "grid_mean_accuracy": mean_std(per_shift.mean(axis=1)),
            "worst_shift_accuracy": mean_std(per_shift.min(axis=1)),
            "per_seed": {"seeds": [config.seed + int(i) for i in np.flatnonzero(ok)],
                         "clean_accuracy": clean.tolist(), "grid_mean_accuracy": per_shift.mean(1).tolist(),
                         "consistency": cons.tolist()},
            "train": train_record,
            "eval_seconds": eval_seconds,
        }
        log.info("%s: clean %.4f, grid mean %.4f, consistency %.4f (eval %.1fs)", spec.name,
                 clean.mean(), per_shift.mean(), cons.mean(), eval_seconds)

    n_ok = [sum(st == "ok" for st in r["status"]) for r in results.values()]
    metrics = {
        "experiment": "shift_test",
        "status": "ok" if min(n_ok) == config.n_seeds else ("diverged" if max(n_ok) == 0 else "partial"),
        "dataset": data.summary(),
        "n_seeds": config.n_seeds,
        "seeds": [config.seed + i for i in range(config.n_seeds)],
        "shift_mode": config.shift.mode,
        "shifts": offsets.tolist(),
        "n_eval_shift": int(len(y_grid)),
        "models": results,
        "execution": plan.describe(),
        "environment": environment(),
    }
    write_json(out_dir / "metrics.json", metrics)
    plot_shift_test(metrics, out_dir)
    print(summary_table(metrics))
    return metrics


def summary_table(metrics: dict[str, Any]) -> str:
    """A markdown table of the headline numbers, mean ± std over seeds."""
    def fmt(d: dict[str, float]) -> str:
        return f"{d['mean']:.4f} ± {d['std']:.4f}"

    lines = [f"shift_test on {metrics['dataset']['name']} ({metrics['n_seeds']} seeds, "
             f"{len(metrics['shifts'])} shifts, mode {metrics['shift_mode']})", "",
             "| model | params | clean acc | grid-mean acc | worst-shift acc | consistency |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, m in metrics["models"].items():
        if "clean_accuracy" not in m:
            lines.append(f"| {name} | {m['n_params']} | every seed diverged | | | |")
            continue
        diverged = sum(st != "ok" for st in m["status"])
        if diverged:
            name = f"{name} ({diverged}/{len(m['status'])} seeds diverged)"
        lines.append(f"| {name} | {m['n_params']} | {fmt(m['clean_accuracy'])} | "
                     f"{fmt(m['grid_mean_accuracy'])} | {fmt(m['worst_shift_accuracy'])} | "
                     f"{fmt(m['consistency'])} |")
    return "\n".join(lines)
