"""Predictions of every seed on every example under every shift of a grid, in batched jitted calls."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from equivar.strategy import ExecutionPlan
from equivar.train import Variables, make_predict, take_seed
from equivar.transforms import shift_many


class ShiftEvaluator:
    """Compiles one call that predicts a chunk of examples under a chunk of shifts, and tiles the grid."""

    def __init__(self, graphdef: nnx.GraphDef, mode: str, plan: ExecutionPlan):
        predict = make_predict(graphdef)
        self.plan = plan

        def predict_shifted(variables: Variables, x: jax.Array, offsets: jax.Array) -> jax.Array:
            shifted = shift_many(x, offsets, mode)  # (S, N, ...)
            flat = shifted.reshape((-1,) + x.shape[1:])
            return predict(variables, flat).reshape(offsets.shape[0], x.shape[0])

        if plan.seed_packing == "vmap":
            self._call = jax.jit(jax.vmap(predict_shifted, in_axes=(0, None, None)))
        else:
            self._call = jax.jit(predict_shifted)

    def predict(self, params: Variables, x: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """Class predictions ``(n_seeds, n_shifts, n_examples)`` for seed-stacked ``(params, model_state)``
        (inference mode)."""
        n, n_shifts = len(x), len(offsets)
        budget = self.plan.eval_images_per_call
        x_chunk = min(n, max(1, budget))
        shift_chunk = max(1, min(n_shifts, budget // x_chunk))
        # Pad both chunk axes to fixed sizes so the call compiles once.
        x_dev = jnp.asarray(_pad_to(x, math.ceil(n / x_chunk) * x_chunk))
        off_dev = jnp.asarray(_pad_to(offsets, math.ceil(n_shifts / shift_chunk) * shift_chunk))
        n_seeds = jax.tree.leaves(params)[0].shape[0]
        seeds = [params] if self.plan.seed_packing == "vmap" else [take_seed(params, s) for s in
                                                                    range(n_seeds)]
        per_seed_blocks = []
        for p in seeds:
            rows = []
            for s0 in range(0, off_dev.shape[0], shift_chunk):
                cols = [self._call(p, x_dev[i0:i0 + x_chunk], off_dev[s0:s0 + shift_chunk])
                        for i0 in range(0, x_dev.shape[0], x_chunk)]
                rows.append(jnp.concatenate(cols, axis=-1))
            per_seed_blocks.append(jnp.concatenate(rows, axis=-2))
        out = per_seed_blocks[0] if self.plan.seed_packing == "vmap" else jnp.stack(per_seed_blocks)
        return np.asarray(out)[:, :n_shifts, :n]


def _pad_to(a: np.ndarray, length: int) -> np.ndarray:
    a = np.asarray(a)
    if len(a) == length:
        return a
    pad = np.zeros((length - len(a),) + a.shape[1:], dtype=a.dtype)
    return np.concatenate([a, pad])
