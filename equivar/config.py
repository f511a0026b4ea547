"""Plain-dict config (as composed by Hydra) to typed, checked specs. Nothing here reads Hydra itself."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from equivar.data import DATASET_SCHEMAS, Recipe, dataset_options
from equivar.errors import ConfigError
from equivar.io import read_json
from equivar.options import check, check_keywords, defaults, nearest, option
from equivar.strategy import SEED_PACKINGS
from equivar.train import OPTIMIZERS, TrainSpec
from equivar.trained import record_path
from equivar.transforms import INTEGER_MODES, SHIFT_MODES

# Dataset keys that describe how to use the data, not how to load it.
DATASET_RUN_KEYS = tuple(f.name for f in dataclasses.fields(Recipe))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str  # the label in results (a key of `zoo`)
    target: str  # the model class, as Hydra's _target_ (e.g. equivar.models.LeNet)
    options: dict[str, Any]

    @property
    def where(self) -> str:
        """How the user writes this model on the command line."""
        return f"zoo.{self.name}"


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    loader: str
    options: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ShiftSpec:
    max: float  # shifts -max..max along every spatial axis
    mode: str
    step: float = 1  # grid spacing; fractional steps need a sub-pixel mode


@dataclasses.dataclass(frozen=True)
class RunConfig:
    experiment: str
    seed: int
    n_seeds: int
    models: tuple[ModelSpec, ...]
    dataset: DatasetSpec
    train: TrainSpec
    shift: ShiftSpec
    shift_subset: int | None  # test examples used for the shift grid (None: all)
    seed_packing: str
    steps_per_call: int | None  # None: the backend's default (equivar.strategy)
    raw: dict[str, Any]
    load_from: str | None = None  # an earlier run folder whose saved models are measured instead of training


# The core options, one schema per config node: type, default, rule and help in one place. Hydra composes
# their defaults (register_schemas), parse_config checks the composed values against them.


@dataclasses.dataclass
class RunOptions:
    """The top-level keys."""

    experiment_name: str | None = option(None, "set by experiment=NAME")
    overwrite: bool = option(False, "true: allow a run into a folder that already holds one (never the default)")
    seed: int = option(0, "base seed: seed i of a run uses seed + i", minimum=0)
    n_seeds: int = option(3, "independently initialised and shuffled models per configuration", minimum=1)
    models: list[str] = option(["mlp", "lenet", "local", "cnn_aps"], "which zoo entries to train; zoo.NAME.* "
                               "changes one")
    load_from: str | None = option(None, "an earlier run folder: measure its saved models (checkpoints/) "
                                   "instead of training")


@dataclasses.dataclass
class TrainOptions:
    """``train.*``: the dataset's recipe (``dataset.*``) unless overridden."""

    epochs: int = option("${dataset.epochs}", "passes over the training set", minimum=1)
    batch_size: int = option("${dataset.batch_size}", "examples per step", minimum=1)
    optimizer: str = option("adam", "an optax optimizer", choices=tuple(OPTIMIZERS))
    learning_rate: float = option("${dataset.learning_rate}", "the optimizer's step size", above=0)
    optimizer_options: dict = option({}, "further keyword arguments of the optax optimizer (checked against "
                                     "its signature)")
    augment_shift: int = option(0, "> 0: shift every training example by a random offset in [-a, a] per axis",
                                minimum=0)
    augment_mode: str = option("roll", "how augmentation shifts", choices=SHIFT_MODES)
    min_steps: int = option(0, "train at least this many steps (more epochs for small training sets)", minimum=0)


@dataclasses.dataclass
class ShiftOptions:
    """``shift.*``: the grid of shifts the measurements use."""

    max: float = option("${dataset.shift_max}", "evaluate shifts -max..max along every spatial axis", minimum=0)
    mode: str = option("roll", "roll (circular), zero (content leaving the frame is lost), or sub-pixel: "
                       "fourier, bilinear-zero|reflect|circular", choices=SHIFT_MODES)
    step: float = option(1, "grid spacing; e.g. 0.25 with a sub-pixel mode", above=0)


@dataclasses.dataclass
class EvalOptions:
    """``eval.*``."""

    shift_subset: int | None = option("${dataset.shift_subset}", "test examples in the shift grid (null: all)",
                                      minimum=1)


@dataclasses.dataclass
class ExecutionOptions:
    """``execution.*``: how seeds and steps are packed on the device (equivar/strategy.py)."""

    seed_packing: str = option("auto", "auto (per backend) | loop | vmap", choices=SEED_PACKINGS)
    steps_per_call: int | str = option("auto", "auto (the backend's default) | N training steps per jitted call",
                                       minimum=1, choices=("auto",))


