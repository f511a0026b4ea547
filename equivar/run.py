"""Entry point: ``python -m equivar.run experiment=NAME [overrides]`` (``-m`` for sweeps).

This is the only module that reads Hydra's runtime config; everything else takes a plain dict or specs.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from equivar.config import parse_config
from equivar.errors import ConfigError, UserError
from equivar.strategy import enable_compilation_cache

log = logging.getLogger("equivar")
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")


def run_experiment(raw: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Runs the experiment a resolved config dict names, writing its files into ``out_dir``."""
    from experiments import EXPERIMENTS

    config = parse_config(raw)
    if config.experiment not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {config.experiment!r}; valid choices: "
                          f"{', '.join(sorted(EXPERIMENTS))}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return EXPERIMENTS[config.experiment](config, out_dir)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    enable_compilation_cache()
    try:
        raw = OmegaConf.to_container(cfg, resolve=True)
        run_experiment(raw, out_dir)
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"equivar: error: {err}", file=sys.stderr)
        sys.exit(2)
    log.info("results in %s", out_dir)


if __name__ == "__main__":
    main()
