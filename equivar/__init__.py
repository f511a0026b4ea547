"""equivar: what convolution and pooling buy a model, measured."""

from equivar.quiet import quiet_missing_tpu as _quiet_missing_tpu

_quiet_missing_tpu()  # before JAX starts a backend: that is when it logs the failed TPU probe

from equivar.execution import configure_xla_flags as _configure_xla_flags  # noqa: E402  (after the quieting)
from equivar.version import __version__  # noqa: E402,F401

_configure_xla_flags()


_API = ("measure", "load_models", "load_data", "compose", "read_result")


def __getattr__(name: str):
    """The Python API (``equivar.measure``, ``equivar.load_models``, ``equivar.load_data``,
    ``equivar.compose``, ``equivar.read_result``), imported on first use so that ``import equivar`` stays light."""
    if name in _API:
        from equivar import api

        return getattr(api, name)
    raise AttributeError(f"module 'equivar' has no attribute {name!r}")