CORE_SCHEMAS: dict[str, type] = {"train": TrainOptions, "shift": ShiftOptions, "eval": EvalOptions,
                                 "execution": ExecutionOptions}
# Keys of the composed config that are checked elsewhere: models by their constructors, the dataset by its
# loader's schema (equivar.data.DATASET_SCHEMAS).
NODES = ("zoo", "dataset", *CORE_SCHEMAS)


def register_schemas() -> None:
    """Registers the core schemas' defaults with Hydra (``schema/<node>``, ``schema/run`` for the top level) and
    each dataset loader's (``dataset_schema/<loader>``), as plain nodes: Hydra composes them, and every type
    and range is checked by :func:`parse_config`, one line naming the key."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    store.store(group="schema", name="run", node=defaults(RunOptions))
    for name, schema in CORE_SCHEMAS.items():
        store.store(group="schema", name=name, node=defaults(schema))
    for name, schema in DATASET_SCHEMAS.items():
        store.store(group="dataset_schema", name=name, node=defaults(schema))


def _check_optimizer(name: str, options: dict[str, Any], learning_rate: float) -> None:
    """``train.optimizer_options`` against the optax optimizer's signature (nearest name suggested), then one
    update on a tiny parameter, so bad values fail here and not in the middle of a compiled step."""
    import jax.numpy as jnp

    fn = OPTIMIZERS[name]
    check_keywords(fn, options, f"train.optimizer_options (optax.{fn.__name__})", skip=("learning_rate",))
    def first_update(opts: dict[str, Any]) -> bool:
        tx = fn(learning_rate=learning_rate, **opts)
        params = {"w": jnp.ones(2)}
        updates, _ = tx.update(params, tx.init(params), params)
        return all(bool(jnp.isfinite(u).all()) for u in updates.values())

    for key, value in [(None, None), *options.items()]:  # each option alone first: the message names it
        try:
            finite = first_update(options if key is None else {key: value})
        except Exception as err:  # optax's own complaint about a value, as one line naming the key
            if key is None:
                continue
            raise ConfigError(f"train.optimizer_options.{key}={value!r} is refused by optax.{fn.__name__}: "
                              f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
        if not finite:
            where = "train.optimizer_options" + ("" if key is None else f".{key}={value!r}")
            raise ConfigError(f"{where} makes optax.{fn.__name__}'s first update non-finite")
    try:
        first_update(options)
    except Exception as err:
        raise ConfigError(f"train.optimizer_options={options} together are refused by optax.{fn.__name__}: "
                          f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None


def _check_root(raw: Mapping[str, Any], option_schemas: Mapping[str, type]) -> None:
    """Every top-level key is an option, a checked node, or the chosen experiment's options."""
    experiment = raw.get("experiment_name")
    known = [f.name for f in dataclasses.fields(RunOptions)] + list(NODES)
    for key in raw:
        if key in known or key == experiment:
            continue
        if key in option_schemas:
            raise ConfigError(f"{key}.* are options of experiment={key}, but this run is experiment={experiment}")
        hint = ""
        if key == "model":
            hint = "; choose models with models=[lenet,...], or add a zoo entry with +model@zoo.NAME=lenet"
        near = nearest(key, known + list(option_schemas))
        raise ConfigError(f"{key} is not an option" + (f" (did you mean {near[0]}?)" if near else "")
                          + hint + f"; top-level options: {', '.join(known)}")


MAX_SHIFTS_PER_AXIS = 1001  # a finer grid is a typo (shift.step=0.0001), not a measurement


def _shift_spec(options: ShiftOptions) -> ShiftSpec:
    mode, step, maximum = options.mode, options.step, options.max
    if mode in INTEGER_MODES and not (float(step).is_integer() and float(maximum).is_integer()):
        raise ConfigError(f"shift.mode={mode} shifts by whole positions, but shift.step={step:g} and shift.max="
                          f"{maximum:g}; use shift.mode=fourier or bilinear-zero|reflect|circular for sub-pixel grids")
    if abs(round(maximum / step) * step - maximum) > 1e-9 * max(1.0, maximum):
        raise ConfigError(f"shift.max={maximum:g} is not a whole number of shift.step={step:g}")
    if 2 * round(maximum / step) + 1 > MAX_SHIFTS_PER_AXIS:
        raise ConfigError(f"shift.max={maximum:g} with shift.step={step:g} gives {2 * round(maximum / step) + 1} shifts "
                          f"per axis; at most {MAX_SHIFTS_PER_AXIS}: use a larger shift.step")
    if mode in INTEGER_MODES:
        maximum, step = int(maximum), int(step)
    return ShiftSpec(max=maximum, mode=mode, step=step)


