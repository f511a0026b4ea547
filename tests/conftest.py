"""The pytest hooks and fixtures: compilation settings for the test processes, ``--slow``, the figures a test
saved, and the tiny zoo trained once per test process. Plain helpers live in support.py."""

from __future__ import annotations

import os
from pathlib import Path


def _test_compilation_cache() -> None:
    """Compilation is most of a tiny run's time (a tiny shift_test: about 75 % of its CPU time), so the test
    processes keep what they compile between runs: JAX's persistent cache, every program stored however fast it
    compiled, in ``$EQUIVAR_TEST_JAX_CACHE``, else ``~/.cache/equivar/jax-tests`` (``off``: none). Set in the
    environment before JAX starts, so the CLI processes a test starts use it too."""
    cache = os.environ.get("EQUIVAR_TEST_JAX_CACHE", os.path.expanduser("~/.cache/equivar/jax-tests"))
    os.environ.setdefault("EQUIVAR_JAX_CACHE", cache)
    if cache.lower() not in ("0", "off", "false", "no"):
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache)  # processes that only import jax use it too
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


_test_compilation_cache()

import jax  # noqa: E402
import matplotlib.figure  # noqa: E402
import pytest  # noqa: E402

from equivar.execution import enable_compilation_cache, set_up_process  # noqa: E402

set_up_process()  # what the CLI and the API set up before JAX starts a backend (XLA flags, quiet TPU probe)
enable_compilation_cache()


def optimized(item: pytest.Item) -> bool:
    """Whether a test compiles with XLA's optimisations: the slow ones (they train long enough that unoptimised
    programs cost more than compiling does; the digit-for-digit checks are among them) and those marked
    ``optimized``. The others compile with ``jax_disable_most_optimizations``: a third less CPU time, and none
    of them pins digits. ``EQUIVAR_TEST_COMPILE=default`` optimises every test."""
    if os.environ.get("EQUIVAR_TEST_COMPILE") == "default":
        return True
    return item.get_closest_marker("slow") is not None or item.get_closest_marker("optimized") is not None


_compile_mode: dict[str, bool] = {}


@pytest.fixture(autouse=True)
def compilation_mode(request, monkeypatch):
    """Sets the test's compilation mode (:func:`optimized`) in this process and for the processes it starts.
    The flag is process-wide and not part of JAX's in-memory cache key, so a change clears that cache."""
    cheap = not optimized(request.node)
    if _compile_mode.get("cheap") != cheap:
        jax.config.update("jax_disable_most_optimizations", cheap)
        jax.clear_caches()
        _compile_mode["cheap"] = cheap
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1" if cheap else "0")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A shift_test run of mlp and lenet on synthetic data with preset=tiny (2 seeds, 24 positions, 4 classes),
    trained once per test process for the tests that load a run folder; a test that changes it copies it first."""
    from equivar.run import run_experiment

    from support import TINY, compose_raw

    folder = tmp_path_factory.mktemp("tiny_run")
    run_experiment(compose_raw(["experiment=shift_test", "dataset=synthetic", "models=[mlp,lenet]", *TINY]), folder)
    return folder


@pytest.fixture
def figures(monkeypatch):
    """Every figure saved during the test, by file name (kept alive for inspection after plt.close)."""
    saved = {}
    original = matplotlib.figure.Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        saved[Path(fname).name] = self
        return original(self, fname, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return saved


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="also run the tests marked slow (CI runs them; the default run stays under 90 s)")


def pytest_configure(config):
    # Config fuzzing (test_fuzz_config.py): about a minute by default, more examples under --slow (CI).
    from hypothesis import HealthCheck, settings

    common = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("default", max_examples=20, **common)
    settings.register_profile("ci", max_examples=25, **common)
    settings.register_profile("explore", max_examples=400, deadline=None, derandomize=False,  # by hand
                              suppress_health_check=[HealthCheck.too_slow])
    if config.getoption("--hypothesis-profile", None) is None:
        settings.load_profile("ci" if config.getoption("--slow") else "default")


def pytest_collection_modifyitems(config, items):
    # optimised tests first: the compilation mode changes once per process, and the long tests do not end the run
    items.sort(key=lambda item: not optimized(item))
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --slow (CI does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
