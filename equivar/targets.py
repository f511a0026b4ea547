"""Classes and modules named by dotted paths, as Hydra's ``_target_`` names them, with one-line errors.

Models, datasets and experiments are all found this way: the zoo's and the user's alike, imported from the
installed packages or from the working directory.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import Any

from equivar.errors import ConfigError
from equivar.schema import nearest

_HINT = "; the module must be installed or importable from the working directory"


def importable_working_directory() -> None:
    """Makes modules in the working directory importable, as ``python -m`` does (a console script does not
    put the working directory on ``sys.path``)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def locate(target: str, key: str) -> Any:
    """Imports ``package.module.Attr`` (the longest importable module prefix, then attributes, importing
    submodules of packages on the way), with a one-line ConfigError that says which part is missing or what
    failed inside the user's module. ``key``: how the user writes the setting (``zoo.mine._target_``)."""
    if not isinstance(target, str) or not target:
        raise ConfigError(f"{key}={target!r} must be a dotted path, e.g. mylab.nets.MyNet")
    importable_working_directory()
    parts = target.split(".")
    for i in range(max(1, len(parts) - 1), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj: Any = _import(module_name, target, key)
        except ModuleNotFoundError as err:
            if i == 1:
                raise ConfigError(f"{key}={target!r} cannot be imported: no module named {err.name!r}{_HINT}") from None
            continue  # a shorter prefix may be the module and the rest attributes
        for attr in parts[i:]:
            if not hasattr(obj, attr) and hasattr(obj, "__path__"):  # a package: its submodule, if it has one
                try:
                    obj = _import(f"{obj.__name__}.{attr}", target, key)
                    continue
                except ModuleNotFoundError:
                    pass
            if not hasattr(obj, attr) and module_name == "__main__":
                raise ConfigError(f"{key}={target!r} was defined in a script or notebook (module __main__), which no "
                                  f"other process can import: move the class into a module file (e.g. "
                                  f"mylab/nets.py) and name it by that path (+{key}=mylab.nets.{parts[-1]}); "
                                  "checkpoints saved under __main__ load with the moved class")
            if not hasattr(obj, attr):
                near = nearest(attr, [a for a in dir(obj) if not a.startswith("_")])
                raise ConfigError(f"{key}={target!r} cannot be imported: {getattr(obj, '__name__', obj)} "
                                  f"has no attribute {attr!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
            obj = getattr(obj, attr)
        return obj
    raise ConfigError(f"{key}={target!r} cannot be imported{_HINT}")


def _import(module_name: str, target: str, key: str) -> ModuleType:
    """``module_name`` imported; ModuleNotFoundError only when that module itself (or a parent) is missing,
    a one-line ConfigError when importing it fails inside."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise
        raise ConfigError(f"{key}={target!r}: importing {module_name} fails: {err}") from err
    except Exception as err:  # the user's module itself raises on import
        raise ConfigError(f"{key}={target!r}: importing {module_name} fails: {type(err).__name__}: {err}") from err


def locate_class(target: str | type, key: str, base: type | tuple[type, ...] | None = None,
                 what: str = "a class") -> type:
    """The class a ``_target_`` names (``key``: how the user writes it, e.g. ``zoo.mine._target_``); a one-line
    ConfigError when it is not a class (or not a ``base``)."""
    obj = target if isinstance(target, type) else locate(target, key)
    if not isinstance(obj, type) or (base is not None and not issubclass(obj, base)):
        kind = obj.__name__ if isinstance(obj, type) else type(obj).__name__
        raise ConfigError(f"{key}={target!r} is {'the class ' + kind if isinstance(obj, type) else 'a ' + kind}"
                          f", not {what}")
    return obj


def locate_module(name: str, key: str) -> ModuleType:
    """The module ``name`` (e.g. an experiment's), imported; a one-line ConfigError when it cannot be."""
    obj = locate(name, key)
    if not isinstance(obj, ModuleType):
        raise ConfigError(f"{key}={name!r} names a {type(obj).__name__}, not a module")
    return obj
