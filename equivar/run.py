"""Entry point: ``python -m equivar.run experiment=NAME [overrides]`` (``-m`` for sweeps).

This is the only module that reads Hydra's runtime config; everything else takes a plain dict or specs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from equivar.config import parse_config
from equivar.errors import ConfigError, UserError
from equivar.io import read_json, write_json
from equivar.strategy import enable_compilation_cache

log = logging.getLogger("equivar")

def config_dir() -> str:
    """The folder of equivar's Hydra configs: ``equivar.conf``, from the repository's ``conf/`` (editable
    install) or the installed package data (``pip install .``, a wheel), whatever the working directory."""
    import equivar.conf

    return str(Path(equivar.conf.__file__).resolve().parent)


CONFIG_DIR = config_dir()


def _register_structured_configs() -> None:
    from equivar.experiments import register_options

    register_options()


_register_structured_configs()  # before Hydra composes: experiment YAMLs default to options/<name>


def run_experiment(raw: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    """Runs the experiment a resolved config dict names, writing its files into ``out_dir``.

    ``out_dir/status.json`` says where the run stands: ``running``, then ``complete`` (or ``diverged``), or
    ``interrupted``/``failed`` with the reason. A folder that already holds a complete run of the same config
    is skipped (so a re-launched sweep resumes); one that holds another config's results is refused unless the
    config says ``overwrite: true``: results are never overwritten by accident.
    """
    from equivar.experiments import EXPERIMENTS

    config = parse_config(raw)
    if config.experiment not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {config.experiment!r}; valid choices: "
                          f"{', '.join(sorted(EXPERIMENTS))}")
    out_dir = Path(out_dir)
    status_path = out_dir / "status.json"
    previous = _previous_run(out_dir, raw)
    if previous is not None:
        return previous
    out_dir.mkdir(parents=True, exist_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    record = {"experiment": config.experiment, "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "config": _comparable(raw)}
    write_json(status_path, {**record, "status": "running"})
    try:
        metrics = EXPERIMENTS[config.experiment](config, out_dir)
    except KeyboardInterrupt:
        write_json(status_path, {**record, "status": "interrupted", "seconds": time.time() - started,
                                 "note": "stopped by the user (Ctrl-C) before metrics.json was written"})
        raise
    except BaseException as err:
        write_json(status_path, {**record, "status": "failed", "seconds": time.time() - started,
                                 "error": f"{type(err).__name__}: {err}"})
        raise
    final = "diverged" if metrics.get("status") == "diverged" else "complete"
    write_json(status_path, {**record, "status": final, "seconds": time.time() - started})
    return metrics


def _comparable(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k != "overwrite"}


def _previous_run(out_dir: Path, raw: dict[str, Any]) -> dict[str, Any] | None:
    """What to do with a folder that already holds a run: the stored metrics when it is complete with this
    very config (a resumed sweep skips it), nothing when the earlier attempt never finished (run again), and
    a ConfigError when it holds other results (unless ``overwrite: true``)."""
    status_path, metrics_path = out_dir / "status.json", out_dir / "metrics.json"
    if raw.get("overwrite") or not (status_path.exists() or metrics_path.exists()):
        return None
    status = read_json(status_path) if status_path.exists() else {}
    finished = status.get("status") in ("complete", "diverged") and metrics_path.exists()
    if finished and status.get("config") == json.loads(json.dumps(_comparable(raw))):
        log.info("%s already holds this run, complete: skipped (overwrite=true runs it again)", out_dir)
        return read_json(metrics_path)
    if finished or not status:
        raise ConfigError(f"{out_dir} already holds a run (status.json or metrics.json) of another config; "
                          "equivar does not overwrite results: choose another hydra.run.dir, or pass "
                          "overwrite=true")
    log.info("%s: the previous attempt ended %r; running it again", out_dir, status.get("status"))
    return None


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    enable_compilation_cache()
    try:
        raw = OmegaConf.to_container(cfg, resolve=True)
        metrics = run_experiment(raw, out_dir)
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        # One line: JAX appends a note on its frames to exceptions raised inside traced code.
        print(f"equivar: error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"equivar: interrupted; {out_dir / 'status.json'} records it (no metrics.json was written)",
              file=sys.stderr)
        sys.exit(130)
    log.info("results in %s", out_dir)
    if metrics.get("status") == "diverged":
        print(f"equivar: error: every seed diverged (non-finite loss or gradients); the steps are recorded in "
              f"{out_dir / 'metrics.json'} under models.*.status; try a smaller train.learning_rate",
              file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
