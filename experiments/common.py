"""Pieces several experiments share: train a zoo model's seeds as the config says, and unstack them."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

import jax
from flax import nnx

from equivar.config import RunConfig
from equivar.data import Dataset, dataset_shape
from equivar.io import environment, write_json
from equivar.models import LayerStack, build_model
from equivar.strategy import ExecutionPlan, plan_execution
from equivar.train import History, SeedTrainer, TrainState, init_states, make_optimizer, seed_keys, take_seed


def run_record(experiment: str, config: RunConfig, dataset: dict[str, Any]) -> dict[str, Any]:
    """The keys every seeded experiment's metrics.json starts with."""
    return {"experiment": experiment, "dataset": dataset, "n_seeds": config.n_seeds,
            "seeds": [config.seed + i for i in range(config.n_seeds)]}


def publish(metrics: dict[str, Any], out_dir: Path, plot: Callable[[dict[str, Any], Path], Any],
            summary: str) -> dict[str, Any]:
    """Adds the environment record, writes metrics.json atomically, draws the plots and prints the summary."""
    metrics["environment"] = environment()
    write_json(out_dir / "metrics.json", metrics)
    plot(metrics, out_dir)
    print(summary)
    return metrics


def execution_plan(config: RunConfig) -> ExecutionPlan:
    return plan_execution(config.seed_packing, steps_per_call=config.steps_per_call)


def builder(kind: str, options: dict[str, Any], data: Dataset) -> Callable[[nnx.Rngs], LayerStack]:
    """A constructor for one model on ``data``, checked once abstractly so bad options fail before training."""
    build = functools.partial(build_model, kind, data.input_shape, data.n_classes, options)
    nnx.eval_shape(lambda: build(nnx.Rngs(0)))
    return build


def check_before_data(config: RunConfig, variants: list[tuple[str, dict[str, Any]]]) -> None:
    """Builds every (kind, options) abstractly on the dataset's shape, known from its options alone, so bad
    model options fail before any data is read (loaders whose shape needs the data are checked later)."""
    known = dataset_shape(config.dataset.loader, config.dataset.options)
    if known is None:
        return
    for kind, options in variants:
        nnx.eval_shape(lambda k=kind, o=options: build_model(k, known[0], known[1], o, nnx.Rngs(0)))


def init_seeds(build: Callable[[nnx.Rngs], LayerStack], config: RunConfig
               ) -> tuple[nnx.GraphDef, TrainState]:
    return init_states(build, make_optimizer(config.train), seed_keys(config.seed, config.n_seeds))


def train_seeds(graphdef: nnx.GraphDef, states: TrainState, data: Dataset, config: RunConfig,
                plan: ExecutionPlan, label: str) -> tuple[TrainState, History]:
    """Trains every seed of one model on the training set with the run's train settings."""
    tx = make_optimizer(config.train)
    trainer = SeedTrainer(graphdef, tx, plan, augment_shift=config.train.augment_shift,
                          augment_mode=config.train.augment_mode)
    return trainer.fit(states, jax.device_put(data.x_train), jax.device_put(data.y_train),
                       seed_keys(config.seed, config.n_seeds), config.train, label=label)


def seed_models(graphdef: nnx.GraphDef, states: TrainState) -> list[LayerStack]:
    """One model object per seed, for analyses that call ``model.features``."""
    n = jax.tree.leaves(states.params)[0].shape[0]
    return [nnx.merge(graphdef, take_seed(states.params, s)) for s in range(n)]
