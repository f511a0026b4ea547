"""The code's shape: experiments are self-contained modules the library never imports, the import graph has no
cycle, the shared plotting and report code names no experiment, layer capture is thread-safe, and an
experiment written elsewhere runs through the CLI, the plot redraw and the report without any file of equivar
changing."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from equivar.introspect import capture

from support import ROOT

LIBRARY, EXPERIMENTS, TOOLS = ROOT / "equivar", ROOT / "experiments", ROOT / "equivar" / "tools"


def _module_name(path: Path) -> str:
    package = {EXPERIMENTS: "equivar.experiments", TOOLS: "equivar.tools"}.get(path.parent, "equivar")
    return package if path.stem == "__init__" else f"{package}.{path.stem}"


def _import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere (at the top or inside functions)."""
    files = [*LIBRARY.glob("*.py"), *TOOLS.glob("*.py"), *EXPERIMENTS.glob("*.py")]
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


def test_only_tools_import_tools():
    """The tools (benchmarks, the documentation generators) work on the library; the library and the
    experiments never need them."""
    graph = _import_graph()
    assert "equivar.tools.bench" in graph and "equivar.tools.reference_docs" in graph
    for module, edges in graph.items():
        if not module.startswith("equivar.tools"):
            tools = {e for e in edges if e.startswith("equivar.tools")}
            assert not tools, f"{module} imports {sorted(tools)}"


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


def _doc_example() -> tuple[str, str]:
    """The toy experiment of docs/api.md ("Your own experiment"): its module and its YAML, as written there."""
    text = (ROOT / "docs" / "api.md").read_text()
    module = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if b.startswith('"""toy:'))
    yaml = next(b for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S) if "experiment_name: toy" in b)
    return module, yaml


@pytest.mark.slow
def test_an_experiment_of_your_own_is_one_module_and_one_yaml(tmp_path):
    """A toy experiment in a folder of its own runs through the CLI (with a sweep), redraws and reports, with
    no file of equivar changed."""
    before = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    module, yaml = _doc_example()
    conf = tmp_path / "myconf"
    (conf / "experiment").mkdir(parents=True)
    (conf / "experiment" / "toy.yaml").write_text(yaml)
    (tmp_path / "mylab").mkdir()
    (tmp_path / "mylab" / "toy.py").write_text(module)
    tiny = ["zoo.mlp.hidden=[8]", "zoo.lenet.channels=[2,4]", "zoo.lenet.kernel=3", "zoo.lenet.hidden=[8]",
            "n_seeds=2", "train.epochs=1", "train.batch_size=32"]
    common = ["hydra.searchpath=[file://myconf]", "experiment=toy", "dataset=synthetic", *tiny]

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "equivar.run", *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)

    proc = cli(*common, "toy.n=32", f"hydra.run.dir={tmp_path}/run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["module"] == "mylab.toy" and set(metrics["models"]) == {"mlp", "lenet"}
    for record in metrics["models"].values():
        assert record["clean_accuracy"]["n"] == 2 and len(record["seeds"]) == 2
    assert "| mlp |" in proc.stdout and (tmp_path / "run" / "toy.png").is_file()
    assert (tmp_path / "run" / "checkpoints" / "lenet.json").is_file()  # trained like any run

    bad = cli(*common, "toy.n=0", f"hydra.run.dir={tmp_path}/bad")
    assert bad.returncode == 2 and "equivar: error: toy.n must be >= 1, got 0" in bad.stderr

    (tmp_path / "run" / "toy.png").unlink()
    redraw = subprocess.run([sys.executable, "-m", "equivar.plot", str(tmp_path / "run")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert redraw.returncode == 0 and (tmp_path / "run" / "toy.png").is_file(), redraw.stderr[-2000:]

    sweep = cli("-m", *common, "toy.roll=0,5", f"hydra.sweep.dir={tmp_path}/sweep")
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    report = subprocess.run([sys.executable, "-m", "equivar.report", str(tmp_path / "sweep")], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    csv = (tmp_path / "sweep" / "report" / "report.csv").read_text().splitlines()
    assert csv[0] == ("run,toy.roll,model,status,clean_accuracy_mean,clean_accuracy_std,rolled_accuracy_mean,"
                      "rolled_accuracy_std") and len(csv) == 5
    no_roll = [row.split(",") for row in csv[1:] if row.startswith("0,0,")]
    assert len(no_roll) == 2 and all(r[4] == r[6] for r in no_roll)  # rolled by 0: the same predictions
    assert (tmp_path / "sweep" / "report" / "report.png").is_file()
    after = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    assert after == before
