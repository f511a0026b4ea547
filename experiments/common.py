"""Pieces several experiments share: the run record, publishing, and the models a run measures, trained here
(and saved as checkpoints) or loaded from an earlier run (``load_from``)."""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
from flax import nnx

from equivar import trained
from equivar.config import ModelSpec, RunConfig
from equivar.data import Dataset, dataset_shape
from equivar.errors import ConfigError
from equivar.io import environment, write_json
from equivar.models import build_model, check_model
from equivar.strategy import ExecutionPlan, plan_execution
from equivar.trained import TrainedModel
from equivar.train import History, SeedTrainer, TrainState, init_states, make_optimizer, seed_keys

log = logging.getLogger(__name__)


def run_record(experiment: str, config: RunConfig, dataset: dict[str, Any],
               models: list[TrainedModel] | None = None) -> dict[str, Any]:
    """The keys every seeded experiment's metrics.json starts with. The seeds are those of the measured
    ``models`` when given (models loaded from an earlier run keep that run's seeds), else the config's."""
    seeds = sorted({s for m in models for s in m.seeds}) if models else \
        [config.seed + i for i in range(config.n_seeds)]
    return {"experiment": experiment, "dataset": dataset, "n_seeds": len(seeds), "seeds": seeds,
            "load_from": config.load_from}


def seed_policy(models: Sequence[TrainedModel]) -> dict[str, Any]:
    """The one seed policy of every experiment that trains: seeds whose training diverged are left out of
    every mean (:meth:`TrainedModel.variables` and :meth:`~TrainedModel.modules` give the healthy ones), each
    seed's status is recorded, and the run is ``ok``, ``partial`` (some seeds diverged) or ``diverged`` (every
    seed of every trained model did: the CLI exits with code 3). Models only initialised do not count."""
    trained = [m for m in models if m.source != "initialised"]
    healthy = sum(int(m.ok.sum()) for m in trained)
    total = sum(len(m.status) for m in trained)
    status = "ok" if healthy == total else ("diverged" if healthy == 0 else "partial")
    return {"status": status, "seed_status": {m.name: m.status for m in trained}}


def measurable(model: TrainedModel) -> bool:
    """Whether any seed of ``model`` trained to finite parameters (else it is reported, not measured)."""
    if not model.ok.any():
        log.error("%s: every seed diverged (%s); not measured", model.name, "; ".join(model.status))
        return False
    return True


def publish(metrics: dict[str, Any], out_dir: Path, plot: Callable[[dict[str, Any], Path], Any],
            summary: str, models: Sequence[TrainedModel] = ()) -> dict[str, Any]:
    """Applies the seed policy to the measured ``models``, adds the environment record, writes metrics.json
    atomically, draws the plots and prints the summary."""
    metrics |= seed_policy(models)
    metrics["environment"] = environment()
    write_json(out_dir / "metrics.json", metrics)
    plot(metrics, out_dir)
    print(summary)
    return metrics


def check_batch(batch_size: int, n_train: int) -> None:
    """A training set smaller than one batch would give epochs of no steps: an error before training."""
    if batch_size > n_train:
        raise ConfigError(f"train.batch_size={batch_size} exceeds the {n_train} training examples; use "
                          f"train.batch_size <= {n_train}")


def execution_plan(config: RunConfig) -> ExecutionPlan:
    return plan_execution(config.seed_packing, steps_per_call=config.steps_per_call)


def builder(target: str, options: dict[str, Any], data: Dataset, where: str = "model"
            ) -> Callable[[nnx.Rngs], nnx.Module]:
    """A constructor for one model on ``data``, checked once abstractly so bad options fail before training."""
    check_model(target, data.input_shape, data.n_classes, options, where)
    return functools.partial(build_model, target, data.input_shape, data.n_classes, options, where=where)


def check_before_data(config: RunConfig, variants: list[tuple[str, dict[str, Any], str]]) -> None:
    """Builds every (target, options, where) abstractly on the dataset's shape, known from its options alone,
    so bad model options fail before any data is read (loaders whose shape needs the data are checked later)."""
    known = dataset_shape(config.dataset.loader, config.dataset.options)
    if known is None:
        return
    for target, options, where in variants:
        check_model(target, known[0], known[1], options, where)


def spec_variants(specs: tuple[ModelSpec, ...]) -> list[tuple[str, dict[str, Any], str]]:
    return [(s.target, s.options, s.where) for s in specs]


def init_seeds(build: Callable[[nnx.Rngs], nnx.Module], config: RunConfig
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


def as_trained(name: str, target: str, options: dict[str, Any], data: Dataset, graphdef: nnx.GraphDef,
               states: TrainState, config: RunConfig, history: History | None) -> TrainedModel:
    """Wraps seed-stacked training states (trained or just initialised) as a :class:`TrainedModel`."""
    return TrainedModel(
        name=name, target=target, options=dict(options), input_shape=tuple(data.input_shape),
        n_classes=data.n_classes, graphdef=graphdef, params=states.params, model_state=states.model_state,
        seeds=[config.seed + i for i in range(config.n_seeds)],
        status=history.status() if history is not None else ["ok"] * config.n_seeds,
        source="trained" if history is not None else "initialised",
        train_record=None if history is None else {"loss": history.loss.tolist(),
                                                   "accuracy": history.accuracy.tolist(),
                                                   "seconds": history.seconds})


def obtain(config: RunConfig, data: Dataset, out_dir: Path, name: str, target: str, options: dict[str, Any],
           plan: ExecutionPlan, where: str | None = None) -> TrainedModel:
    """The trained seeds of one model: loaded from ``config.load_from`` when set (checked against this
    config), else initialised, trained on ``data`` and saved as a checkpoint in ``out_dir``."""
    where = where or f"zoo.{name}"
    if config.load_from:
        return trained.load(Path(config.load_from), name, target, options, tuple(data.input_shape),
                            data.n_classes, where)
    check_batch(config.train.batch_size, len(data.y_train))
    graphdef, states = init_seeds(builder(target, options, data, where), config)
    states, history = train_seeds(graphdef, states, data, config, plan, name)
    model = as_trained(name, target, options, data, graphdef, states, config, history)
    trained.save(model, out_dir, data.summary())
    return model
