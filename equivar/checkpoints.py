"""Trained models of a run: every seed's parameters and non-parameter state, where they came from, and their
Orbax checkpoints in the run folder.

A run that trains saves each model under ``<run>/checkpoints/<name>/`` (Orbax) beside a manifest
``<run>/checkpoints/<name>.json`` that records the model's ``_target_`` and options, the input shape, the
classes, the seeds and their training status. Any measuring experiment can take them instead of training
(``load_from=<run>``); a checkpoint that does not match the model config is refused with one line naming the
mismatch.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import sys
import threading
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from equivar.errors import ConfigError
from equivar.introspect import split_variables
from equivar.io import read_json, write_json
from equivar.models import build_model, check_model
from equivar.train import Variables, inference_model, take_seed

log = logging.getLogger(__name__)


def _quiet_orbax() -> None:
    """Orbax logs every read and write at INFO through absl; a run's log keeps equivar's own lines."""
    logging.getLogger("absl").setLevel(logging.WARNING)

CHECKPOINTS = "checkpoints"


@dataclasses.dataclass
class TrainedModel:
    """One model's seeds, stacked on a leading axis, with what identifies them.

    Attributes:
        name: the model's label (its key in ``zoo``).
        target: the model class as Hydra's ``_target_``.
        options: the constructor options beyond the contract.
        input_shape: one example's channels-last shape.
        n_classes: the classifier's outputs.
        graphdef: the model's structure in training mode (``inference_model`` gives inference mode).
        params: the parameters, seed-stacked.
        model_state: every non-parameter variable (BatchNorm statistics, RNG counters), seed-stacked.
        seeds: the seed of each stacked model.
        status: per seed, ``ok`` or how its training diverged.
        source: ``trained`` (in this run) or the run folder the checkpoint was loaded from.
        train_record: loss and accuracy per epoch and seconds, when trained in this run.
    """

    name: str
    target: str
    options: dict[str, Any]
    input_shape: tuple[int, ...]
    n_classes: int
    graphdef: nnx.GraphDef
    params: nnx.State
    model_state: nnx.State
    seeds: list[int]
    status: list[str]
    source: str = "trained"
    train_record: dict[str, Any] | None = None

    def __repr__(self) -> str:  # what identifies it, not every weight of every seed
        return (f"TrainedModel(name={self.name!r}, target={self.target!r}, options={self.options!r}, "
                f"input_shape={self.input_shape}, n_classes={self.n_classes}, seeds={self.seeds}, "
                f"status={self.status}, n_params={self.n_params:,}, source={self.source!r})")

    @property
    def n_params(self) -> int:
        """Parameters of one seed's model."""
        return sum(int(np.prod(a.shape[1:])) for a in jax.tree.leaves(self.params))

    @property
    def ok(self) -> np.ndarray:
        """Per seed: True where training stayed finite."""
        return np.array([s == "ok" for s in self.status])

    def variables(self, healthy_only: bool = True) -> Variables:
        """``(params, model_state)``, seed-stacked; by default without the seeds that diverged."""
        both = (self.params, self.model_state)
        if not healthy_only or self.ok.all():
            return both
        keep = np.flatnonzero(self.ok)
        return jax.tree.map(lambda a: a[keep], both)

    def healthy_seeds(self) -> list[int]:
        return [s for s, ok in zip(self.seeds, self.ok) if ok]

    def modules(self, healthy_only: bool = True) -> list[nnx.Module]:
        """One model object per seed, in inference mode, for analyses that look inside the model."""
        params, model_state = self.variables(healthy_only)
        n = len(self.healthy_seeds()) if healthy_only else len(self.seeds)
        return [inference_model(self.graphdef, *take_seed((params, model_state), i)) for i in range(n)]

    def provenance(self) -> dict[str, Any]:
        """What metrics.json records of where the model came from."""
        return {"source": self.source, "target": self.target, "options": self.options, "seeds": self.seeds}


def _to_arrays(state: nnx.State) -> dict[str, Any]:
    """A state as a nested dict of plain arrays (PRNG keys as their raw key data) for Orbax."""
    def plain(a):
        return jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a

    return jax.tree.map(plain, nnx.to_pure_dict(state))


def _from_arrays(abstract: nnx.State, arrays: dict[str, Any]) -> nnx.State:
    """The inverse of ``_to_arrays`` onto an abstract state of the same structure."""
    pure = nnx.to_pure_dict(abstract)

    def restore(template, value):
        if jnp.issubdtype(template.dtype, jax.dtypes.prng_key):
            impl = getattr(template.dtype, "_impl", None)  # the key's implementation (threefry unless changed)
            return jax.random.wrap_key_data(jnp.asarray(value), **({"impl": impl} if impl is not None else {}))
        return jnp.asarray(value, template.dtype)

    filled = jax.tree.map(restore, pure, _keys_like(pure, arrays))
    state = jax.tree.map(lambda a: a, abstract)
    nnx.replace_by_pure_dict(state, filled)
    return state


