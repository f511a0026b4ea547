"""The Python API, for notebooks and scripts: the same runs as the command line, the same results.

    import equivar
    result = equivar.measure("shift_test", ["dataset=synthetic", "n_seeds=2"], out_dir="outputs/nb")
    result.models["lenet"].consistency.mean
    again = equivar.measure("shift_test", ["dataset=synthetic", "shift.mode=zero"], load_from="outputs/nb")
    models = equivar.load_models("outputs/nb")        # name -> TrainedModel (every seed, inference mode)
    same = equivar.read_result("outputs/nb")           # the typed result metrics.json holds
    data = equivar.load_data("mnist1d")                # x_train, y_train, x_test, y_test (numpy, channels last)

Your own model class goes in ``models``: ``equivar.measure("shift_test", models={"mine": MyNet})`` or, with
options, ``models={"mine": (MyNet, {"width": 64})}``. The result is the experiment's typed ``Result``, what
``metrics.json`` holds (``result.model_dump()`` gives it as a dict).
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from equivar.errors import ConfigError
from equivar.results import ExperimentResult


def compose(experiment: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The resolved config ``python -m equivar.run experiment=EXPERIMENT OVERRIDES`` would run, as a dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from equivar.config import as_dict
    from equivar.run import config_dir, hydra_message

    try:
        with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=[f"experiment={experiment}", *overrides])
        return as_dict(cfg)
    except (HydraException, OmegaConfBaseException) as err:  # a choice or override Hydra cannot compose: one line
        raise ConfigError(hydra_message(err)) from None


def load_data(dataset: str = "mnist1d", overrides: Sequence[str] = ()) -> Any:
    """The data a run on ``dataset=DATASET OVERRIDES`` trains and tests on, as ``equivar.data.Dataset``:
    ``x_train``, ``y_train``, ``x_test``, ``y_test`` (numpy, channels last), ``n_classes``, ``input_shape``.

    ``equivar.load_data("mnist1d")`` (generated locally), ``equivar.load_data("mnist")``,
    ``equivar.load_data("tfds", ["dataset.tfds_name=fashion_mnist"])``; options as on the command line
    (``["dataset.n_train=1000"]``). Missing data is one line saying how to get it, as in a run.
    """
    from equivar.data import dataset_options, load_dataset
    from equivar.execution import set_up_process

    set_up_process()
    config = compose("shift_test", [f"dataset={dataset}", *overrides])
    return load_dataset(dataset_options(config["dataset"]))


def _model_overrides(models: Mapping[str, Any]) -> list[str]:
    """``zoo`` overrides for model classes given as objects: ``{name: cls}`` or ``{name: (cls, options)}``."""
    out = []
    for name, value in models.items():
        cls, options = (value if isinstance(value, tuple) else (value, {}))
        if isinstance(cls, str):
            path = cls
        else:
            path = f"{cls.__module__}.{cls.__qualname__}"
            if "<locals>" in path:
                raise ConfigError(f"model {name!r}: {cls.__qualname__} is defined inside a function; define it at "
                                  "the top level of a module or notebook so it can be imported by name")
        out.append(f"++zoo.{name}._target_={path}")
        out += [f"++zoo.{name}.{key}={_hydra_value(v)}" for key, v in options.items()]
    if models:
        out.append(f"models=[{','.join(models)}]")
    return out


def _hydra_value(value: Any) -> str:
    import json

    return json.dumps(value) if not isinstance(value, str) else value


def measure(experiment: str, overrides: Sequence[str] = (), *, out_dir: str | Path | None = None,
            models: Mapping[str, Any] | None = None, load_from: str | Path | None = None) -> ExperimentResult:
    """Runs an experiment as the command line does and returns its typed result (what ``metrics.json`` holds).

    Args:
        experiment: an experiment name (``shift_test``, ``equivariance``, ...).
        overrides: Hydra overrides, as on the command line (``["dataset=mnist", "n_seeds=2"]``).
        out_dir: the run folder (default ``outputs/<experiment>/<date_time>``); it gets metrics.json, the
            plots and the checkpoints.
        models: model classes to measure, by name: ``{"mine": MyNet}`` or ``{"mine": (MyNet, {"width": 64})}``
            (they replace ``models=[...]``).
        load_from: an earlier run folder whose saved models are measured instead of training.
    """
    from equivar.execution import set_up_process
    from equivar.run import run_experiment

    set_up_process()
    overrides = list(overrides) + _model_overrides(models or {})
    if load_from is not None:
        overrides.append(f"load_from={Path(load_from).expanduser().resolve()}")
    raw = compose(experiment, overrides)
    if out_dir is None:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
        out_dir = Path("outputs") / str(raw.get("experiment_name")) / stamp
    return run_experiment(raw, Path(out_dir))


def read_result(run_dir: str | Path) -> ExperimentResult:
    """The typed result a run folder's ``metrics.json`` holds, read by the experiment that wrote it."""
    from equivar.experiment import read_result as read

    return read(Path(run_dir))


