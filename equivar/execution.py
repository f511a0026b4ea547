"""The one place that decides how work is laid out on the device, per backend.

Measured (see docs/performance.md and ``python -m equivar.tools.bench``):

* CPU (2 cores): ``vmap`` over 8 LeNet seeds runs at 0.4x the speed of a Python loop over them, because
  XLA:CPU lowers a batched-weights convolution poorly; a loop over seeds wins. ``lax.scan`` over an epoch of
  conv steps is 17x slower than a Python loop, so epochs are Python loops over a jitted step.
* CPU: XLA:CPU's YNNPACK library fusions are turned off (``--xla_cpu_experimental_ynn_fusion_type=`` with
  an empty list). jaxlib 0.10's default fusions make a ``cnn_aps`` step 1.6x slower and a LeNet step 1.3x
  slower than none; the dot/eltwise/reduce fusions an earlier equivar chose make the locally connected
  ``local`` step 1.4x slower than none, and every other zoo model's within 7 % of none.
  :func:`configure_xla_flags` sets it when an entry point starts (:func:`set_up_process`;
  ``EQUIVAR_XLA_CPU_FLAGS=off`` leaves XLA's defaults; a value already in ``XLA_FLAGS`` wins). It only
  affects the CPU backend.
* CPU: evaluation runs fastest when a call's largest activation stays near the caches: at 128 images per call
  a 28x28 ``cnn_gap`` predicts 4x faster than at 4096 and ``local`` 3.4x faster, while the MLP prefers big
  calls. :func:`eval_images_per_call` sizes calls by the model's largest activation per image.
* GPU (H100): small models leave the device idle; ``vmap`` over seeds fills it (3.6-21x the loop at 4-16
  seeds), so seeds are packed with ``vmap``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from importlib import metadata
from typing import Literal, get_args

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from pydantic import Field

from equivar.quiet import quiet_missing_tpu
from equivar.schema import Options, PositiveInt

# Verified (speed and numerics) on these jaxlib versions; an unknown flag is fatal to XLA, so other versions
# are left alone.
XLA_CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=",)  # an empty list: no YNNPACK fusions
XLA_CPU_FLAGS_VERIFIED = ("0.10.", "0.11.")


def cpu_device_count() -> int:
    """How many XLA devices equivar splits the host CPU into: ``$EQUIVAR_CPU_DEVICES``, else one per core up
    to 2. Each device runs its own queue, so seeds placed on different devices train concurrently: on a
    2-core CPU, two seeds side by side train 1.1-1.2x faster than one after the other (local, lenet, cnn_aps;
    a single XLA computation keeps both cores only partly busy)."""
    value = os.environ.get("EQUIVAR_CPU_DEVICES")
    if value is not None:
        try:
            return max(1, int(value))
        except ValueError:
            raise ValueError(f"EQUIVAR_CPU_DEVICES must be a whole number, got {value!r}") from None
    return max(1, min(os.cpu_count() or 1, 2))


def configure_xla_flags() -> list[str]:
    """Adds the measured-safe XLA:CPU flags to ``XLA_FLAGS``, and splits the host CPU into
    :func:`cpu_device_count` devices; must run before JAX initialises a backend (importing jax is fine: XLA
    reads the flags when the first backend starts). A flag already in ``XLA_FLAGS`` is left as it is.

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
    wanted = [*XLA_CPU_FLAGS, f"--xla_force_host_platform_device_count={cpu_device_count()}"]
    added = [f for f in wanted if f.split("=")[0] not in current]
    if added:
        os.environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    return added


def set_up_process() -> list[str]:
    """What equivar's entry points (``python -m equivar.run``, the ``equivar`` command, the tools and the Python
    API: ``equivar.measure``, ``load_models``, ``load_data``) set up, and importing equivar does not: the
    XLA:CPU flags and host device count of :func:`configure_xla_flags`, and the filter that drops JAX's "no
    TPU" log line (:mod:`equivar.quiet`). Both act only before JAX starts a backend; once one has started (a
    library user's own JAX code ran first), ``XLA_FLAGS`` is left as it is, since XLA would not read it again.
    Returns the flags added."""
    from jax._src import xla_bridge

    quiet_missing_tpu()
    if xla_bridge.backends_are_initialized():
        return []
    return configure_xla_flags()


SeedPacking = Literal["auto", "loop", "vmap"]
SEED_PACKINGS: tuple[str, ...] = get_args(SeedPacking)
# Measured defaults only; `python -m equivar.tools.bench` reports `lenet.train.steps_per_call*` cases to decide.
DEFAULT_STEPS_PER_CALL: dict[str, int] = {"cpu": 1}


# Loop packing spreads seeds over the CPU's devices only for jobs of at least this many calls per seed: a
# second device compiles its own copy of each call (about a second for a conv step), which tiny runs would pay
# for nothing.
SIDE_BY_SIDE_MIN_CALLS = 200


