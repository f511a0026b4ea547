"""Keep JAX's start-up quiet about TPUs on machines that have none.

With ``JAX_PLATFORMS`` unset, JAX tries every backend it knows, TPU included, and when no TPU runtime
(``libtpu``) is installed it logs, at INFO on ``jax._src.xla_bridge``::

    Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so: libtpu.so: cannot open shared
    object file: No such file or directory

Hydra configures logging at INFO, so every CPU or GPU run printed that line and wrote it into run.log.
:func:`quiet_missing_tpu` drops exactly that message, and only while no TPU runtime is installed. Everything
that points at a real problem still shows:

* a TPU runtime that is installed but fails to start (``libtpu`` importable or ``TPU_LIBRARY_PATH`` set);
* ``JAX_PLATFORMS`` naming ``tpu`` (JAX then raises instead of logging);
* JAX's own warning that a TPU seems present while ``libtpu`` is missing (a different message, a WARNING).
"""

from __future__ import annotations

import logging
import os
from importlib.util import find_spec

XLA_BRIDGE_LOGGER = "jax._src.xla_bridge"
MISSING_TPU_PREFIX = "Unable to initialize backend 'tpu'"


def tpu_runtime_installed() -> bool:
    """Whether a TPU runtime could be loaded: the ``libtpu`` package or a ``TPU_LIBRARY_PATH``."""
    if os.environ.get("TPU_LIBRARY_PATH"):
        return True
    try:
        return find_spec("libtpu") is not None
    except (ImportError, ValueError):  # a broken libtpu install still counts as "there is one"
        return True


class MissingTpuFilter(logging.Filter):
    """Drops JAX's "Unable to initialize backend 'tpu'" record when no TPU runtime is installed."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or not record.getMessage().startswith(MISSING_TPU_PREFIX):
            return True
        return tpu_runtime_installed()


def quiet_missing_tpu() -> None:
    """Installs :class:`MissingTpuFilter` on JAX's backend logger (once; importing jax is not needed).

    ``EQUIVAR_QUIET_TPU=off`` leaves JAX's logging untouched.
    """
    if os.environ.get("EQUIVAR_QUIET_TPU", "on").lower() in ("0", "off", "false", "no"):
        return
    logger = logging.getLogger(XLA_BRIDGE_LOGGER)
    if not any(isinstance(f, MissingTpuFilter) for f in logger.filters):
        logger.addFilter(MissingTpuFilter())
