"""equivar: what convolution and pooling buy a model, measured.

Importing equivar changes nothing outside it: the XLA flags and the log filter it relies on are set by its
entry points (the CLI, the tools and the Python API), through :func:`equivar.execution.set_up_process`.
"""

from equivar.version import __version__  # noqa: F401

_API = ("measure", "load_models", "load_data", "compose", "read_result")


def __getattr__(name: str):
    """The Python API (``equivar.measure``, ``equivar.load_models``, ``equivar.load_data``,
    ``equivar.compose``, ``equivar.read_result``), imported on first use so that ``import equivar`` stays light."""
    if name in _API:
        from equivar import api

        return getattr(api, name)
    raise AttributeError(f"module 'equivar' has no attribute {name!r}")