def _keys_like(template: Any, saved: Any, path: str = "") -> Any:
    """``saved`` with the dict keys of ``template``: Orbax stores every key as a string, so the integer keys of
    containers (``nnx.Sequential``, ``nnx.List``, plain lists: ``features.layers.0``) come back as ``'0'``."""
    if not isinstance(template, dict):
        return saved
    if not isinstance(saved, dict):
        raise ValueError(f"the checkpoint holds an array at {path or 'the top'}, the model a group of layers")
    by_text = {str(k): v for k, v in saved.items()}
    missing = [str(k) for k in template if str(k) not in by_text]
    extra = sorted(set(by_text) - {str(k) for k in template})
    if missing or extra:
        where = f" under {path}" if path else ""
        raise ValueError(f"the model has {missing or 'no other'} and the checkpoint {extra or 'no other'} "
                         f"variables{where}")
    return {k: _keys_like(v, by_text[str(k)], f"{path}.{k}" if path else str(k)) for k, v in template.items()}


def manifest_of(model: TrainedModel, dataset: dict[str, Any]) -> dict[str, Any]:
    return {"name": model.name, "target": model.target, "options": model.options,
            "input_shape": list(model.input_shape), "n_classes": model.n_classes, "seeds": model.seeds,
            "status": model.status, "dataset": dataset, "train_record": model.train_record}


def save(model: TrainedModel, run_dir: Path, dataset: dict[str, Any]) -> Path:
    """Writes every seed's parameters and state with Orbax, then the manifest (last, so a manifest always
    names a complete checkpoint)."""
    import orbax.checkpoint as ocp

    _quiet_orbax()
    folder = (Path(run_dir) / CHECKPOINTS / model.name).resolve()
    arrays = {"params": _to_arrays(model.params), "model_state": _to_arrays(model.model_state)}
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(folder, arrays, force=True)
        checkpointer.wait_until_finished()
    write_json(folder.parent / f"{model.name}.json", manifest_of(model, dataset))
    if model.target.startswith("__main__."):
        log.warning("%s: its class %s is defined in a script or notebook (__main__): this process can reload it, "
                    "another cannot; move the class into a module file (e.g. mylab/nets.py) and load the checkpoint "
                    "with +zoo.%s._target_=mylab.nets.%s", model.name, model.target, model.name,
                    model.target.rsplit(".", 1)[-1])
    return folder


def moved_from_main(saved: str, target: str) -> bool:
    """Whether ``target`` is the class a checkpoint saved from a script or notebook (``__main__.Net``) names,
    moved into an importable module (``mylab.nets.Net``): the only way such a checkpoint can load elsewhere."""
    return saved.startswith("__main__.") and target.rsplit(".", 1)[-1] == saved.rsplit(".", 1)[-1]


def available(run_dir: Path) -> list[str]:
    """The model names a run folder holds checkpoints of."""
    folder = Path(run_dir) / CHECKPOINTS
    return sorted(p.stem for p in folder.glob("*.json") if (folder / p.stem).is_dir())


def record_path(run_dir: Path, name: str) -> Path:
    """The JSON record (target, options, shapes, seeds) beside model ``name``'s checkpoint in ``run_dir``."""
    return Path(run_dir).expanduser() / CHECKPOINTS / f"{name}.json"


