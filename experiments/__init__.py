"""One module per experiment, found by name: a module here with a ``run(config, out_dir)`` is the experiment
of that name, and its ``Options`` dataclass (if any) is its typed ``<name>.*`` options.

Adding an experiment means one module here and one YAML in ``conf/experiment/`` (whose defaults list
``/options@<name>: <name>`` when the module has options).
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def _discover() -> dict[str, ModuleType]:
    found = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if callable(getattr(module, "run", None)):
            found[info.name] = module
    return dict(sorted(found.items()))


MODULES = _discover()
EXPERIMENTS = {name: module.run for name, module in MODULES.items()}
OPTION_SCHEMAS = {name: module.Options for name, module in MODULES.items() if hasattr(module, "Options")}


def register_options() -> None:
    """Registers every experiment's ``Options`` defaults with Hydra as ``options/<name>`` (call before
    composing). The nodes are plain: :func:`equivar.config.parse_config` checks every value against the
    dataclass, so type and range errors read alike, one line naming the key."""
    from hydra.core.config_store import ConfigStore

    from equivar.options import defaults

    store = ConfigStore.instance()
    for name, schema in OPTION_SCHEMAS.items():
        store.store(group="options", name=name, node=defaults(schema))
