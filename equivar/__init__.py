"""equivar: what convolution and pooling buy a model, measured."""

__version__ = "0.1.0"
