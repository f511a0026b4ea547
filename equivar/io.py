"""Run-folder files: atomic JSON writes and a record of the software and devices a run used."""

from __future__ import annotations

import json
import os
import platform
import secrets
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("equivar", "jax", "jaxlib", "flax", "optax", "numpy", "tensorflow-datasets", "mnist1d",
            "hydra-core", "matplotlib")


def write_json(path: Path, obj: Any) -> Path:
    """Writes JSON atomically: a temp file in the same folder, then a rename, so a killed run never leaves a
    half-written file.

    The file gets the mode a plain ``open(path, "w")`` would give it (0644 under the usual umask 022), so
    metrics.json and status.json are as readable as the plots beside them.

    Args:
        path: Where the JSON goes; missing parent folders are created.
        obj: Anything ``json`` writes; NaN and infinities become null.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_finite(obj), f, indent=1, sort_keys=False, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _create_temp(path: Path) -> tuple[int, Path]:
    """Creates a new hidden file beside ``path`` and opens it for writing.

    ``tempfile.mkstemp`` would make it 0600 (private), and the rename would keep that mode. Opening with 0666
    lets the kernel apply the process umask exactly as ``open()`` does, without reading or changing the umask
    (``os.umask`` can only be read by setting it, which races with other threads).
    """
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # another writer picked the same name: draw again
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def _finite(obj: Any) -> Any:
    """NaN and infinities become null: JSON has no such numbers (and ``allow_nan=False`` keeps it strict)."""
    if isinstance(obj, float):
        return obj if obj == obj and abs(obj) != float("inf") else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def environment() -> dict[str, Any]:
    """Package versions, Python, and JAX's backend and devices."""
    import jax

    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions,
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "processor": processor_name(),
        "vector_isa": vector_isa(),
    }


# XLA:CPU's instruction-set caps (``--xla_cpu_max_isa``), widest first, with the /proc/cpuinfo flag of each.
ISA_FLAGS = (("AVX512", "avx512f"), ("AVX2", "avx2"), ("AVX", "avx"), ("SSE4_2", "sse4_2"))


def _cpu_info() -> dict[str, str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def processor_name() -> str | None:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere Python's ``platform.processor()``), or None."""
    return _cpu_info().get("model name") or platform.processor() or None


def supported_isas() -> list[str]:
    """The XLA:CPU instruction-set caps this CPU supports, widest first (empty where it cannot tell)."""
    flags = set(_cpu_info().get("flags", "").split())
    return [isa for isa, flag in ISA_FLAGS if flag in flags]


def vector_isa() -> str | None:
    """The widest instruction set XLA:CPU uses here: the CPU's, or the cap ``XLA_FLAGS`` sets."""
    for flag in os.environ.get("XLA_FLAGS", "").split():
        if flag.startswith("--xla_cpu_max_isa="):
            return flag.split("=", 1)[1]
    isas = supported_isas()
    return isas[0] if isas else None