class LoadedModels(dict):
    """What :func:`load_models` returns: model name -> ``TrainedModel``, and in ``unloadable`` each of the run's
    models that could not be loaded, with the reason (one line each)."""

    def __init__(self, models: dict[str, Any], unloadable: dict[str, str]):
        super().__init__(models)
        self.unloadable = unloadable


def load_models(run_dir: str | Path, names: Sequence[str] | None = None) -> LoadedModels:
    """The trained models saved in a run folder, by name (``TrainedModel``: every seed's parameters and
    state; ``.modules()`` gives one inference-mode ``nnx.Module`` per seed).

    Without ``names``, every model the run saved that can be loaded; the others (a class no longer importable,
    a damaged checkpoint) are named with the reason in ``.unloadable`` and in a warning. ``names`` asks for
    those models: one that cannot be loaded is an error. So is a run none of whose models can be loaded.
    """
    import warnings

    from equivar import checkpoints
    from equivar.errors import UserError
    from equivar.execution import set_up_process
    from equivar.io import read_json

    set_up_process()
    run_dir = Path(run_dir)
    saved = checkpoints.available(run_dir)
    if names is None and not saved:
        raise ConfigError(f"{run_dir} holds no trained models (no {checkpoints.CHECKPOINTS}/ with a record and a "
                          "checkpoint per model); give the folder of a run that trained them")
    out, unloadable = {}, {}
    for name in names or saved:
        try:
            try:
                record = read_json(checkpoints.record_path(run_dir, name))
                shape, n_classes = tuple(record["input_shape"]), int(record["n_classes"])
            except FileNotFoundError:
                raise ConfigError(f"{run_dir} holds no checkpoint of model {name!r}; it holds "
                                  f"{', '.join(saved) or 'none'}") from None
            except (OSError, ValueError, KeyError, TypeError) as err:
                raise ConfigError(f"the record {checkpoints.record_path(run_dir, name)} of model {name!r} cannot be "
                                  f"read: {type(err).__name__}: {err}") from None
            out[name] = checkpoints.load(run_dir, name, None, None, shape, n_classes)
        except UserError as err:
            if names is not None:
                raise
            unloadable[name] = str(err)
    if unloadable and not out:
        if len(unloadable) == 1:
            raise ConfigError(next(iter(unloadable.values())))
        raise ConfigError(f"none of the models saved in {run_dir} can be loaded: "
                          + "; ".join(f"{name}: {why}" for name, why in unloadable.items()))
    if unloadable:
        warnings.warn(f"{run_dir}: {len(unloadable)} of its {len(out) + len(unloadable)} saved models cannot be "
                      f"loaded and are left out ({', '.join(unloadable)}); .unloadable gives each reason",
                      stacklevel=2)
    return LoadedModels(out, unloadable)
