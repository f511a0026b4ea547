"""A composed config (a plain dict, as Hydra composes it) checked once into a typed :class:`RunConfig`.

Every node has one options model (:mod:`equivar.schema`): the top level (:class:`RunOptions`), ``train``
(:class:`equivar.train.TrainOptions`), ``shift`` (:class:`equivar.transforms.ShiftGrid`), ``eval``
(:class:`equivar.evaluate.EvalOptions`), ``execution`` (:class:`equivar.execution.ExecutionOptions`), the
dataset (the class its ``_target_`` names) and the experiment's own ``<name>.*`` (its module's ``Options``).
Models are checked by their constructors. Nothing here reads Hydra itself.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import BaseModel, Field

from equivar.checkpoints import available, record_path
from equivar.data import DatasetOptions, dataset_options
from equivar.errors import ConfigError
from equivar.evaluate import EvalOptions
from equivar.execution import ExecutionOptions, ExecutionPlan
from equivar.io import read_json
from equivar.results import ExperimentResult
from equivar.schema import NonNegativeInt, Options, PositiveInt, check, nearest
from equivar.targets import locate_module
from equivar.train import TrainOptions
from equivar.transforms import ShiftGrid

BUILTIN_EXPERIMENTS = "equivar.experiments"  # experiment NAME is the module equivar.experiments.NAME by default


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One model of a run: its label, its class as Hydra's ``_target_``, and its constructor options."""

    name: str  # the label in results (a key of `zoo`)
    target: str  # the model class, e.g. equivar.models.LeNet
    options: dict[str, Any]

    @property
    def where(self) -> str:
        """How the user writes this model on the command line."""
        return f"zoo.{self.name}"


class RunOptions(Options):
    """The top-level keys."""

    experiment_name: str | None = Field(None, description="set by experiment=NAME")
    experiment_module: str | None = Field(None, description="the Python module that runs the experiment; null: "
                                                            "equivar.experiments.<experiment_name>")
    overwrite: bool = Field(False, description="true: allow a run into a folder that already holds one (never the "
                                               "default)")
    seed: NonNegativeInt = Field(0, description="base seed: seed i of a run uses seed + i")
    n_seeds: PositiveInt = Field(3, description="independently initialised and shuffled models per configuration")
    models: list[str] = Field(["mlp", "lenet", "local", "cnn_aps"], min_length=1,
                              description="which zoo entries to train; zoo.NAME.* changes one")
    load_from: str | None = Field(None, description="an earlier run folder: measure its saved models "
                                                    "(checkpoints/) instead of training")


# The config nodes and their options models (the experiment's own node is added per run).
NODES: dict[str, type[BaseModel]] = {"train": TrainOptions, "shift": ShiftGrid, "eval": EvalOptions,
                                     "execution": ExecutionOptions}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a run needs, checked: each node typed, the experiment's own options included."""

    experiment: str
    module: str  # the experiment's Python module
    seed: int
    n_seeds: int
    models: tuple[ModelSpec, ...]
    zoo: Mapping[str, Any]  # every zoo entry as composed (zoo_spec checks one)
    dataset: DatasetOptions
    train: TrainOptions
    shift: ShiftGrid
    eval: EvalOptions
    execution: ExecutionOptions
    options: Any = None  # the experiment's ``Options`` (None for an experiment without options)
    load_from: str | None = None  # an earlier run folder whose saved models are measured instead of training

    @property
    def seeds(self) -> list[int]:
        return [self.seed + i for i in range(self.n_seeds)]

    def plan(self) -> ExecutionPlan:
        return self.execution.plan()

    def zoo_spec(self, name: str) -> ModelSpec:
        """The zoo entry ``name`` as a checked spec (entries no model of the run uses are checked only here)."""
        if name not in self.zoo:
            raise ConfigError(f"zoo.{name} is not in the config; add it with +model@zoo.{name}=<a conf/model name>")
        return _spec(name, self.zoo[name])


def experiment_module(top: RunOptions) -> str:
    """The module that runs the chosen experiment."""
    if not top.experiment_name:
        raise ConfigError("no experiment chosen: add experiment=NAME (e.g. experiment=shift_test)")
    return top.experiment_module or f"{BUILTIN_EXPERIMENTS}.{top.experiment_name}"


