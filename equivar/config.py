"""Plain-dict config (as composed by Hydra) to typed, checked specs. Nothing here reads Hydra itself."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Mapping

from equivar.data import DATASETS
from equivar.errors import ConfigError
from equivar.io import read_json
from equivar.strategy import SEED_PACKINGS
from equivar.train import OPTIMIZERS, TrainSpec
from equivar.trained import record_path
from equivar.transforms import INTEGER_MODES, SHIFT_MODES

# Dataset keys that describe how to use the data, not how to load it.
DATASET_RUN_KEYS = ("loader", "epochs", "batch_size", "learning_rate", "shift_max", "shift_subset")


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


def _choice(value: Any, choices: Any, what: str) -> str:
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; valid choices: {', '.join(sorted(choices))}")
    return str(value)


def _int(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{what} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{what} must be >= {minimum}, got {value}")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what} must be a number, got {value!r}")
    return float(value)


def positive_int(value: Any, what: str) -> int:
    """An integer >= 1, or a one-line ConfigError naming the key (for experiments' own options)."""
    return _int(value, what, 1)


def int_list(values: Any, what: str, minimum: int = 0) -> list[int]:
    """A list of integers >= ``minimum``, or a one-line ConfigError naming the key."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ConfigError(f"{what} must be a list of integers, got {values!r}")
    return [_int(v, f"{what} entry", minimum) for v in values]


def number(value: Any, what: str) -> float:
    return _number(value, what)


def _shift_spec(sh: dict[str, Any]) -> ShiftSpec:
    mode = _choice(sh.get("mode"), SHIFT_MODES, "shift mode")
    step = _number(sh.get("step", 1), "shift.step")
    maximum = _number(sh.get("max"), "shift.max")
    if not step > 0 or not math.isfinite(step):
        raise ConfigError(f"shift.step must be > 0, got {step}")
    if not maximum >= 0 or not math.isfinite(maximum):
        raise ConfigError(f"shift.max must be >= 0, got {maximum}")
    if mode in INTEGER_MODES and not (float(step).is_integer() and float(maximum).is_integer()):
        raise ConfigError(f"shift.mode={mode} shifts by whole positions, but shift.step={step} and shift.max="
                          f"{maximum}; use shift.mode=fourier or bilinear-zero|reflect|circular for sub-pixel grids")
    if abs(round(maximum / step) * step - maximum) > 1e-9:
        raise ConfigError(f"shift.max={maximum} is not a whole number of shift.step={step}")
    if mode in INTEGER_MODES:
        maximum, step = int(maximum), int(step)
    return ShiftSpec(max=maximum, mode=mode, step=step)


def parse_config(raw: Mapping[str, Any]) -> RunConfig:
    """Checks a resolved config dict and turns it into a :class:`RunConfig`."""
    raw = dict(raw)
    experiment = raw.get("experiment_name")
    if not experiment:
        raise ConfigError("no experiment chosen: add experiment=NAME (e.g. experiment=shift_test)")

    zoo = raw.get("zoo") or {}
    names = raw.get("models") or []
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ConfigError("models is empty: list at least one entry of zoo, e.g. models=[lenet]")
    models = []
    load_from = raw.get("load_from")
    if load_from is not None and not isinstance(load_from, str):
        raise ConfigError(f"load_from must be the path of an earlier run folder, got {load_from!r}")
    for name in names:
        if name not in zoo and load_from:  # a model of that run the config does not declare: its own record
            manifest = record_path(Path(load_from), name)
            if manifest.is_file():
                saved = read_json(manifest)
                models.append(ModelSpec(name=str(name), target=saved["target"], options=dict(saved["options"])))
                continue
        if name not in zoo and load_from:
            raise ConfigError(f"unknown model {name!r} in models: it is not in zoo, and load_from={load_from!r} "
                              f"holds no checkpoint of it (no checkpoints/{name}.json there)")
        if name not in zoo:
            raise ConfigError(f"unknown model {name!r} in models; valid choices: {', '.join(sorted(zoo))} "
                              "(entries of zoo; add one with +zoo.NAME._target_=package.module.Class or "
                              "+model@zoo.NAME=lenet)")
        entry = dict(zoo[name] or {})
        target = entry.pop("_target_", None)
        if target is None:
            raise ConfigError(f"zoo.{name} has no _target_: name its model class, e.g. "
                              f"+zoo.{name}._target_=equivar.models.LeNet")
        models.append(ModelSpec(name=str(name), target=str(target), options=entry))

    ds = dict(raw.get("dataset") or {})
    loader = _choice(ds.get("loader"), DATASETS, "dataset loader")
    dataset = DatasetSpec(loader, {k: v for k, v in ds.items() if k not in DATASET_RUN_KEYS})

    tr = dict(raw.get("train") or {})
    train = TrainSpec(
        epochs=_int(tr.get("epochs"), "train.epochs", 1),
        batch_size=_int(tr.get("batch_size"), "train.batch_size", 1),
        optimizer=_choice(tr.get("optimizer"), OPTIMIZERS, "optimizer"),
        learning_rate=_number(tr.get("learning_rate"), "train.learning_rate"),
        optimizer_options=dict(tr.get("optimizer_options") or {}),
        augment_shift=_int(tr.get("augment_shift", 0), "train.augment_shift", 0),
        augment_mode=_choice(tr.get("augment_mode", "roll"), SHIFT_MODES, "train.augment_mode"),
        min_steps=_int(tr.get("min_steps", 0), "train.min_steps", 0),
    )
    sh = dict(raw.get("shift") or {})
    shift = _shift_spec(sh)
    subset = (raw.get("eval") or {}).get("shift_subset")
    execution = dict(raw.get("execution") or {})
    return RunConfig(
        experiment=str(experiment),
        seed=_int(raw.get("seed"), "seed", 0),
        n_seeds=_int(raw.get("n_seeds"), "n_seeds", 1),
        models=tuple(models),
        dataset=dataset,
        train=train,
        shift=shift,
        shift_subset=None if subset is None else _int(subset, "eval.shift_subset", 1),
        seed_packing=_choice(execution.get("seed_packing", "auto"), SEED_PACKINGS, "execution.seed_packing"),
        steps_per_call=None if execution.get("steps_per_call", "auto") == "auto" else
        _int(execution["steps_per_call"], "execution.steps_per_call", 1),
        raw=raw,
        load_from=load_from,
    )
