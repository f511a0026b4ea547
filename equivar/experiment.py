"""What every experiment shares: obtaining its trained models (trained and saved here, or loaded with
``load_from``), its records' common fields, and publishing a result (metrics.json, plots, summary).

An experiment is one module (``equivar.experiments.NAME``, or any module a config names with
``experiment_module``) that defines:

* ``Options``: its typed ``<name>.*`` options (optional);
* ``Result``: its typed result, an :class:`equivar.results.ExperimentResult` whose ``models`` records are
  :class:`equivar.results.ModelRecord` subclasses;
* ``run(config, out_dir) -> Result``, ``plot(result, out_dir) -> list[Path]`` and ``summary(result) -> str``.

:func:`execute` runs one and publishes its result; :func:`read_result` reads a run folder's result back.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import jax
from flax import nnx

from equivar import checkpoints
from equivar.checkpoints import TrainedModel
from equivar.config import METRICS, ModelSpec, RunConfig, load_experiment, read_result  # noqa: F401  (re-exported)
from equivar.data import Dataset
from equivar.errors import ConfigError
from equivar.execution import ExecutionPlan
from equivar.io import environment, read_json, write_json
from equivar.models import build_model, check_model
from equivar.plot import training_figure
from equivar.results import DatasetSummary, Environment, ExperimentResult, ModelRecord, SeedRecord, Training
from equivar.tensorboard import EpochWriter
from equivar.train import History, TrainState, init_states, make_optimizer, seed_keys, trainer_for

log = logging.getLogger(__name__)

SUMMARY = "summary.md"


def execute(config: RunConfig, out_dir: Path) -> ExperimentResult:
    """Runs the configured experiment and publishes its result into ``out_dir``."""
    module = load_experiment(config.module)
    result = module.run(config, out_dir)
    return publish(result, module, out_dir)


def publish(result: ExperimentResult, module: ModuleType, out_dir: Path) -> ExperimentResult:
    """Sets the run's status and environment, writes metrics.json (atomically) and summary.md, and draws the
    plots (the caller prints summary.md once the run's status is recorded: printing is not the work)."""
    result.finish(Environment.model_validate(environment()))
    write_json(Path(out_dir) / METRICS, result.model_dump(mode="json"))
    text = module.summary(result)
    (Path(out_dir) / SUMMARY).write_text(text + "\n")
    module.plot(result, Path(out_dir))
    training_figure(result, Path(out_dir))
    return result


STATUS = "status.json"


def resuming(out_dir: Path) -> bool:
    """Whether this run continues an interrupted attempt of the same config in the same folder (its status
    says so): models whose checkpoints that attempt completed are loaded, not trained again."""
    path = Path(out_dir) / STATUS
    return path.is_file() and bool(read_json(path).get("resumes"))


def base_fields(config: RunConfig, data: Dataset | None, models: Sequence[TrainedModel] = ()) -> dict[str, Any]:
    """The fields every result starts with. The seeds are those of the measured ``models`` when given (models
    loaded from an earlier run keep that run's seeds), else the config's."""
    seeds = sorted({s for m in models for s in m.seeds}) if models else config.seeds
    return {"experiment": config.experiment, "module": config.module, "seeds": seeds, "load_from": config.load_from,
            "dataset": None if data is None else DatasetSummary.model_validate(data.summary())}


def record_fields(model: TrainedModel) -> dict[str, Any]:
    """The fields every record of a trained (or loaded) model starts with: its class, where it came from, its
    size, its seeds' status and, when trained here, its training curves."""
    training = None if model.train_record is None else Training.model_validate(model.train_record)
    return {"target": model.target, "source": model.source, "n_params": model.n_params,
            "seeds": [SeedRecord.from_text(s, t) for s, t in zip(model.seeds, model.status)],
            "training": training}


def unmeasured(model: TrainedModel) -> ModelRecord | None:
    """The record of a model whose every seed diverged (its seeds and provenance, no measurements), or None
    when some seed is healthy and the model is measured."""
    if model.ok.any():
        return None
    log.error("%s: every seed diverged (%s); not measured", model.name, "; ".join(model.status))
    return ModelRecord(**record_fields(model))


def check_batch(batch_size: int, n_train: int) -> None:
    """A training set smaller than one batch would give epochs of no steps: an error before training."""
    if batch_size > n_train:
        raise ConfigError(f"train.batch_size={batch_size} exceeds the {n_train} training examples; use "
                          f"train.batch_size <= {n_train}")


def builder(target: str, options: dict[str, Any], data: Dataset, where: str = "model"
            ) -> Callable[[nnx.Rngs], nnx.Module]:
    """A constructor for one model on ``data``, checked once abstractly so bad options fail before training."""
    check_model(target, data.input_shape, data.n_classes, options, where)
    return functools.partial(build_model, target, data.input_shape, data.n_classes, options, where=where)


def check_before_data(config: RunConfig, variants: list[tuple[str, dict[str, Any], str]]) -> None:
    """Builds every (target, options, where) abstractly on the dataset's shape, known from its options alone,
    so bad model options fail before any data is read (datasets whose shape needs the data are checked later)."""
    known = config.dataset.shape()
    if known is None:
        return
    for target, options, where in variants:
        check_model(target, known[0], known[1], options, where)


def spec_variants(specs: Sequence[ModelSpec]) -> list[tuple[str, dict[str, Any], str]]:
    return [(s.target, s.options, s.where) for s in specs]


def init_seeds(build: Callable[[nnx.Rngs], nnx.Module], config: RunConfig) -> tuple[nnx.GraphDef, TrainState]:
    return init_states(build, make_optimizer(config.train), seed_keys(config.seed, config.n_seeds))


def train_seeds(graphdef: nnx.GraphDef, states: TrainState, data: Dataset, config: RunConfig,
                plan: ExecutionPlan, label: str, out_dir: Path | None = None) -> tuple[TrainState, History]:
    """Trains every seed of one model on the training set with the run's train settings, recording the
    held-out curve on the first ``train.heldout_examples`` test examples and, with ``out_dir`` and
    ``train.tensorboard``, writing the curves as TensorBoard events as it goes."""
    trainer = trainer_for(graphdef, config.train, plan)
    n_held = min(config.train.heldout_examples, len(data.y_test))
    heldout = (data.x_test[:n_held], data.y_test[:n_held]) if n_held else None
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(EpochWriter(out_dir, label, config.seeds)) \
            if out_dir is not None and config.train.tensorboard else None
        return trainer.fit(states, jax.device_put(data.x_train), jax.device_put(data.y_train),
                           seed_keys(config.seed, config.n_seeds), config.train, label=label, heldout=heldout,
                           on_epoch=writer)


def as_trained(name: str, target: str, options: dict[str, Any], data: Dataset, graphdef: nnx.GraphDef,
               states: TrainState, config: RunConfig, history: History | None) -> TrainedModel:
    """Wraps seed-stacked training states (trained or just initialised) as a :class:`TrainedModel`."""
    return TrainedModel(
        name=name, target=target, options=dict(options), input_shape=tuple(data.input_shape),
        n_classes=data.n_classes, graphdef=graphdef, params=states.params, model_state=states.model_state,
        seeds=config.seeds, status=history.status() if history is not None else ["ok"] * config.n_seeds,
        source="trained" if history is not None else "initialised",
        train_record=None if history is None else training_record(history))


def training_record(history: History) -> dict[str, Any]:
    """What metrics.json keeps of a training: the curves per seed and epoch, and the seconds it took."""
    record: dict[str, Any] = {"loss": history.loss.tolist(), "accuracy": history.accuracy.tolist(),
                              "seconds": history.seconds, "heldout_examples": history.heldout_examples,
                              "epoch_seconds": history.epoch_seconds,
                              "steady_epoch_seconds": history.steady_epoch_seconds()}
    if history.heldout_loss is not None and history.heldout_accuracy is not None:
        record |= {"heldout_loss": history.heldout_loss.tolist(),
                   "heldout_accuracy": history.heldout_accuracy.tolist()}
    return record


def obtain(config: RunConfig, data: Dataset, out_dir: Path, name: str, target: str, options: dict[str, Any],
           plan: ExecutionPlan, where: str | None = None, start: TrainedModel | None = None) -> TrainedModel:
    """The trained seeds of one model: loaded from ``config.load_from`` when set (checked against this
    config), else initialised (or, with ``start``, taken from ``start``'s seeds, with a fresh optimizer state),
    trained on ``data`` and saved as a checkpoint in ``out_dir``."""
    where = where or f"zoo.{name}"
    if config.load_from:
        return checkpoints.load(Path(config.load_from), name, target, options, tuple(data.input_shape),
                            data.n_classes, where)
    if resuming(out_dir) and name in checkpoints.available(out_dir):  # saved before this run was interrupted
        log.info("%s: its checkpoint from the interrupted attempt is complete; not trained again", name)
        return checkpoints.load(out_dir, name, target, options, tuple(data.input_shape), data.n_classes, where,
                            resumed=True)
    check_batch(config.train.batch_size, len(data.y_train))
    graphdef, states = init_seeds(builder(target, options, data, where), config)
    if start is not None:  # fine-tuning: every seed continues from the same seed of ``start``
        tx = make_optimizer(config.train)
        states = states._replace(params=start.params, model_state=start.model_state,
                                 opt_state=jax.jit(jax.vmap(tx.init))(start.params))
    states, history = train_seeds(graphdef, states, data, config, plan, name, out_dir)
    model = as_trained(name, target, options, data, graphdef, states, config, history)
    checkpoints.save(model, out_dir, data.summary())
    return model