def load_experiment(name: str) -> ModuleType:
    """The experiment module ``name``: it has ``run``, ``plot``, ``summary`` and a ``Result`` type (and, if it has
    options, an ``Options`` model; if it asks more of a config than the options' rules, a ``check(config)``)."""
    module = locate_module(name, "experiment_module")
    missing = [attr for attr in ("run", "plot", "summary", "Result") if not hasattr(module, attr)]
    if missing:
        raise ConfigError(f"experiment module {name} has no {', '.join(missing)}: an experiment module defines run, "
                          "plot, summary and its Result type (docs/api.md, adding an experiment)")
    return module


def _check_root(raw: Mapping[str, Any], experiment: str) -> None:
    """Every top-level key is an option, a checked node, or the chosen experiment's options."""
    known = [*RunOptions.model_fields, "zoo", "dataset", *NODES]
    for key in raw:
        if key in known or key == experiment:
            continue
        hint = ""
        if key == "model":
            hint = "; choose models with models=[lenet,...], or add a zoo entry with +model@zoo.NAME=lenet"
        elif key in builtin_experiments():
            hint = f"; {key}.* are the options of experiment={key}, but this run is experiment={experiment}"
        near = nearest(key, [*known, experiment])
        raise ConfigError(f"{key} is not an option" + (f" (did you mean {near[0]}?)" if near else "")
                          + hint + f"; top-level options: {', '.join(known)}")


def _spec(name: str, entry: Any) -> ModelSpec:
    if not isinstance(entry, Mapping):
        raise ConfigError(f"zoo.{name} must be a mapping of a _target_ and options, got {entry!r}")
    options = dict(entry)
    target = options.pop("_target_", None)
    if target is None:
        raise ConfigError(f"zoo.{name} has no _target_: name its model class, e.g. "
                          f"+zoo.{name}._target_=equivar.models.LeNet")
    if not isinstance(target, str):
        raise ConfigError(f"zoo.{name}._target_ must be a dotted class path, got {target!r}")
    return ModelSpec(name=str(name), target=target, options=options)


def _model_specs(names: list[str], zoo: Mapping[str, Any], load_from: str | None) -> tuple[ModelSpec, ...]:
    """The models a run measures: zoo entries, or models saved in ``load_from`` that the zoo lacks."""
    chosen = []
    for name in names:
        if name in zoo:
            chosen.append(_spec(name, zoo[name]))
        elif load_from and record_path(Path(load_from), name).is_file():
            saved = read_json(record_path(Path(load_from), name))  # a model of that run the config lacks
            chosen.append(ModelSpec(name=str(name), target=saved["target"], options=dict(saved["options"])))
        else:
            near = nearest(name, zoo)
            raise ConfigError(f"unknown model {name!r} in models" + (f" (did you mean {near[0]!r}?)" if near else "")
                              + f"; valid choices: {', '.join(sorted(zoo))} (entries of zoo; add one with "
                              "+zoo.NAME._target_=package.module.Class or +model@zoo.NAME=lenet)")
    return tuple(chosen)


