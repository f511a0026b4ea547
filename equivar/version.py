"""equivar's version, in one place (the package, ``--version`` and the help page read it)."""

__version__ = "0.1.0"
