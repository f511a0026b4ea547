"""What a model computes inside: the outputs of its layers, from any Flax NNX module (and Linen, bridged).

Layer-wise experiments (anatomy, equivariance, lie_derivative) read a model's intermediate outputs. A model's
*layers* are the submodules its forward pass calls, in call order, named by their attribute path
(``features.0``: the ``layers`` list of an ``nnx.Sequential`` is left out of the name). They are captured during
one call: their classes' ``__call__`` is wrapped once per process to record into the calling thread's capture
in progress (and to do nothing else otherwise), so a model needs no special base class and no ``sow`` calls,
and two threads can read two models at once. Linen submodules of an ``equivar.linen.LinenModel`` are recorded
the same way through ``flax.linen.intercept_methods`` (named by their Linen path, ``Conv_0``).

Containers are looked into: every call is recorded with the calls made inside it, and a block whose inner
calls form an exact chain (the first reads the block's input, each the previous one's output, the block
returns the last one's) is replaced by them, recursively; a block that computes between its layers (a
functional ``relu``, a residual sum) stays one layer. The plain functions of an ``nnx.Sequential``
(``nnx.relu``) are layers too. ``equivar.layers.LayerStack`` models name their layers in order already and are
read directly.

Functional operations between layers are not layers: they happen between two captured outputs. Whether the
layers form an exact chain (each layer's input is the previous layer's output, the model's output is the last
layer's) is recorded, because the analytic receptive-field analysis is only valid then.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen, nnx

from equivar.errors import ConfigError
from equivar.layers import LayerStack
from equivar.linen import LinenModel


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


def layer_names(model: nnx.Module) -> dict[int, str]:
    """``id(module) -> name`` for every submodule: its attribute path joined with dots (``features.0``: the
    ``layers`` list inside an ``nnx.Sequential`` is left out of the name, as PyTorch users know it)."""
    modules = {tuple(path): m for path, m in nnx.iter_modules(model)}
    out: dict[int, str] = {}
    for path, m in modules.items():
        if not path:
            continue
        parts = [str(p) for k, p in enumerate(path)
                 if not (p == "layers" and isinstance(modules.get(tuple(path[:k])), nnx.Sequential))]
        out.setdefault(id(m), ".".join(parts))
    return out


@dataclasses.dataclass
class _Call:
    """One call in progress or done: what went in and out, and the calls made inside it."""

    name: str
    module: Any
    input: Any
    output: Any = None
    inner: list[_Call] = dataclasses.field(default_factory=list)


class _Recording:
    """One capture in progress: every submodule's name by ``id``, and the tree of calls made so far."""

    def __init__(self, names: dict[int, str], scoped: bool = False):
        self.names = names
        self.stack: list[_Call] = [_Call("", None, None)]  # the model's own call at the bottom
        self.scoped = scoped  # each call inside a named scope "@name" (equivar.dataflow reads the jaxpr's)
        self.kinds: dict[str, str] = {}  # layer name -> its type's name (Conv, relu, Sequential)


SCOPE = "@"  # the named-scope prefix of a recorded layer call (read back by equivar.dataflow)
_ACTIVE = threading.local()  # .recording: this thread's capture in progress, if any
_PATCH_LOCK = threading.Lock()
_RECORDED_CLASSES: set[type] = set()


def _record(recording: _Recording, name: str, layer: Any, call: Any, args: tuple, kwargs: dict) -> Any:
    """Runs ``call(*args, **kwargs)`` as a recorded call of ``layer`` named ``name``."""
    node = _Call(name, layer, args[0] if args else None)
    recording.stack[-1].inner.append(node)
    recording.stack.append(node)
    recording.kinds.setdefault(name, _kind(layer))
    try:
        if recording.scoped:
            with jax.named_scope(SCOPE + name):
                node.output = call(*args, **kwargs)
        else:
            node.output = call(*args, **kwargs)
    finally:
        recording.stack.pop()
    return node.output


