"""The code's shape: experiments are self-contained modules the library never imports, the import graph has no
cycle, the shared plotting and report code names no experiment, layer capture is thread-safe, and an
experiment written elsewhere runs through the CLI, the plot redraw and the report without any file of equivar
changing."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from equivar.introspect import capture

from conftest import ROOT

LIBRARY, EXPERIMENTS = ROOT / "equivar", ROOT / "experiments"


def _module_name(path: Path) -> str:
    if path.parent == EXPERIMENTS:
        return "equivar.experiments" if path.stem == "__init__" else f"equivar.experiments.{path.stem}"
    return "equivar" if path.stem == "__init__" else f"equivar.{path.stem}"


def _import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere (at the top or inside functions)."""
    files = [*LIBRARY.glob("*.py"), *EXPERIMENTS.glob("*.py")]
    names = {_module_name(p) for p in files}
    graph: dict[str, set[str]] = {}
    for path in files:
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # from package import module: an edge to the module (the package itself is only its parent)
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in names]
                targets = subs if len(subs) == len(node.names) else [node.module, *subs]
            edges |= {t for t in targets if t in names}
        graph[_module_name(path)] = edges - {_module_name(path)}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_import_graph_has_no_cycle_even_through_imports_inside_functions():
    graph = _import_graph()
    assert "equivar.introspect" in graph and "equivar.experiments.shift_test" in graph
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
    # the check can fail: a planted edge back closes a cycle
    planted = {k: set(v) for k, v in graph.items()}
    planted["equivar.layers"].add("equivar.models")
    assert _cycle(planted) is not None


def test_the_library_never_imports_an_experiment_and_experiments_never_import_each_other():
    graph = _import_graph()
    for module, edges in graph.items():
        experiments = {e for e in edges if e.startswith("equivar.experiments")}
        assert not experiments, f"{module} imports {sorted(experiments)}"


EXPERIMENT_NAMES = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("shared", ["plot.py", "report.py", "results.py", "experiment.py"])
def test_the_shared_figure_report_and_result_code_names_no_experiment(shared):
    text = (LIBRARY / shared).read_text()
    assert EXPERIMENT_NAMES and not [name for name in EXPERIMENT_NAMES if name in text]


class Wait(nnx.Module):
    """A layer that holds its thread until the other thread's capture is in progress too."""

    def __init__(self, barrier: threading.Barrier):
        self.barrier = barrier

    def __call__(self, x):
        self.barrier.wait(timeout=30)
        return x


class Net(nnx.Module):
    def __init__(self, widths: list[int], barrier: threading.Barrier, seed: int):
        self.wait = Wait(barrier)
        self.n = len(widths) - 1
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            setattr(self, f"dense{i}", nnx.Linear(a, b, rngs=nnx.Rngs(seed)))

    @property
    def dense(self) -> list[nnx.Linear]:
        return [getattr(self, f"dense{i}") for i in range(self.n)]

    def __call__(self, x):
        x = self.wait(x)
        for layer in self.dense:
            x = jnp.tanh(layer(x))
        return x


def test_two_threads_capture_two_models_at_once_and_each_gets_its_own_layers():
    barrier = threading.Barrier(2)
    models = {"a": Net([3, 5, 2], barrier, 0), "b": Net([3, 4, 6, 2], barrier, 1)}
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3)), jnp.float32)
    got: dict[str, tuple] = {}

    def work(name: str) -> None:
        got[name] = capture(models[name], x)

    threads = [threading.Thread(target=work, args=(n,)) for n in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for name, model in models.items():
        out, calls, chained = got[name]
        assert [c.name for c in calls] == ["wait"] + [f"dense{i}" for i in range(len(model.dense))]
        h = x
        for call, layer in zip(calls[1:], model.dense):
            np.testing.assert_array_equal(np.asarray(call.output), np.asarray(layer(h)))
            h = jnp.tanh(call.output)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(h))
        assert not chained  # tanh runs between the layers
    # outside any capture the layers behave as before and record nothing
    np.testing.assert_array_equal(np.asarray(models["a"].dense[0](x)), np.asarray(x @ models["a"].dense[0].kernel[...]
                                                                                  + models["a"].dense[0].bias[...]))


