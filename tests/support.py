"""The tests' shared helpers (imported as ``support``; conftest.py holds the pytest hooks and fixtures): Hydra
composition of the real configs, the tiny preset, the CLI in this process or in a new one, where real MNIST
lives (if anywhere), and made-up results for the plot and report tests."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import equivar.run

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"  # the same folder equivar.run.config_dir() finds in an editable install


def compose_raw(overrides: list[str]) -> dict:
    """The resolved config dict that ``python -m equivar.run OVERRIDES`` would run."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def mnist_dir() -> Path | None:
    """A TFDS data dir holding prepared MNIST: $TFDS_DATA_DIR, or the shared folder beside the checkout."""
    candidates = [os.environ.get("TFDS_DATA_DIR"), ROOT.parent / "shared" / "data" / "tensorflow_datasets"]
    for c in candidates:
        if c and (Path(c) / "mnist" / "3.0.1" / "dataset_info.json").is_file():
            return Path(c)
    return None


requires_mnist = pytest.mark.skipif(mnist_dir() is None, reason="prepared TFDS MNIST not found "
                                    "(set TFDS_DATA_DIR to a folder holding mnist/3.0.1)")


ZOO_NAMES = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
# The MNIST-1D paper's models are checked in full only with --slow (the default run stays under 3 minutes).
ZOO_PARAMS = [pytest.param(n, marks=pytest.mark.slow) if n.startswith("paper_") or n == "alias_free" else n
              for n in ZOO_NAMES]  # alias_free's FFT layers compile for 15-20 s: tests/test_alias_free.py covers it


def target(name: str) -> str:
    """The ``_target_`` of the zoo model ``name``, read from its conf/model YAML (the one declaration)."""
    return str(OmegaConf.load(CONF / "model" / f"{name}.yaml")["_target_"])


def zoo_options(name: str, **changes) -> dict:
    """The options conf/model/NAME.yaml gives the zoo model ``name`` (without ``_target_``), with ``changes``."""
    entry = OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{name}.yaml"))
    entry.pop("_target_")
    return entry | changes


def validate_metrics(run_dir: Path) -> dict:
    """A run's metrics.json, checked against its experiment's published JSON Schema (docs/schemas/)."""
    import json

    import jsonschema

    data = json.loads((Path(run_dir) / "metrics.json").read_text())
    name = data["module"].rsplit(".", 1)[-1]
    schema = json.loads((ROOT / "docs" / "schemas" / f"{name}.json").read_text())
    jsonschema.validate(data, schema)
    return data


def fake_stat(mean, std, n_seeds, length=None):
    """A mean ± std over ``n_seeds`` as results hold it (a series of ``length`` when given)."""
    std = std if n_seeds > 1 else 0.0
    if length is None:
        return {"mean": mean, "std": std, "n": n_seeds}
    return {"mean": [mean] * length, "std": [std] * length, "n": n_seeds}


def fake_seeds(status):
    """Seed records from status texts (``ok``, ``diverged at step 3 (epoch 1)``)."""
    from equivar.results import SeedRecord

    return [SeedRecord.from_text(i, text).model_dump() for i, text in enumerate(status)]


def fake_shift_record(name, acc, n_seeds=2, n_shifts=1, status=None, consistency=0.5):
    """A shift_test model record with made-up numbers (for plot and report tests)."""
    status = status or ["ok"] * n_seeds
    healthy = sum(s == "ok" for s in status)
    return {"target": f"zoo.{name}", "n_params": 100, "seeds": fake_seeds(status),
            "clean_accuracy": fake_stat(acc, 0.01, healthy), "shift_accuracy": fake_stat(acc, 0.02, healthy, n_shifts),
            "consistency": fake_stat(consistency, 0.0, healthy), "grid_mean_accuracy": fake_stat(acc, 0.02, healthy),
            "worst_shift_accuracy": fake_stat(acc - 0.1, 0.02, healthy), "eval_seconds": 0.1,
            "per_seed": {"seeds": list(range(healthy)), "clean_accuracy": [acc] * healthy,
                         "grid_mean_accuracy": [acc] * healthy, "consistency": [consistency] * healthy}}