def _kind(layer: Any) -> str:
    """A layer's type as a user names it: its class, or a plain function's name (``relu``, ``lambda``)."""
    if isinstance(layer, (nnx.Module, linen.Module)):
        return type(layer).__name__
    fn = getattr(layer, "func", layer)  # functools.partial
    return str(getattr(fn, "__name__", type(fn).__name__)).strip("<>")


def _sequential_call(recording: _Recording, name: str, seq: nnx.Sequential, x: Any) -> Any:
    """``nnx.Sequential`` on one array, with its plain functions (``nnx.relu``) recorded as layers too:
    ``features.1`` is the output of the Sequential's second entry, whatever it is."""
    for i, f in enumerate(seq.layers):
        if isinstance(f, nnx.Module) and id(f) in recording.names:
            x = f(x)  # records itself
        else:
            x = _record(recording, f"{name}.{i}" if name else str(i), f, f, (x,), {})
    return x


def _record_calls_of(cls: type) -> None:
    """Wraps ``cls.__call__`` once per process so that a call records itself into the calling thread's capture
    in progress (and does nothing else otherwise): captures in other threads, and calls outside any capture,
    are untouched, so two models can be read at once from two threads."""
    with _PATCH_LOCK:
        if cls in _RECORDED_CLASSES or not any("__call__" in vars(k) for k in cls.__mro__):  # nnx.List has none
            return
        inherited = cls.__call__

        @functools.wraps(inherited)
        def recording_call(self, *args, **kwargs):
            recording: _Recording | None = getattr(_ACTIVE, "recording", None)
            name = None if recording is None else recording.names.get(id(self))
            if recording is None or name is None:
                return inherited(self, *args, **kwargs)
            if isinstance(self, nnx.Sequential) and len(args) == 1 and not kwargs:
                return _record(recording, name, self, lambda x: _sequential_call(recording, name, self, x), args, {})
            return _record(recording, name, self, lambda *a, **k: inherited(self, *a, **k), args, kwargs)

        cls.__call__ = recording_call  # type: ignore[method-assign]  # the one wrap, checked by _RECORDED_CLASSES
        _RECORDED_CLASSES.add(cls)


def _record_linen_call(recording: _Recording, call: Any, args: tuple, kwargs: dict, context: Any) -> Any:
    """A Linen submodule's ``__call__`` inside a Linen model (``equivar.linen.LinenModel``), recorded as a layer
    named by its Linen path (``Conv_0``, ``block.Dense_1``) under the model's own name. The layer is an unbound
    copy of the submodule (its attributes give its geometry) carrying its parameter counts."""
    module = context.module
    path = tuple(module.path) if module.scope is not None else ()
    if context.method_name != "__call__" or not path:
        return call(*args, **kwargs)
    owner = next((c for c in reversed(recording.stack) if isinstance(c.module, LinenModel)), None)
    prefix = f"{owner.name}." if owner is not None and owner.name else ""
    layer = module.clone(parent=None)
    object.__setattr__(layer, "equivar_parameter_counts", _linen_parameter_counts(module))
    name = prefix + ".".join(path)
    if isinstance(module, linen.Sequential) and len(args) == 1 and not kwargs and hasattr(args[0], "shape"):
        return _record(recording, name, layer, lambda x: _linen_sequential_call(recording, name, module, x), args, {})
    return _record(recording, name, layer, call, args, kwargs)


def _linen_sequential_call(recording: _Recording, name: str, seq: linen.Sequential, x: Any) -> Any:
    """A bound Linen ``nn.Sequential`` on one array, its plain functions (``nn.relu``, a reshaping lambda)
    recorded as layers too, named as Linen names its submodules (``net.layers_1``), so a chain of Linen layers
    and functions is read layer by layer as ``nnx.Sequential`` is (its Linen submodules record themselves)."""
    for i, f in enumerate(seq.layers):
        x = f(x) if isinstance(f, linen.Module) else _record(recording, f"{name}.layers_{i}", f, f, (x,), {})
    return x