def load(run_dir: Path, name: str, target: str | None, options: dict[str, Any] | None,
         input_shape: tuple[int, ...], n_classes: int, where: str | None = None, resumed: bool = False
         ) -> TrainedModel:
    """Restores model ``name`` from ``run_dir``, after checking it against the config.

    Args:
        run_dir: an earlier run's folder.
        name: the model's label (its ``zoo`` key).
        target, options: the config's ``_target_`` and options for it (None: take the checkpoint's).
        input_shape, n_classes: the data this run measures on.
        where: how errors name the model (default ``zoo.<name>``).
        resumed: the checkpoint is this very run's, saved before it was interrupted: the model counts as
            trained here, with its training curves.
    """
    import orbax.checkpoint as ocp

    _quiet_orbax()
    run_dir = Path(run_dir).expanduser().resolve()
    if not run_dir.is_dir():
        raise ConfigError(f"load_from={str(run_dir)!r} is not a folder; give the run folder of an earlier run "
                          "(it holds checkpoints/)")
    held = available(run_dir)
    if name not in held:
        if not held:
            raise ConfigError(f"load_from={str(run_dir)!r} holds no checkpoints (no checkpoints/ folder from a run "
                              "that trained); give the folder of a run that trained its models")
        raise ConfigError(f"load_from={str(run_dir)!r} holds no checkpoint of model {name!r}; it holds "
                          f"{held} (choose with models=[...])")
    manifest = read_json(record_path(run_dir, name))
    target = manifest["target"] if target is None else target
    options = dict(manifest["options"]) if options is None else dict(options)
    where = where or f"zoo.{name}"
    if target != manifest["target"] and not moved_from_main(manifest["target"], target):
        raise ConfigError(f"{where}._target_={target!r} does not match the checkpoint in {run_dir} "
                          f"({manifest['target']!r})")
    for key in sorted(set(options) | set(manifest["options"])):
        mine, theirs = options.get(key, "<unset>"), manifest["options"].get(key, "<unset>")
        if _normal(mine) != _normal(theirs):
            raise ConfigError(f"{where}.{key}={mine!r} does not match the checkpoint in {run_dir} ({theirs!r})")
    if tuple(manifest["input_shape"]) != tuple(input_shape) or manifest["n_classes"] != n_classes:
        raise ConfigError(f"the checkpoint of {name!r} in {run_dir} was trained on inputs "
                          f"{tuple(manifest['input_shape'])} with {manifest['n_classes']} classes; this dataset has "
                          f"{tuple(input_shape)} and {n_classes}")
    check_model(target, input_shape, n_classes, options, where)
    abstract = nnx.eval_shape(lambda: build_model(target, input_shape, n_classes, options, nnx.Rngs(0), where))
    graphdef, params, model_state = split_variables(abstract)
    seeds = list(manifest["seeds"])
    stacked = jax.tree.map(lambda a: jax.ShapeDtypeStruct((len(seeds), *a.shape), a.dtype), (params, model_state))
    folder = run_dir / CHECKPOINTS / name
    quiet = _QuietAbandonedReads(folder)  # from before the first read: a failed one echoes while the reader closes
    try:
        with ocp.StandardCheckpointer() as checkpointer:  # closed on the way out: no thread outlives a failure
            arrays = checkpointer.restore(folder)
        quiet.undo()
    except Exception as err:  # Orbax and TensorStore raise plain Exceptions for files they cannot read
        raise ConfigError(f"the checkpoint of model {name!r} cannot be read from {folder}{_unreadable(err)}: the "
                          "files are damaged or incomplete; train the model again (or restore the folder)") from None
    try:
        params, model_state = (_from_arrays(stacked[0], arrays["params"]),
                               _from_arrays(stacked[1], arrays["model_state"]))
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"the checkpoint of {name!r} in {run_dir} does not fit {target} with these options: "
                          f"{str(err).strip().splitlines()[0]}") from err
    log.info("%s: %d seed(s) loaded from %s", name, len(seeds), run_dir)
    return TrainedModel(name=name, target=target, options=options, input_shape=tuple(input_shape),
                        n_classes=n_classes, graphdef=graphdef, params=params, model_state=model_state,
                        seeds=seeds, status=list(manifest["status"]), source="trained" if resumed else str(run_dir),
                        train_record=manifest.get("train_record") if resumed else None)


class _EchoFilter(logging.Filter):
    """Drops asyncio's "Future exception was never retrieved" records whose exception names ``folder``."""

    def __init__(self, folder: Path):
        super().__init__()
        self.folder = str(folder)

    def filter(self, record: logging.LogRecord) -> bool:
        exception = record.exc_info[1] if record.exc_info else None
        return exception is None or self.folder not in str(exception)


class _QuietAbandonedReads:
    """After a failed restore, Orbax leaves reads of ``folder`` in flight: while its reader closes, and when
    Python collects them (at exit at the latest), each prints its error again, as "Exception ignored in ...",
    "Event loop is closed" (through ``sys.excepthook``, ``threading.excepthook`` or an unraisable hook) or
    asyncio's "Future exception was never retrieved". The one-line error already said it; from construction
    until :meth:`undo` (called after a successful restore) those echoes are dropped, and every other unraisable
    exception, thread exception and asyncio error still prints."""

    def __init__(self, folder: Path):
        self.filter = _EchoFilter(folder)
        logging.getLogger("asyncio").addFilter(self.filter)
        self.previous = sys.unraisablehook, sys.excepthook, threading.excepthook

        def closed_loop(value: BaseException | None) -> bool:
            return isinstance(value, RuntimeError) and "Event loop is closed" in str(value)

        def hook(unraisable: Any) -> None:
            source = getattr(getattr(unraisable.object, "cr_code", None), "co_filename", "") or ""
            if "orbax" not in source and not closed_loop(unraisable.exc_value):
                self.previous[0](unraisable)

        def except_hook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
            if not closed_loop(value):  # TensorStore's callbacks report through sys.excepthook
                self.previous[1](kind, value, tb)

        def thread_hook(args: Any) -> None:
            if not closed_loop(args.exc_value):
                self.previous[2](args)

        sys.unraisablehook, sys.excepthook, threading.excepthook = hook, except_hook, thread_hook

    def undo(self) -> None:
        """Every hook back as it was (the restore succeeded: no read is left in flight)."""
        sys.unraisablehook, sys.excepthook, threading.excepthook = self.previous
        logging.getLogger("asyncio").removeFilter(self.filter)


def _unreadable(err: BaseException) -> str:
    """`` (array params.fc1.kernel)``: which saved array could not be read, when Orbax's or TensorStore's report
    names one (their wording varies: a spec's ``'path'``, or ``Error reading "params.fc1.kernel/.zarray"``)."""
    arrays = re.findall(r"\b((?:params|model_state)(?:\.\w+)+)", str(err))
    return f" (array {arrays[0]})" if arrays else ""


def _normal(value: Any) -> Any:
    """Options compared as JSON would store them (tuples and lists alike)."""
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    return value