def fake_shift_result(models, n_seeds=2, shifts=((0,),), dataset=None, unmeasured=None):
    """A shift_test result holding ``models`` (records), as metrics.json would."""
    from equivar.experiments import shift_test

    dataset = dataset if dataset is not None else {"name": "synthetic1d", "rank": 1, "n_train": 64, "n_test": 32,
                                                   "input_shape": [12, 1], "n_classes": 10}
    return shift_test.Result.model_validate({
        "experiment": "shift_test", "module": shift_test.__name__, "dataset": dataset or None,
        "seeds": list(range(n_seeds)), "shift_mode": "roll", "shifts": [list(s) for s in shifts],
        "n_eval_shift": 32, "execution": {}, "models": models, "unmeasured": unmeasured or {}})


# The smallest data and recipe that run any experiment end to end (conf/preset/tiny.yaml and its parts).
TINY = ["preset=tiny"]

EXPERIMENT_NAMES = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
# Run tiny elsewhere, with their results checked (not only their files): the experiments that train in
# test_seed_policy.py (one seed poisoned, metrics and plots checked), in test_defining_facts.py, and in their own
# files (test_alias_free.py, test_unseen_positions.py); test_experiments.py runs the rest.
RUN_ELSEWHERE = {"lee_scaling", "unseen_positions", "invariance_benchmark", "shift_test", "equivariance",
                 "feature_pooling", "lie_derivative", "mnist1d_baselines", "padding_leak", "pooling_invariance",
                 "antialiased_shift_test"}


@dataclass
class CliResult:
    """What a CLI run returned: its exit code and what it printed."""

    returncode: int
    stdout: str
    stderr: str


def cli(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> CliResult:
    """``python -m equivar.run ARGS hydra.run.dir=TMP_PATH/run`` from ``tmp_path``, in this process: the
    same checks, messages and exit codes as a new process (``main`` is the console script's entry), without
    importing everything and compiling everything again. ``env``: variables set for the run only."""
    from absl import logging as absl_logging

    # Hydra's logging set-up closes the handlers it replaces, and absl's handler then closes its stream unless
    # it is the current sys.stderr: pytest's capture file, while the run's output goes to a StringIO here
    absl_logging.get_absl_handler().python_handler.setStream(sys.__stderr__)
    saved = (sys.argv, sys.stdout, sys.stderr, list(sys.path), os.getcwd(), dict(os.environ))
    out, err = io.StringIO(), io.StringIO()
    code = 0
    os.environ.pop("HYDRA_FULL_ERROR", None)
    os.environ.update(env or {})
    sys.argv = ["equivar", *args, f"hydra.run.dir={tmp_path}/run"]
    os.chdir(tmp_path)
    importlib.invalidate_caches()  # the test may just have written the modules the run imports
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                equivar.run.main()
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
                if isinstance(done.code, str):
                    print(done.code, file=sys.stderr)
    finally:
        from hydra.core.global_hydra import GlobalHydra

        GlobalHydra.instance().clear()
        sys.argv, sys.stdout, sys.stderr, sys.path[:] = saved[0], saved[1], saved[2], saved[3]
        os.chdir(saved[4])
        os.environ.clear()
        os.environ.update(saved[5])
        for name, module in list(sys.modules.items()):  # a user's modules from tmp_path: the next test has its own
            if str(tmp_path) in str(getattr(module, "__file__", None) or ""):
                del sys.modules[name]
    return CliResult(code, out.getvalue(), err.getvalue())


def cli_process(args: list[str], tmp_path: Path, env: dict[str, str] | None = None,
                timeout: int = 300) -> subprocess.CompletedProcess:
    """The same command in a new process, for the tests where a real process is the point (signals, start-up,
    what a fresh interpreter imports)."""
    environ = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | (env or {})
    return subprocess.run([sys.executable, "-m", "equivar.run", *args, f"hydra.run.dir={tmp_path}/run"],
                          cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=timeout)
