"""The one place that decides how work is laid out on the device, per backend.

Measured (see docs/performance.md and ``python -m equivar.bench``):

* CPU (2 cores): ``vmap`` over 8 LeNet seeds runs at 0.4x the speed of a Python loop over them, because
  XLA:CPU lowers a batched-weights convolution poorly; a loop over seeds wins. ``lax.scan`` over an epoch of
  conv steps is 17x slower than a Python loop, so epochs are Python loops over a jitted step.
* CPU: XLA:CPU's YNNPACK fusions for dots, elementwise ops and reductions
  (``--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce``) speed a LeNet step up about 1.3x and change
  losses by about 1e-7 relative; :func:`configure_xla_flags` turns them on when ``equivar`` is imported
  (``EQUIVAR_XLA_CPU_FLAGS=off`` disables it). The flag only affects the CPU backend.
* GPU (H100): small models leave the device idle; ``vmap`` over seeds fills it (3.6-21x the loop at 4-16
  seeds), so seeds are packed with ``vmap``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from importlib import metadata

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Verified (speed and numerics) on these jaxlib versions; an unknown flag is fatal to XLA, so other versions
# are left alone.
XLA_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce",)
XLA_CPU_FLAGS_VERIFIED = ("0.10.", "0.11.")


def configure_xla_flags() -> list[str]:
    """Adds the measured-safe XLA:CPU flags to ``XLA_FLAGS``; must run before JAX initialises a backend
    (importing jax is fine: XLA reads the flags when the first backend starts).

    Returns the flags added (none when disabled, already present, or the jaxlib version is unverified).
    """
    if os.environ.get("EQUIVAR_XLA_CPU_FLAGS", "on").lower() in ("0", "off", "false", "no"):
        return []
    try:
        version = metadata.version("jaxlib")
    except metadata.PackageNotFoundError:
        return []
    if not version.startswith(XLA_CPU_FLAGS_VERIFIED):
        return []
    current = os.environ.get("XLA_FLAGS", "")
    added = [f for f in XLA_CPU_FLAGS if f.split("=")[0] not in current]
    if added:
        os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added



SEED_PACKINGS = ("auto", "loop", "vmap")
# Measured defaults only; `python -m equivar.bench` reports `lenet.train.steps_per_call*` cases to decide.
DEFAULT_STEPS_PER_CALL: dict[str, int] = {"cpu": 1}


@dataclasses.dataclass(frozen=True)
class ExecutionPlan:
    """How to run seeds and evaluation on this backend."""

    backend: str
    seed_packing: str  # "loop": one seed after another; "vmap": all seeds in one vectorised step
    eval_images_per_call: int  # images (shifts x examples) per jitted evaluation call
    n_devices: int = 1  # local devices; with vmap packing the seed axis is sharded over them
    steps_per_call: int = 1  # training steps per jitted call (>1: a lax.scan over steps inside the call)

    def describe(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def seed_mesh(self, n_seeds: int) -> Mesh | None:
        """A 1D mesh over as many local devices as evenly divide ``n_seeds`` (None: no sharding)."""
        if self.seed_packing != "vmap" or self.n_devices < 2:
            return None
        used = math.gcd(n_seeds, self.n_devices)
        if used < 2:
            return None
        return Mesh(np.array(jax.local_devices()[:used]), ("seeds",))


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache so repeated runs and sweeps skip recompiling.

    Folder: ``path``, else ``$EQUIVAR_JAX_CACHE``, else ``~/.cache/equivar/jax``; ``EQUIVAR_JAX_CACHE=off``
    disables it. Returns the folder used, or None.
    """
    path = path or os.environ.get("EQUIVAR_JAX_CACHE") or os.path.expanduser("~/.cache/equivar/jax")
    if path.lower() in ("0", "off", "false", "no"):
        return None
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


def shard_seeds(tree, mesh: Mesh | None):
    """Places a seed-stacked pytree with its leading axis split over the mesh (no-op without a mesh)."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec("seeds")))


def replicate(tree, mesh: Mesh | None):
    """Places a pytree whole on every device of the mesh (no-op without a mesh)."""
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def plan_execution(seed_packing: str = "auto", backend: str | None = None,
                   steps_per_call: int | None = None) -> ExecutionPlan:
    """Chooses seed packing, steps per call and evaluation chunking for ``backend`` (default: JAX's)."""
    if seed_packing not in SEED_PACKINGS:
        raise ValueError(f"unknown seed packing {seed_packing!r}; choose one of {SEED_PACKINGS}")
    backend = backend or jax.default_backend()
    n_devices = len(jax.local_devices())
    if seed_packing == "auto":
        # Several devices: vmap so the seed axis can be sharded, one slice of seeds per device.
        seed_packing = "vmap" if n_devices > 1 or backend != "cpu" else "loop"
    if steps_per_call is None:
        # CPU: a scan over conv steps is 17x slower than a Python loop. Accelerators: a small model's step
        # is shorter than its dispatch (H100: ~1.6 ms per vmapped step), so scanning several steps per call
        # should pay, but that is not yet measured there: until it is, one step per call everywhere.
        steps_per_call = DEFAULT_STEPS_PER_CALL.get(backend, 1)
    if steps_per_call < 1:
        raise ValueError(f"steps_per_call must be >= 1, got {steps_per_call}")
    eval_images = 4096 if backend == "cpu" else 32768
    return ExecutionPlan(backend=backend, seed_packing=seed_packing, eval_images_per_call=eval_images,
                         n_devices=n_devices, steps_per_call=steps_per_call)