def _model_specs(names: list[str], zoo: Mapping[str, Any], load_from: str | None) -> tuple[ModelSpec, ...]:
    models = []
    for name in names:
        if name not in zoo and load_from:  # a model of that run the config does not declare: its own record
            manifest = record_path(Path(load_from), name)
            if manifest.is_file():
                saved = read_json(manifest)
                models.append(ModelSpec(name=str(name), target=saved["target"], options=dict(saved["options"])))
                continue
            raise ConfigError(f"unknown model {name!r} in models: it is not in zoo, and load_from={load_from!r} "
                              f"holds no checkpoint of it (no checkpoints/{name}.json there)")
        if name not in zoo:
            near = nearest(name, zoo)
            raise ConfigError(f"unknown model {name!r} in models"
                              + (f" (did you mean {near[0]!r}?)" if near else "")
                              + f"; valid choices: {', '.join(sorted(zoo))} (entries of zoo; add one with "
                              "+zoo.NAME._target_=package.module.Class or +model@zoo.NAME=lenet)")
        entry = zoo[name]
        if not isinstance(entry, Mapping):
            raise ConfigError(f"zoo.{name} must be a mapping of a _target_ and options, got {entry!r}")
        entry = dict(entry)
        target = entry.pop("_target_", None)
        if target is None:
            raise ConfigError(f"zoo.{name} has no _target_: name its model class, e.g. "
                              f"+zoo.{name}._target_=equivar.models.LeNet")
        if not isinstance(target, str):
            raise ConfigError(f"zoo.{name}._target_ must be a dotted class path, got {target!r}")
        models.append(ModelSpec(name=str(name), target=target, options=entry))
    return tuple(models)


def _node(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a group of options ({key}.NAME=VALUE), got {value!r}")
    return dict(value)


def parse_config(raw: Mapping[str, Any], option_schemas: Mapping[str, type] | None = None) -> RunConfig:
    """Checks a resolved config dict against the schemas and turns it into a :class:`RunConfig`.

    Args:
        raw: the composed, resolved config.
        option_schemas: every experiment's typed options by name (``equivar.experiments``); the chosen
            experiment's ``<name>.*`` are checked too, and another experiment's are refused.
    """
    raw = dict(raw)
    if isinstance(raw.get("models"), str):  # models=lenet: one model
        raw["models"] = [raw["models"]]
    option_schemas = dict(option_schemas or {})
    top = check(RunOptions, {k: v for k, v in raw.items() if k in {f.name for f in dataclasses.fields(RunOptions)}},
                "").__dict__
    experiment = top["experiment_name"]
    if not experiment:
        raise ConfigError("no experiment chosen: add experiment=NAME (e.g. experiment=shift_test)")
    _check_root(raw, option_schemas)
    if experiment in option_schemas:
        check(option_schemas[experiment], _node(raw, experiment), experiment)
    if top["load_from"] and not Path(top["load_from"]).is_dir():
        raise ConfigError(f"load_from={top['load_from']!r} is not a folder; give the run folder of an earlier run "
                          "(it holds checkpoints/)")
    zoo = _node(raw, "zoo")
    models = _model_specs(top["models"], zoo, top["load_from"])
    dataset_node = _node(raw, "dataset")
    loader, _ = dataset_options(dataset_node)  # every dataset.* value checked by its loader's rules
    dataset = DatasetSpec(loader, {k: v for k, v in dataset_node.items() if k not in DATASET_RUN_KEYS})
    tr = check(TrainOptions, _node(raw, "train"), "train")
    _check_optimizer(tr.optimizer, tr.optimizer_options, tr.learning_rate)
    train = TrainSpec(epochs=tr.epochs, batch_size=tr.batch_size, optimizer=tr.optimizer,
                      learning_rate=tr.learning_rate, optimizer_options=dict(tr.optimizer_options),
                      augment_shift=tr.augment_shift, augment_mode=tr.augment_mode, min_steps=tr.min_steps)
    shift = _shift_spec(check(ShiftOptions, _node(raw, "shift"), "shift"))
    evaluation = check(EvalOptions, _node(raw, "eval"), "eval")
    execution = check(ExecutionOptions, _node(raw, "execution"), "execution")
    return RunConfig(
        experiment=str(experiment),
        seed=top["seed"],
        n_seeds=top["n_seeds"],
        models=models,
        dataset=dataset,
        train=train,
        shift=shift,
        shift_subset=evaluation.shift_subset,
        seed_packing=execution.seed_packing,
        steps_per_call=None if execution.steps_per_call == "auto" else execution.steps_per_call,
        raw=raw,
        load_from=top["load_from"],
    )
