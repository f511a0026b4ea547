"""Run-folder files: atomic JSON writes and a record of the software and devices a run used."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("equivar", "jax", "jaxlib", "flax", "optax", "numpy", "tensorflow-datasets", "mnist1d",
            "hydra-core", "matplotlib")


def write_json(path: Path, obj: Any) -> Path:
    """Writes JSON atomically: a temp file in the same folder, then a rename, so a killed run never leaves a
    half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
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

    versions = {}
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
    }
