"""The one place that decides how work is laid out on the device, per backend.

Measured (see README, performance section, and ``python -m equivar.bench``):

* CPU (2 cores): ``vmap`` over 8 LeNet seeds runs at 0.4x the speed of a Python loop over them, because
  XLA:CPU lowers a batched-weights convolution poorly; a loop over seeds wins. ``lax.scan`` over an epoch of
  conv steps is 17x slower than a Python loop, so epochs are Python loops over a jitted step.
* GPU: small models leave the device idle; ``vmap`` over seeds fills it, so seeds are packed with ``vmap``.
"""

from __future__ import annotations

import dataclasses

import jax

SEED_PACKINGS = ("auto", "loop", "vmap")


@dataclasses.dataclass(frozen=True)
class ExecutionPlan:
    """How to run seeds and evaluation on this backend."""

    backend: str
    seed_packing: str  # "loop": one seed after another; "vmap": all seeds in one vectorised step
    eval_images_per_call: int  # images (shifts x examples) per jitted evaluation call

    def describe(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def plan_execution(seed_packing: str = "auto", backend: str | None = None) -> ExecutionPlan:
    """Chooses seed packing and evaluation chunking for ``backend`` (default: JAX's default backend)."""
    if seed_packing not in SEED_PACKINGS:
        raise ValueError(f"unknown seed packing {seed_packing!r}; choose one of {SEED_PACKINGS}")
    backend = backend or jax.default_backend()
    if seed_packing == "auto":
        seed_packing = "loop" if backend == "cpu" else "vmap"
    eval_images = 4096 if backend == "cpu" else 32768
    return ExecutionPlan(backend=backend, seed_packing=seed_packing, eval_images_per_call=eval_images)