TOY_MODULE = '''
"""toy: mean absolute input per model, the smallest experiment (one module)."""
from pathlib import Path

import matplotlib.pyplot as plt
from pydantic import Field

from equivar.config import RunConfig
from equivar.data import load_dataset
from equivar.experiment import base_fields
from equivar.plot import model_color, save
from equivar.results import ExperimentResult, Headline, MeanStd, ModelRecord
from equivar.schema import Options as OptionsBase
from equivar.schema import PositiveInt


class Options(OptionsBase):
    n: PositiveInt = Field(8, description="test inputs")


class Record(ModelRecord):
    headline = (Headline("level", share=False),)
    level: MeanStd


class Result(ExperimentResult[Record]):
    n: int


def run(config: RunConfig, out_dir: Path) -> Result:
    data = load_dataset(config.dataset)
    level = float(abs(data.x_test[:config.options.n]).mean())
    records = {spec.name: Record(target=spec.target, level=MeanStd.of([level * (i + 1)]))
               for i, spec in enumerate(config.models)}
    return Result(**base_fields(config, data), n=config.options.n, models=records)


def plot(result: Result, out_dir: Path) -> list[Path]:
    fig, ax = plt.subplots()
    for name, record in result.models.items():
        ax.bar(name, record.level.mean, color=model_color(name))
    return [save(fig, Path(out_dir) / "toy.png")]


def summary(result: Result) -> str:
    return "\\n".join(f"{name}: {r.level.mean:.4f}" for name, r in result.models.items())
'''

TOY_YAML = """# @package _global_
# python -m equivar.run hydra.searchpath=[file://CONF] experiment=toy
experiment_name: toy
experiment_module: toy_experiment
models: [mlp, lenet]
toy:
  n: 8
"""


@pytest.mark.slow
def test_an_experiment_of_your_own_is_one_module_and_one_yaml(tmp_path):
    """A toy experiment in a folder of its own runs through the CLI (with a sweep), redraws and reports, with
    no file of equivar changed."""
    before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    conf = tmp_path / "myconf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "experiment" / "toy.yaml").write_text(TOY_YAML.replace("CONF", str(conf)))
    (tmp_path / "toy_experiment.py").write_text(textwrap.dedent(TOY_MODULE))
    common = [f"hydra.searchpath=[file://{conf}]", "experiment=toy", "dataset=synthetic"]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "equivar.run", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)

    proc = cli(*common, "toy.n=4", f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["module"] == "toy_experiment" and set(metrics["models"]) == {"mlp", "lenet"}
    assert metrics["models"]["lenet"]["level"]["mean"] == pytest.approx(2 * metrics["models"]["mlp"]["level"]["mean"])
    assert "mlp: " in proc.stdout and (tmp_path / "run" / "toy.png").is_file()

    bad = cli(*common, "toy.n=0", f"hydra.run.dir={tmp_path}/bad")
    assert bad.returncode == 2 and "equivar: error: toy.n must be >= 1, got 0" in bad.stderr

    (tmp_path / "run" / "toy.png").unlink()
    redraw = subprocess.run([sys.executable, "-m", "equivar.plot", str(tmp_path / "run")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert redraw.returncode == 0 and (tmp_path / "run" / "toy.png").is_file(), redraw.stderr[-2000:]

    sweep = cli("-m", *common, "toy.n=2,4", f"hydra.sweep.dir={tmp_path}/sweep")
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    report = subprocess.run([sys.executable, "-m", "equivar.report", str(tmp_path / "sweep")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    csv = (tmp_path / "sweep" / "report" / "report.csv").read_text().splitlines()
    assert csv[0] == "run,toy.n,model,status,level_mean,level_std" and len(csv) == 5
    assert (tmp_path / "sweep" / "report" / "report.png").is_file()
    after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert after == before