def _node(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a group of options ({key}.NAME=VALUE), got {value!r}")
    return dict(value)


def parse_config(raw: Mapping[str, Any]) -> RunConfig:
    """Checks a resolved config dict, node by node, into a :class:`RunConfig` (one-line ConfigErrors naming the
    key). Each distinct config is checked once per process: the CLI checks every job of a command line before
    Hydra starts any, and each job then runs the config already checked."""
    key = json.dumps(raw, sort_keys=True, default=repr)
    if key not in _PARSED:
        _PARSED[key] = _parse(raw)
    return _PARSED[key]


_PARSED: dict[str, RunConfig] = {}


def _parse(raw: Mapping[str, Any]) -> RunConfig:
    raw = dict(raw)
    if isinstance(raw.get("models"), str):  # models=lenet: one model
        raw["models"] = [raw["models"]]
    top = check(RunOptions, {k: v for k, v in raw.items() if k in RunOptions.model_fields})
    module_name = experiment_module(top)
    experiment = str(top.experiment_name)
    module = load_experiment(module_name)
    _check_root(raw, experiment)
    options_cls = getattr(module, "Options", None)
    if options_cls is None and raw.get(experiment):
        raise ConfigError(f"experiment={experiment} has no options, but the config sets {experiment}.*")
    options = check(options_cls, _node(raw, experiment), experiment) if options_cls is not None else None
    if top.load_from and not Path(top.load_from).expanduser().is_dir():
        raise ConfigError(f"load_from={top.load_from!r} is not a folder; give the run folder of an earlier run "
                          "(it holds checkpoints/)")
    if top.load_from and not hasattr(module, "checkpoints"):  # every model's checkpoint, before any work
        held = available(Path(top.load_from).expanduser())
        missing = [name for name in top.models if name not in held]
        if missing:
            raise ConfigError(f"load_from={top.load_from!r} holds no checkpoint of {', '.join(map(repr, missing))}; "
                              + (f"it holds {', '.join(held)}: choose with models=[{','.join(held)}] or a subset"
                                 if held else "it holds none (no checkpoints/ of a run that trained)"))
    zoo = _node(raw, "zoo")
    models = _model_specs(top.models, zoo, top.load_from)
    dataset = dataset_options(_node(raw, "dataset"))
    train = check(TrainOptions, _node(raw, "train"), "train")
    train.check_optimizer()
    config = RunConfig(experiment=experiment, module=module_name, seed=top.seed, n_seeds=top.n_seeds, models=models,
                       zoo=zoo, dataset=dataset, train=train, shift=check(ShiftGrid, _node(raw, "shift"), "shift"),
                       eval=check(EvalOptions, _node(raw, "eval"), "eval"),
                       execution=check(ExecutionOptions, _node(raw, "execution"), "execution"),
                       options=options, load_from=top.load_from)
    if hasattr(module, "check"):  # what the experiment itself asks of the config (before any data is read)
        module.check(config)
    if top.load_from and hasattr(module, "checkpoints"):  # an experiment that trains models of its own making
        held = available(Path(top.load_from).expanduser())
        wanted = module.checkpoints(config)
        missing = [name for name in wanted if name not in held]
        if missing:
            raise ConfigError(
                f"experiment={experiment} measures models it trains itself ({', '.join(wanted)}), so load_from must "
                f"be an earlier {experiment} run with these models and options; {top.load_from!r} holds "
                f"{', '.join(held) if held else 'no checkpoints'}: drop load_from to train them here")
    return config


def register_defaults() -> None:
    """Registers the option models' defaults with Hydra as plain nodes (``schema/<node>``, ``schema/run`` for
    the top level; ``dataset_schema/<Class>`` for equivar's datasets; ``options/<experiment>`` for its
    experiments): Hydra composes them and :func:`parse_config` checks every value, one line naming the key."""
    from hydra.core.config_store import ConfigStore

    from equivar.schema import defaults

    store = ConfigStore.instance()
    store.store(group="schema", name="run", node=defaults(RunOptions))
    for name, cls in NODES.items():
        store.store(group="schema", name=name, node=defaults(cls))
    for cls in _subclasses(DatasetOptions):
        store.store(group="dataset_schema", name=cls.__name__, node=defaults(cls))
    for name, module in builtin_experiments().items():
        if hasattr(module, "Options"):
            store.store(group="options", name=name, node=defaults(module.Options))


@functools.cache
def builtin_experiments() -> dict[str, ModuleType]:
    """equivar's own experiments by name: the modules of the ``equivar.experiments`` package."""
    package = importlib.import_module(BUILTIN_EXPERIMENTS)
    return {info.name: load_experiment(f"{BUILTIN_EXPERIMENTS}.{info.name}")
            for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name)}


def as_dict(cfg: Any, resolve: bool = True) -> dict[str, Any]:
    """An OmegaConf config (or a loaded YAML) as the plain dict the rest of equivar reads."""
    from omegaconf import OmegaConf

    out = OmegaConf.to_container(cfg, resolve=resolve)
    if not isinstance(out, dict):
        raise ConfigError(f"a config must be a mapping of keys, got {type(out).__name__}")
    return {str(k): v for k, v in out.items()}


def _subclasses(cls: type) -> list[type]:
    found: list[type] = []
    subs: list[type] = type.__subclasses__(cls)
    for sub in subs:
        found += [sub, *_subclasses(sub)]
    return found


METRICS = "metrics.json"  # every run's typed result


def read_result(run_dir: Path) -> ExperimentResult:
    """The typed result stored in ``run_dir/metrics.json``, read by the module that wrote it."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: give a run folder that holds metrics.json")
    data = read_json(path)
    module_name = data.get("module") or f"equivar.experiments.{data.get('experiment')}"
    module = load_experiment(module_name)
    return module.Result.model_validate(data)
