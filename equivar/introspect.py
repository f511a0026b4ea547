"""What a model computes inside: the outputs of its layers, from any Flax NNX module.

Layer-wise experiments (anatomy, equivariance) read a model's intermediate outputs. A model's *layers* are its
outermost submodules (attributes that are ``nnx.Module`` objects, in lists too), in the order its forward pass
calls them. They are captured during one call: their classes' ``__call__`` is wrapped once per process to
record into the calling thread's capture in progress (and to do nothing else otherwise), so a model needs no
special base class and no ``sow`` calls, and two threads can read two models at once.
``equivar.layers.LayerStack`` models name their layers in order already and are read directly.

Functional operations between layers (``nnx.relu(x)``, ``x.mean(axis=1)``) are not layers: they happen
between two captured outputs. Whether the layers form an exact chain (each layer's input is the previous
layer's output, the model's output is the last layer's) is recorded, because the analytic receptive-field
analysis is only valid then.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from equivar.errors import ConfigError
from equivar.layers import LayerStack


@dataclasses.dataclass(frozen=True)
class LayerCall:
    """One layer call of a forward pass."""

    name: str
    module: nnx.Module
    output: Any
    input: Any = None


@dataclasses.dataclass(frozen=True)
class LayerTrace:
    """A model's layers in call order with their output shapes (batch axis dropped)."""

    layers: list[tuple[str, nnx.Module]]
    out_shapes: dict[str, tuple[int, ...]]
    in_shapes: dict[str, tuple[int, ...] | None]  # the shape of each layer's first argument (batch dropped)
    chained: bool  # each layer reads the previous layer's output, and the model returns the last one's
    why_not_chained: str | None = None


def split_variables(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
    """``(graphdef, params, everything else)``: the model's structure, its parameters and its other variables
    (BatchNorm statistics, RNG counters)."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)  # type: ignore[misc]  # flax's variadic stub
    return graphdef, params, rest


def to_inference(model: nnx.Module) -> nnx.Module:
    """A view of ``model`` with Dropout off and BatchNorm on its running statistics (the arrays are shared)."""
    return nnx.view(model, deterministic=True, use_running_average=True, raise_if_not_found=False)


def outer_layers(model: nnx.Module) -> dict[int, str]:
    """``id(module) -> name`` for the model's outermost submodules (paths joined with dots)."""
    modules = [(path, m) for path, m in nnx.iter_modules(model) if path]
    module_paths = {tuple(p) for p, _ in modules}
    out: dict[int, str] = {}
    for path, m in modules:
        if any(tuple(path[:k]) in module_paths for k in range(1, len(path))):
            continue  # inside another layer
        out.setdefault(id(m), ".".join(str(p) for p in path))
    return out


class _Recording:
    """One capture in progress: the outermost layers' names by ``id``, and what their calls returned."""

    def __init__(self, names: dict[int, str]):
        self.names = names
        self.calls: list[LayerCall] = []
        self.inputs: list[Any] = []
        self.depth = 0
        self.counts: dict[str, int] = {}


_ACTIVE = threading.local()  # .recording: this thread's capture in progress, if any
_PATCH_LOCK = threading.Lock()
_RECORDED_CLASSES: set[type] = set()


def _record_calls_of(cls: type) -> None:
    """Wraps ``cls.__call__`` once per process so that a call records itself into the calling thread's capture
    in progress (and does nothing else otherwise): captures in other threads, and calls outside any capture,
    are untouched, so two models can be read at once from two threads."""
    with _PATCH_LOCK:
        if cls in _RECORDED_CLASSES:
            return
        inherited = cls.__call__

        @functools.wraps(inherited)
        def recording_call(self, *args, **kwargs):
            recording: _Recording | None = getattr(_ACTIVE, "recording", None)
            if recording is None:
                return inherited(self, *args, **kwargs)
            name = recording.names.get(id(self)) if recording.depth == 0 else None
            recording.depth += 1
            try:
                out = inherited(self, *args, **kwargs)
            finally:
                recording.depth -= 1
            if name is not None:
                recording.counts[name] = recording.counts.get(name, 0) + 1
                count = recording.counts[name]
                label = name if count == 1 else f"{name}:{count}"
                recording.calls.append(LayerCall(label, self, out, args[0] if args else None))
                recording.inputs.append(args[0] if args else None)
            return out

        cls.__call__ = recording_call  # type: ignore[method-assign]  # the one wrap, checked by _RECORDED_CLASSES
        _RECORDED_CLASSES.add(cls)


def capture(model: nnx.Module, x: jax.Array) -> tuple[Any, list[LayerCall], bool]:
    """Calls ``model(x)`` recording every outermost layer's output in call order (thread-safe).

    Returns:
        The model's output, the layer calls (a layer called twice appears as ``name``, ``name:2``), and whether
        the calls form an exact chain from ``x`` to the output.
    """
    if isinstance(model, LayerStack):
        calls, h = [], x
        for name, layer in model.layers():
            calls.append(LayerCall(name, layer, layer(h), h))
            h = calls[-1].output
        return h, calls, True
    names = outer_layers(model)
    for _, m in nnx.iter_modules(model):
        if id(m) in names:
            _record_calls_of(type(m))
    recording = _Recording(names)
    outer = getattr(_ACTIVE, "recording", None)
    _ACTIVE.recording = recording
    try:
        out = model(x)
    finally:
        _ACTIVE.recording = outer
    calls, inputs = recording.calls, recording.inputs
    chained = bool(calls) and inputs[0] is x and calls[-1].output is out and all(
        inputs[i] is calls[i - 1].output for i in range(1, len(calls)))
    return out, calls, chained


def layer_outputs(model: nnx.Module, x: jax.Array) -> dict[str, jax.Array]:
    """Every layer's output on ``x`` by name, in call order (jittable)."""
    _, calls, _ = capture(model, x)
    return {c.name: c.output for c in calls}


def trace_layers(model: nnx.Module, input_shape: Sequence[int], where: str = "model") -> LayerTrace:
    """The model's layers, output shapes and chain-ness, found abstractly (no computation), in inference mode.

    Raises a one-line ConfigError when the forward pass calls no submodule: then there are no layers to read.
    """
    model = to_inference(model)
    example = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    found: dict[str, Any] = {}

    def run(x):
        out, calls, chained = capture(model, x)
        found["layers"] = [(c.name, c.module) for c in calls]
        found["chained"] = chained
        return {c.name: (c.output, c.input if hasattr(c.input, "shape") else None) for c in calls}

    shapes = jax.eval_shape(run, example)
    if not found["layers"]:
        raise ConfigError(f"{where} ({type(model).__name__}) calls no flax.nnx.Module attribute in its forward "
                          "pass, so it has no layers to read: keep its layers as attributes (e.g. self.conv1 = "
                          "nnx.Conv(...)) and call them in __call__, or subclass equivar.models.LayerStack")
    why = None if found["chained"] else (
        "its forward pass computes between its layers (e.g. a functional nnx.relu or pooling), so receptive "
        "fields are measured from gradients only")
    return LayerTrace(found["layers"], {k: tuple(v[0].shape[1:]) for k, v in shapes.items()},
                      {k: None if v[1] is None else tuple(v[1].shape[1:]) for k, v in shapes.items()},
                      found["chained"], why)
