"""The CLI's persistent compilation cache: a second identical run compiles nothing and measures the same."""

import json
import os
import subprocess
import sys

import pytest

from equivar.execution import enable_compilation_cache
from equivar.tools.bench import _without_timings

from support import TINY


def _cli(args: list[str], env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-m", "equivar.run", *args], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(open(args[-1].split("=", 1)[1] + "/metrics.json").read())


@pytest.mark.slow
def test_a_second_identical_run_compiles_nothing_and_measures_the_same(tmp_path):
    cache = tmp_path / "jax-cache"
    # every program is stored, however fast it compiled, so "nothing new" covers all of them
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}  # the tests' own cache
    env |= {"EQUIVAR_JAX_CACHE": str(cache), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
    args = ["experiment=shift_test", "dataset=synthetic", "shift.max=1", *TINY, "models=[mlp,lenet]", "n_seeds=2"]
    first = _cli([*args, f"hydra.run.dir={tmp_path / 'first'}"], env)
    entries = set(os.listdir(cache))
    assert any("train" in e or "step" in e for e in entries), sorted(entries)[:10]
    second = _cli([*args, f"hydra.run.dir={tmp_path / 'second'}"], env)
    assert set(os.listdir(cache)) == entries  # every program of the second run came from the cache
    assert _without_timings(second["models"]) == _without_timings(first["models"])


def test_the_cache_has_a_switch_off(monkeypatch):
    monkeypatch.setenv("EQUIVAR_JAX_CACHE", "off")
    assert enable_compilation_cache() is None