@dataclasses.dataclass(frozen=True)
class ExecutionPlan:
    """How to run seeds and evaluation on this backend."""

    backend: str
    seed_packing: str  # "loop": one seed after another; "vmap": all seeds in one vectorised step
    eval_images_per_call: int  # most images (shifts x examples) per jitted evaluation call
    eval_bytes_per_call: int | None = None  # CPU: also keep a call's largest activation under this many bytes
    n_devices: int = 1  # local devices; with vmap packing the seed axis is sharded over them
    steps_per_call: int = 1  # training steps per jitted call (>1: a lax.scan over steps inside the call)
    side_by_side_min_calls: int = SIDE_BY_SIDE_MIN_CALLS  # loop packing: spread seeds only for jobs this long

    def describe(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def seed_devices(self, n_seeds: int, calls_per_seed: int) -> list[jax.Device]:
        """Loop packing: seed ``i`` runs on device ``i % len(result)``, the seeds' calls interleaved so that
        the devices work side by side (one device: one seed after the other). Each device compiles its own
        copy of a call, so short jobs (fewer than ``side_by_side_min_calls`` calls per seed) stay on one
        device; the results are the same bit for bit either way."""
        if calls_per_seed < self.side_by_side_min_calls:
            return jax.local_devices()[:1]
        return jax.local_devices()[:max(1, min(n_seeds, self.n_devices))]

    def seed_mesh(self, n_seeds: int) -> Mesh | None:
        """A 1D mesh over as many local devices as evenly divide ``n_seeds`` (None: no sharding)."""
        if self.seed_packing != "vmap" or self.n_devices < 2:
            return None
        used = math.gcd(n_seeds, self.n_devices)
        if used < 2:
            return None
        return Mesh(np.array(jax.local_devices()[:used]), ("seeds",))


class ExecutionOptions(Options):
    """``execution.*``: how seeds and steps are packed on the device (the defaults: measured per backend)."""

    seed_packing: SeedPacking = Field("auto", description="auto (per backend) | loop | vmap")
    steps_per_call: PositiveInt | Literal["auto"] = Field(
        "auto", description="auto (the backend's default) | N training steps per jitted call")

    def plan(self) -> ExecutionPlan:
        """The plan for this backend with these choices."""
        return plan_execution(self.seed_packing,
                              steps_per_call=None if self.steps_per_call == "auto" else self.steps_per_call)


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache so repeated runs and sweeps skip recompiling.

    Folder: ``path``, else ``$EQUIVAR_JAX_CACHE``, else ``~/.cache/equivar/jax``; ``EQUIVAR_JAX_CACHE=off``
    disables it. Programs that compiled in under 0.5 s are not stored (JAX's
    ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` sets another threshold). Returns the folder used, or None.
    """
    path = path or os.environ.get("EQUIVAR_JAX_CACHE") or os.path.expanduser("~/.cache/equivar/jax")
    if path.lower() in ("0", "off", "false", "no"):
        return None
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
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
        # CPU: a loop (its devices, if several, each take seeds side by side). Accelerators: vmap, the seed
        # axis sharded over the devices when there are several.
        seed_packing = "loop" if backend == "cpu" else "vmap"
    if steps_per_call is None:
        # CPU: a scan over conv steps is 17x slower than a Python loop. Accelerators: a small model's step
        # is shorter than its dispatch (H100: ~1.6 ms per vmapped step), so scanning several steps per call
        # should pay, but that is not yet measured there: until it is, one step per call everywhere.
        steps_per_call = DEFAULT_STEPS_PER_CALL.get(backend, 1)
    if steps_per_call < 1:
        raise ValueError(f"steps_per_call must be >= 1, got {steps_per_call}")
    eval_images = 4096 if backend == "cpu" else 32768
    eval_bytes = EVAL_CPU_ACTIVATION_BYTES if backend == "cpu" else None
    return ExecutionPlan(backend=backend, seed_packing=seed_packing, eval_images_per_call=eval_images,
                         eval_bytes_per_call=eval_bytes, n_devices=n_devices, steps_per_call=steps_per_call)


# CPU evaluation: a call's largest activation is kept under this many bytes (measured on 28x28 inputs, 2-core
# CPU: cnn_gap, local and lenet are fastest at 100-500 images per call, about 12-18 MB of their largest
# activation; the MLP, whose activations are tiny, at the 4096 cap).
EVAL_CPU_ACTIVATION_BYTES = 16 * 2**20
EVAL_MIN_IMAGES_PER_CALL = 32


def eval_images_per_call(plan: ExecutionPlan, activation_bytes_per_image: int) -> int:
    """Images per evaluation call for a model whose largest activation takes ``activation_bytes_per_image``."""
    if plan.eval_bytes_per_call is None or activation_bytes_per_image <= 0:
        return plan.eval_images_per_call
    fit = plan.eval_bytes_per_call // activation_bytes_per_image
    return int(min(plan.eval_images_per_call, max(EVAL_MIN_IMAGES_PER_CALL, fit)))
