"""equivar: what convolution and pooling buy a model, measured."""

__version__ = "0.1.0"

from equivar.strategy import configure_xla_flags as _configure_xla_flags

_configure_xla_flags()
