"""Flax Linen models by ``_target_``: a Linen module class becomes an NNX model equivar trains and measures.

Most published JAX model code is Linen. ``LinenModel`` holds a Linen module's variables as NNX variables
(``params`` as ``nnx.Param``, ``batch_stats`` and other collections as ``nnx.BatchStat``) and calls the module
with ``apply``, so the pure training step, checkpoints and every measurement see an ordinary NNX model:

* **Construction.** The class's dataclass fields are its options. A field named ``n_classes``,
  ``num_classes`` or ``num_outputs`` receives the dataset's class count, and one named ``input_shape`` the
  example's shape; the variables are initialised on one example.
* **Training and inference.** A ``__call__`` argument named ``train``, ``training`` or ``is_training`` gets
  True in training and False in inference; one named ``deterministic``, ``eval``, ``inference`` or
  ``use_running_average`` gets the opposite. A class whose ``__call__`` takes none of them but has a field of
  one of these names is switched through the field (a copy of the module with it set). In training the mutable
  collections (BatchNorm's ``batch_stats``) are updated, and Dropout draws from a key kept in the model's state
  and advanced each call; inference touches no state (no key drawn), so it may be traced, differentiated and
  vmapped freely.
* **Layers.** Layer-wise experiments read the Linen submodules' outputs (``Conv_0``, ``Dense_0``), captured
  with ``flax.linen.intercept_methods`` (``equivar.introspect``).

This follows what ``flax.nnx.bridge.ToNNX`` does, with the mode switch and the random state made explicit:
``ToNNX`` draws its streams on every call, inference included, which a traced analysis cannot allow.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Sequence
from typing import Any, cast

import jax
import jax.numpy as jnp
from flax import linen, nnx

CLASS_FIELDS = ("n_classes", "num_classes", "num_outputs")
TRAIN_FLAGS = ("train", "training", "is_training")
EVAL_FLAGS = ("deterministic", "eval", "inference", "use_running_average")


def is_linen_class(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, linen.Module)


def linen_options(cls: type) -> list[str]:
    """The options of a Linen module class: its dataclass fields but the ones equivar fills in."""
    return [f.name for f in dataclasses.fields(cls)
            if f.init and f.name not in ("parent", "name", "input_shape", *CLASS_FIELDS)]


def mode_argument(cls: type) -> tuple[str, bool] | None:
    """``(name, value in training)`` of the ``__call__`` argument that switches training and inference."""
    return _mode_in(inspect.signature(cls.__call__).parameters)


def mode_field(cls: type) -> tuple[str, bool] | None:
    """``(name, value in training)`` of the dataclass field that switches training and inference, for a class
    whose ``__call__`` takes no such argument (``deterministic: bool = False`` passed on to ``nn.Dropout``)."""
    return _mode_in([f.name for f in dataclasses.fields(cls) if f.init])


def _mode_in(names: Any) -> tuple[str, bool] | None:
    for name in TRAIN_FLAGS:
        if name in names:
            return name, True
    for name in EVAL_FLAGS:
        if name in names:
            return name, False
    return None


class LinenModel(nnx.Module):
    """A Linen module with its variables, as an NNX model (see the module docstring).

    Attributes:
        module: the Linen module (static).
        params: its ``params`` collection, as ``nnx.Param`` leaves.
        collections: its other collections (``batch_stats``), as ``nnx.BatchStat`` leaves.
        dropout_key: the key Dropout draws from in training (advanced each training call).
        deterministic: inference mode (set by ``nnx.view(model, deterministic=True)``).
    """

    def __init__(self, module: linen.Module, input_shape: Sequence[int], rngs: nnx.Rngs):
        self.module = module
        self.mode = mode_argument(type(module))
        self.field = None if self.mode is not None else mode_field(type(module))
        example = jnp.zeros((1, *input_shape), jnp.float32)
        key = rngs.params()
        variables = self._moded(train=False).init({"params": key, "dropout": jax.random.fold_in(key, 1)}, example,
                                                  **self._mode_kwargs(train=False))
        variables = dict(variables)
        self.params = nnx.data(jax.tree.map(nnx.Param, dict(variables.pop("params", {}))))
        self.collections = nnx.data({name: jax.tree.map(nnx.BatchStat, dict(tree))
                                     for name, tree in variables.items() if name != "intermediates"})
        self.dropout_key = nnx.RngKey(jax.random.fold_in(rngs.params(), 2))
        self.deterministic = False

    def set_view(self, deterministic: bool | None = None) -> None:
        """``nnx.view(model, deterministic=True)``: inference mode (Dropout off, BatchNorm's running averages)."""
        if deterministic is not None:
            self.deterministic = deterministic

    def _moded(self, train: bool) -> linen.Module:
        """The module in training or inference mode when a field switches it (a copy with the field set)."""
        if self.field is None:
            return self.module
        name, value_in_training = self.field
        changes: dict[str, Any] = {name: value_in_training if train else not value_in_training}
        return self.module.clone(**changes)

    def _mode_kwargs(self, train: bool) -> dict[str, Any]:
        if self.mode is None:
            return {}
        name, value_in_training = self.mode
        return {name: value_in_training if train else not value_in_training}

    def variables(self) -> dict[str, Any]:
        """The Linen variables dict (plain arrays) that ``apply`` takes."""
        plain = {"params": jax.tree.map(lambda v: v[...], self.params, is_leaf=_is_variable)}
        for name, tree in self.collections.items():
            plain[name] = jax.tree.map(lambda v: v[...], tree, is_leaf=_is_variable)
        return plain

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.deterministic:
            return cast(jax.Array, self._moded(train=False).apply(self.variables(), x,
                                                                  **self._mode_kwargs(train=False)))
        key, draw = jax.random.split(self.dropout_key[...])
        self.dropout_key[...] = key
        out, updates = self._moded(train=True).apply(self.variables(), x, rngs={"dropout": draw},
                                                     mutable=list(self.collections), **self._mode_kwargs(train=True))
        for name, tree in updates.items():
            if name in self.collections:
                jax.tree.map(_assign, self.collections[name], dict(tree), is_leaf=_is_variable)
        return cast(jax.Array, out)


def _is_variable(value: Any) -> bool:
    return isinstance(value, nnx.Variable)


def _assign(variable: nnx.Variable, value: jax.Array) -> None:
    variable[...] = value


def build_linen(cls: type, input_shape: Sequence[int], n_classes: int, options: dict[str, Any],
                rngs: nnx.Rngs) -> LinenModel:
    """``cls(**options)`` with the class count (and input shape) filled in, wrapped as an NNX model."""
    fields = {f.name for f in dataclasses.fields(cls)}
    given = dict(options)
    for name in CLASS_FIELDS:
        if name in fields:
            given[name] = int(n_classes)
    if "input_shape" in fields:
        given["input_shape"] = tuple(int(n) for n in input_shape)
    return LinenModel(cls(**given), input_shape, rngs)
