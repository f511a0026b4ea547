"""Predictions of every seed on every example under every shift of a grid, in batched jitted calls."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from pydantic import Field

from equivar.execution import ExecutionPlan, eval_images_per_call
from equivar.schema import Options, PositiveInt
from equivar.train import Variables, make_logits, make_predict, take_seed
from equivar.transforms import shift_many


class EvalOptions(Options):
    """``eval.*``: which test examples the shift measurements use (in a run: the dataset's recipe)."""

    shift_subset: PositiveInt | None = Field(None, description="test examples in the shift grid: the first N "
                                                               "(null: all)")

    def subset(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The first ``shift_subset`` test examples (all when None): a fixed subset shared by every model."""
        if self.shift_subset is None or self.shift_subset >= len(y):
            return x, y
        return x[:self.shift_subset], y[:self.shift_subset]


class ShiftEvaluator:
    """Compiles one call that predicts a chunk of examples under a chunk of shifts, and tiles the grid.

    With ``probabilities=True`` the call also returns every class's softmax probability, for measures of how
    much the output moves (not only the argmax): :meth:`predict_with_probabilities`.
    """

    def __init__(self, graphdef: nnx.GraphDef, mode: str, plan: ExecutionPlan, probabilities: bool = False):
        predict = make_predict(graphdef)
        logits_fn = make_logits(graphdef)
        self.plan = plan
        self.probabilities = probabilities
        self._predict = predict
        self._budget: dict[tuple, int] = {}  # images per call, per input shape

        def predict_shifted(variables: Variables, x: jax.Array, offsets: jax.Array) -> tuple[jax.Array, ...]:
            shifted = shift_many(x, offsets, mode)  # (S, N, ...)
            flat = shifted.reshape((-1,) + x.shape[1:])
            grid = (offsets.shape[0], x.shape[0])
            if not probabilities:
                return (predict(variables, flat).reshape(grid),)
            logits = logits_fn(variables, flat)
            classes = logits.argmax(-1).astype(jnp.int32).reshape(grid)  # the argmax of the logits, as predict
            return classes, jax.nn.softmax(logits.astype(jnp.float32)).reshape(*grid, logits.shape[-1])

        if plan.seed_packing == "vmap":
            self._call = jax.jit(jax.vmap(predict_shifted, in_axes=(0, None, None)))
        else:
            self._call = jax.jit(predict_shifted)

    def predict(self, params: Variables, x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Class predictions ``(n_seeds, n_shifts, n_examples)`` for seed-stacked ``(params, model_state)``
        (inference mode)."""
        return self._run(params, x, offsets)[0]

    def predict_with_probabilities(self, params: Variables, x: np.ndarray, offsets: np.ndarray
                                   ) -> tuple[np.ndarray, np.ndarray]:
        """Class predictions ``(n_seeds, n_shifts, n_examples)`` and softmax probabilities
        ``(n_seeds, n_shifts, n_examples, n_classes)`` (needs ``probabilities=True``)."""
        if not self.probabilities:
            raise ValueError("this ShiftEvaluator was built without probabilities=True")
        classes, probs = self._run(params, x, offsets)
        return classes, probs

    def _run(self, params: Variables, x: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, ...]:
        n, n_shifts = len(x), len(offsets)
        budget = self._images_per_call(params, x)
        x_chunk = math.ceil(n / math.ceil(n / budget))  # equal chunks: little padding
        shift_chunk = max(1, min(n_shifts, budget // x_chunk))
        # Pad both chunk axes to fixed sizes so the call compiles once.
        x_pad = _pad_to(x, math.ceil(n / x_chunk) * x_chunk)
        off_pad = _pad_to(offsets, math.ceil(n_shifts / shift_chunk) * shift_chunk)
        n_seeds = jax.tree.leaves(params)[0].shape[0]
        if self.plan.seed_packing == "vmap":
            jobs = [(params, None)]
        else:  # seed i on device i % n_devices; the calls interleave so the devices work side by side
            calls = (len(off_pad) // shift_chunk) * (len(x_pad) // x_chunk)
            devices = self.plan.seed_devices(n_seeds, calls)
            jobs = [(jax.device_put(take_seed(params, s), devices[s % len(devices)]), devices[s % len(devices)])
                    for s in range(n_seeds)]
        inputs = {device: (jax.device_put(x_pad, device), jax.device_put(off_pad, device)) if device else
                  (jnp.asarray(x_pad), jnp.asarray(off_pad)) for _, device in jobs}
        blocks: list[list[list[tuple[jax.Array, ...]]]] = [[] for _ in jobs]  # per job: rows of shift chunks
        for s0 in range(0, len(off_pad), shift_chunk):
            for block in blocks:
                block.append([])
            for i0 in range(0, len(x_pad), x_chunk):
                for j, (p, device) in enumerate(jobs):
                    x_dev, off_dev = inputs[device]
                    blocks[j][-1].append(self._call(p, x_dev[i0:i0 + x_chunk], off_dev[s0:s0 + shift_chunk]))
        outputs = []
        for k, trailing in enumerate((0, 1)[:len(blocks[0][0][0])]):  # classes, then probabilities (a class axis)
            per_job = [np.concatenate([np.concatenate([np.asarray(c[k]) for c in row], axis=-1 - trailing)
                                       for row in block], axis=-2 - trailing) for block in blocks]
            out = per_job[0] if self.plan.seed_packing == "vmap" else np.stack(per_job)
            outputs.append(out[:, :n_shifts, :n])
        return tuple(outputs)

    def _images_per_call(self, params: Variables, x: np.ndarray) -> int:
        key = tuple(x.shape[1:])
        if key not in self._budget:
            one = take_seed(params, 0)  # one seed (the same for every packing)
            example = jax.ShapeDtypeStruct((1, *x.shape[1:]), jnp.float32)
            self._budget[key] = eval_images_per_call(self.plan, largest_activation_bytes(self._predict, one,
                                                                                         example))
        return self._budget[key]


def largest_activation_bytes(fn, *args) -> int:
    """Bytes of the largest intermediate array ``fn(*args)`` computes (traced abstractly, nothing runs)."""
    jaxpr = jax.make_jaxpr(fn)(*args)
    largest = 0

    def visit(jx) -> None:
        nonlocal largest
        for eqn in jx.eqns:
            for var in eqn.outvars:
                aval = getattr(var, "aval", None)
                if aval is not None and hasattr(aval, "shape") and hasattr(aval, "dtype"):
                    largest = max(largest, math.prod(aval.shape) * np.dtype(aval.dtype).itemsize)
            for sub in _subjaxprs(eqn):
                visit(sub)

    visit(jaxpr.jaxpr)
    return largest


def _subjaxprs(eqn):
    """The jaxprs nested in one equation's parameters (jit, custom_vjp, scan, cond, ...)."""
    for value in eqn.params.values():
        for item in value if isinstance(value, (list, tuple)) else (value,):
            inner = getattr(item, "jaxpr", item)
            if hasattr(inner, "eqns"):
                yield inner


def _pad_to(a: np.ndarray, length: int) -> np.ndarray:
    a = np.asarray(a)
    if len(a) == length:
        return a
    pad = np.zeros((length - len(a),) + a.shape[1:], dtype=a.dtype)
    return np.concatenate([a, pad])