def _linen_parameter_counts(module: Any) -> tuple[int, int]:
    """(weights, biases) of a bound Linen module: parameters named ``bias`` count as biases."""
    weights = biases = 0
    for path, value in jax.tree_util.tree_flatten_with_path(module.variables.get("params", {}))[0]:
        if getattr(path[-1], "key", None) == "bias":
            biases += int(value.size)
        else:
            weights += int(value.size)
    return weights, biases


def _is_chain(calls: Sequence[_Call] | Sequence[LayerCall], x: Any, out: Any) -> bool:
    """Each call reads the previous one's output, the first reads ``x`` and the last returns ``out``."""
    return bool(calls) and calls[0].input is x and calls[-1].output is out and all(
        calls[i].input is calls[i - 1].output for i in range(1, len(calls)))


def _leaves(calls: Sequence[_Call]) -> list[_Call]:
    """The calls with every block whose inner calls form an exact chain replaced by those calls (recursively):
    the leaf layers where the data flows through them one by one, the block where it does not (a residual
    block, a block that computes between its layers)."""
    out: list[_Call] = []
    for c in calls:
        if c.inner and _is_chain(c.inner, c.input, c.output):
            out.extend(_leaves(c.inner))
        else:
            out.append(c)
    return out


def capture(model: nnx.Module, x: jax.Array) -> tuple[Any, list[LayerCall], bool]:
    """Calls ``model(x)`` recording its layers' outputs in call order (thread-safe).

    The layers are the submodules the forward pass calls, read through containers (``nnx.Sequential``,
    ``nnx.List``, ``nnx.Dict``, nested blocks): a block is replaced by its own layers where those form an exact
    chain from the block's input to its output, and is one layer otherwise.

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
    out, recording = _recorded_call(model, x, scoped=False)
    leaves = _leaves(recording.stack[0].inner)
    counts: dict[str, int] = {}
    calls = []
    for c in leaves:
        counts[c.name] = counts.get(c.name, 0) + 1
        calls.append(LayerCall(c.name if counts[c.name] == 1 else f"{c.name}:{counts[c.name]}", c.module, c.output,
                               c.input))
    return out, calls, _is_chain(calls, x, out)


def _recorded_call(model: nnx.Module, x: Any, scoped: bool) -> tuple[Any, _Recording]:
    """``model(x)`` with every submodule call recorded (and, if ``scoped``, inside a named scope)."""
    names = layer_names(model)
    for _, m in nnx.iter_modules(model):
        if id(m) in names:
            _record_calls_of(type(m))
    recording = _Recording(names, scoped)
    outer = getattr(_ACTIVE, "recording", None)
    _ACTIVE.recording = recording
    try:
        with linen.intercept_methods(functools.partial(_record_linen_call, recording)):
            out = _sequential_call(recording, "", model, x) if isinstance(model, nnx.Sequential) else model(x)
    finally:
        _ACTIVE.recording = outer
    return out, recording


def scoped_forward(model: nnx.Module) -> tuple[Callable[[jax.Array], Any], dict[str, str]]:
    """``x -> model(x)`` with every layer call inside a named scope ``@name`` (what ``equivar.dataflow`` cuts
    the traced forward pass by), and the layers' types by name (filled in as the function is traced)."""
    kinds: dict[str, str] = {}
    if isinstance(model, LayerStack):
        def stack_forward(x):
            for name, layer in model.layers():
                kinds.setdefault(name, _kind(layer))
                with jax.named_scope(SCOPE + name):
                    x = layer(x)
            return x
        return stack_forward, kinds

    def forward(x):
        out, recording = _recorded_call(model, x, scoped=True)
        kinds.update(recording.kinds)
        return out
    return forward, kinds


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
