"""Benchmarks (not tests): ``python -m equivar.tools.bench [--quick] [--only SECTION ...]``.

In one process: the float32 matmul peak of this device, equivar's own training step and evaluation for
``lenet`` and ``mlp`` on MNIST-shaped data against what a plain PyTorch user gets for the same model and
optimizer (``equivar.tools.torch_baseline``'s loop, in its own process; section ``torch``), scanned steps (``steps``),
N-seed training for N = 1, 4, 8 with each seed packing and the shift-grid evaluation (``seeds``), every
default zoo model's training and evaluation throughput (``zoo``), and the whole real-MNIST study a user waits
for (``study``): ``python -m equivar.run experiment=shift_test dataset=mnist models=[mlp,lenet]`` end to end in
a fresh process with a cold compilation cache, the same job as a plain PyTorch script
(``python -m equivar.tools.torch_baseline``), and the CLI again with the warm cache, with the end-to-end and per-model
training and evaluation ratios; then the default four-model study with a cold cache. Without torch the
PyTorch rows are a note; without MNIST in ``$TFDS_DATA_DIR`` the study is.

Prints tables and writes ``bench.json`` in the working directory: per case (``lenet.train``, ``mlp.eval``,
``lenet.seeds8.vmap``, ``zoo.local.train``, ...) the keys ``images_per_s``, ``gflops``, ``pct_of_peak`` and
``ratio_to_torch``; per study run ``seconds``, per model its training and evaluation seconds and the accuracy
it reached, and ``ratio_to_torch`` (PyTorch's seconds over equivar's: above 1, equivar is faster). Ratios are
taken within this one run; the equivar/torch step pairs are repeated ``--repeat`` times, interleaved, and
reported as medians with the range of the per-repeat ratios (``ratio_to_torch_range``), because a shared
machine's load drifts. Seed-packing and steps-per-call cases carry ``ratio_to_lenet_train``: throughput over
the single-seed default.

FLOPs are counted analytically from the layers (2 per multiply-add; a training step counts 3x the forward
pass: forward, input gradients and weight gradients), so ``gflops`` is useful work, not what XLA executed.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from equivar.evaluate import ShiftEvaluator
from equivar.execution import plan_execution, set_up_process
from equivar.introspect import layer_outputs
from equivar.io import processor_name, vector_isa
from equivar.layers import LocallyConnected, conv_geometry
from equivar.models import MLP, LayerStack, LeNet, build_model
from equivar.train import SeedTrainer, TrainOptions, init_states, make_optimizer, seed_keys
from equivar.transforms import shift_grid

BENCH_MODELS = {"lenet": LeNet, "mlp": MLP}  # the bench's rows, by the zoo's names
UNBENCHED = ("stack",)  # zoo entries that are templates, not models: Stack needs its layers=[...]
SECTIONS = ("torch", "steps", "seeds", "zoo", "study")
STUDY_COMMAND = ("experiment=shift_test", "dataset=mnist")  # python -m equivar.run ... (the real-MNIST study)
TORCH_BASELINE_MODELS = ("mlp", "lenet")  # the models the plain PyTorch script (torch_baseline) writes too

MNIST_SHAPE = (28, 28, 1)


def forward_flops(model: nnx.Module, input_shape: tuple[int, ...]) -> int:
    assert isinstance(model, LayerStack), "the bench's models are layer stacks"
    """Multiply-add FLOPs (x2) of one forward pass for one example, from convs and dense layers."""
    feats = jax.eval_shape(lambda x: layer_outputs(model, x), jax.ShapeDtypeStruct((1,) + input_shape, jnp.float32))
    flops = 0
    for name, layer in model.layers():
        out = feats[name].shape
        if isinstance(layer, nnx.Conv):
            g = conv_geometry(layer)
            flops += 2 * math.prod(out[1:-1]) * math.prod(g.kernel) * layer.in_features * layer.out_features
        elif isinstance(layer, LocallyConnected):  # kernel (*out, patch, features): one multiply-add per weight
            flops += 2 * math.prod(layer.kernel.shape)
        elif isinstance(layer, nnx.Linear):
            flops += 2 * layer.in_features * layer.out_features
    return flops


def _timed(fn: Callable[[], Any], min_seconds: float) -> float:
    """Seconds per call: one warm-up call, then repeats until ``min_seconds`` have passed."""
    jax.block_until_ready(fn())
    calls, start = 0, time.perf_counter()
    while True:
        jax.block_until_ready(fn())
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def matmul_peak_gflops(n: int = 2048, min_seconds: float = 1.0) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(jnp.matmul)
    return 2 * n**3 / _timed(lambda: f(a, b), min_seconds) / 1e9


def _random_data(n: int, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(0)
    x = rng.random((n,) + shape, dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


@functools.cache
def zoo_entries() -> dict[str, tuple[str, dict[str, Any]]]:
    """Every zoo model a built-in config composes, by name: the zoo's own entries and those experiments add
    (``lenet_blur``, ``lenet_aps``, ``gap_mean``, ...), each with its ``_target_`` and options as that config
    gives them (the first experiment naming an entry wins)."""
    from equivar.errors import UserError
    from equivar.run import compose_config, config_dir

    experiments = sorted(p.stem for p in (Path(config_dir()) / "experiment").glob("*.yaml"))
    entries: dict[str, tuple[str, dict[str, Any]]] = {}
    choices: list[list[str]] = [[]] + [[f"experiment={name}"] for name in experiments]
    for overrides in choices:
        try:
            zoo = compose_config(overrides, resolve=True).get("zoo", {})
        except UserError:  # an experiment that does not compose alone: its zoo entries come from the others
            continue
        for name, entry in zoo.items():
            if name not in entries and name not in UNBENCHED:
                options = dict(entry)
                entries[name] = (str(options.pop("_target_")), options)
    return entries


def zoo_entry(name: str) -> tuple[str, dict[str, Any]]:
    """A zoo model's ``_target_`` and options (:func:`zoo_entries`)."""
    return zoo_entries()[name]


def xla_forward_flops(kind: str, input_shape: tuple[int, ...] = MNIST_SHAPE, batch: int = 128) -> float:
    """FLOPs of one forward pass per example, as XLA's cost analysis of the compiled program counts them (any
    model; FFTs count as XLA counts them)."""
    graphdef, state = nnx.split(_builder(kind)(nnx.Rngs(0)))
    x = jax.ShapeDtypeStruct((batch, *input_shape), jnp.float32)
    compiled = jax.jit(lambda s, v: nnx.merge(graphdef, s)(v)).lower(state, x).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float((cost or {}).get("flops", 0.0)) / batch


def _builder(kind: str) -> Callable[[nnx.Rngs], nnx.Module]:
    """``kind`` is a bench model (``lenet``, ``mlp``: the torch pair's exact classes) or ``zoo.NAME``."""
    if kind.startswith("zoo."):
        target, options = zoo_entry(kind[4:])
        return lambda r: build_model(target, MNIST_SHAPE, 10, options, r)
    return lambda r: build_model(BENCH_MODELS[kind], MNIST_SHAPE, 10, {}, r)


def equivar_train_ips(kind: str, n_seeds: int, packing: str, batch_size: int, steps: int,
                      min_seconds: float, steps_per_call: int | None = None, guard: bool = True) -> float:
    """Training images per second summed over seeds, through equivar's real SeedTrainer.fit path."""
    x, y = _random_data(steps * batch_size, MNIST_SHAPE)
    spec = TrainOptions(epochs=1, batch_size=batch_size)
    tx = make_optimizer(spec)
    keys = seed_keys(0, n_seeds)
    graphdef, states = init_states(_builder(kind), tx, keys)
    # Steady state: the warm-up call compiles, so loop packing spreads the seeds over the CPU's devices
    # however few steps are timed, as it does in a run long enough to pay for the extra compiles.
    plan = dataclasses.replace(plan_execution(packing, steps_per_call=steps_per_call), side_by_side_min_calls=1)
    trainer = SeedTrainer(graphdef, tx, plan, guard=guard)
    seconds = _timed(lambda: trainer.fit(states, x, y, keys, spec, label="bench")[0], min_seconds)
    return n_seeds * steps * batch_size / seconds


def equivar_eval_ips(kind: str, n_examples: int, min_seconds: float, max_shift: int = 0) -> float:
    """Evaluation images per second (examples x shifts) through ShiftEvaluator, one seed."""
    x = np.asarray(_random_data(n_examples, MNIST_SHAPE)[0])
    tx = make_optimizer(TrainOptions())
    graphdef, states = init_states(_builder(kind), tx, seed_keys(0, 1))
    evaluator = ShiftEvaluator(graphdef, "roll", plan_execution("auto"))
    offsets = shift_grid(max_shift, 2)
    seconds = _timed(lambda: evaluator.predict((states.params, states.model_state), x, offsets), min_seconds)
    return n_examples * len(offsets) / seconds


def torch_reference(kind: str, batch_size: int, steps: int, eval_examples: int,
                    min_seconds: float) -> dict[str, float] | None:
    """What a plain PyTorch user gets for the same model: ``equivar.tools.torch_baseline``'s loop (default Adam, eager,
    channels-first, PyTorch's default threads) in its own process, so JAX's threads are not in its way, on the
    GPU when JAX runs on one; train and eval images/s, or None when torch is not installed."""
    try:
        import torch
    except ImportError:
        return None
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    proc = subprocess.run([sys.executable, "-m", "equivar.tools.torch_baseline", "--models", kind, "--device", device,
                           "--throughput", str(batch_size), str(steps), str(eval_examples), str(min_seconds)],
                          capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def study(command: tuple[str, ...] = STUDY_COMMAND, cache_dir: Path | None = None) -> dict[str, Any]:
    """Runs ``python -m equivar.run COMMAND`` in a fresh process, as a user waits for it, with the compilation
    cache in ``cache_dir`` (default: a fresh, cold one); returns its wall time and, per model, training and
    evaluation seconds and accuracies, and ``numbers``: every model's measurements without their timings (to
    check that a warm run measures the same). ``{"error": reason}`` when the run fails (e.g. no MNIST in
    ``$TFDS_DATA_DIR``)."""
    with tempfile.TemporaryDirectory(prefix="equivar-study-") as tmp:
        out = Path(tmp) / "run"
        env = {**os.environ, "EQUIVAR_JAX_CACHE": str(cache_dir or Path(tmp) / "jax-cache")}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "equivar.run", *command, f"hydra.run.dir={out}"], env=env,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0 or not (out / "metrics.json").exists():
            return {"error": _last_line(proc)}
        metrics = json.loads((out / "metrics.json").read_text())
    models = {}
    for name, record in metrics["models"].items():
        models[name] = {"n_params": record.get("n_params"),
                        "train_seconds": (record.get("training") or {}).get("seconds"),
                        "eval_seconds": record.get("eval_seconds")}
        # mean and std over seeds
        for what in ("clean_accuracy", "grid_mean_accuracy", "worst_shift_accuracy", "consistency"):
            models[name][what] = record.get(what, {}).get("mean")
            models[name][what + "_std"] = record.get(what, {}).get("std")
    return {"command": "python -m equivar.run " + " ".join(command), "seconds": seconds,
            "n_seeds": len(metrics.get("seeds", [])), "models": models, "numbers": _without_timings(metrics["models"])}


def _last_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit code {proc.returncode}"


def _without_timings(tree: Any) -> Any:
    """``tree`` without the keys that hold seconds (they differ between identical runs)."""
    if isinstance(tree, dict):
        return {k: _without_timings(v) for k, v in tree.items() if "seconds" not in k}
    if isinstance(tree, list):
        return [_without_timings(v) for v in tree]
    return tree


def torch_baseline(models: tuple[str, ...] = TORCH_BASELINE_MODELS) -> dict[str, Any]:
    """Runs the plain PyTorch script (``python -m equivar.tools.torch_baseline``) in a fresh process; its wall time and
    per-model seconds and numbers, or ``{"error": reason}`` (torch not installed, no MNIST)."""
    try:
        import torch  # noqa: F401  # only to say why the rows are missing
    except ImportError:
        return {"error": "torch not installed: no PyTorch study (pip install torch)"}
    with tempfile.TemporaryDirectory(prefix="equivar-torch-study-") as tmp:
        out = Path(tmp) / "torch_baseline.json"
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "equivar.tools.torch_baseline", "--models", *models,
                               "--out", str(out)], capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0 or not out.exists():
            return {"error": _last_line(proc)}
        record = json.loads(out.read_text())
    record.update(command=f"python -m equivar.tools.torch_baseline --models {' '.join(models)}", seconds=seconds)
    return record


def study_against_torch(notes: list[str]) -> dict[str, Any]:
    """The MLP + LeNet real-MNIST study through the equivar CLI with a cold compilation cache, the plain PyTorch
    script, and the CLI again with the now warm cache, one after the other; per run the wall time, and the
    ratios ``torch seconds / equivar seconds`` end to end and per model for training and evaluation (above 1:
    equivar is faster)."""
    command = (*STUDY_COMMAND, "models=[" + ",".join(TORCH_BASELINE_MODELS) + "]")
    with tempfile.TemporaryDirectory(prefix="equivar-study-cache-") as cache:
        cold = study(command, Path(cache))
        if "error" in cold:
            notes.append(f"study skipped: {' '.join(command)} failed: {cold['error']}")
            return {}
        reference = torch_baseline()
        warm = study(command, Path(cache))
    out: dict[str, Any] = {"cold": cold, "warm": warm}
    if "error" in warm:
        notes.append(f"warm study failed: {warm['error']}")
        del out["warm"]
    else:
        out["warm_metrics_identical"] = warm.pop("numbers") == cold["numbers"]
    cold.pop("numbers")
    if "error" in reference:
        notes.append(f"no PyTorch study: {reference['error']}")
        return out
    out["torch"] = reference
    for run_name in ("cold", "warm"):
        if run_name not in out:
            continue
        run_record = out[run_name]
        run_record["ratio_to_torch"] = reference["seconds"] / run_record["seconds"]
        for name, m in run_record["models"].items():
            theirs = reference["models"].get(name)
            if theirs:
                m["train_ratio_to_torch"] = theirs["train_seconds"] / m["train_seconds"]
                m["eval_ratio_to_torch"] = theirs["eval_seconds"] / m["eval_seconds"]
    return out


def run(quick: bool = False, seeds: tuple[int, ...] = (1, 4, 8), repeat: int = 1,
        sections: tuple[str, ...] = SECTIONS, zoo: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The cases of ``sections`` (the zoo section: the models ``zoo`` names, or all; ``lenet``, their unit,
    always); the equivar-vs-torch pairs are measured ``repeat`` times, interleaved, and
    reported as the median with the range of the per-repeat ratios (the machine's load drifts; one pair is one
    sample)."""
    unknown_names = sorted(set(zoo or ()) - set(zoo_entries())) if "zoo" in sections else []
    if unknown_names:  # before any timing: a typo costs nothing
        raise SystemExit(f"--zoo: no zoo model named {', '.join(unknown_names)}; known: "
                         f"{', '.join(sorted(zoo_entries()))}")
    min_s = 1.0 if quick else 3.0
    steps = 20 if quick else 60
    batch = 128
    eval_n = 2048 if quick else 8192
    peak = matmul_peak_gflops(min_seconds=min_s)
    plan = plan_execution("auto")
    print(f"backend {jax.default_backend()} devices {jax.devices()}; float32 matmul peak {peak:.1f} GFLOP/s",
          flush=True)
    cases: dict[str, dict[str, Any]] = {}
    notes: list[str] = []

    def add(name: str, ips: float, flops_per_image: int, torch_ips: float | None) -> dict[str, Any]:
        gflops = ips * flops_per_image / 1e9
        cases[name] = {"images_per_s": ips, "gflops": gflops, "pct_of_peak": 100 * gflops / peak,
                       "ratio_to_torch": None if torch_ips is None else ips / torch_ips}
        return cases[name]

    fwd_flops = {kind: forward_flops(_builder(kind)(nnx.Rngs(0)), MNIST_SHAPE) for kind in ("lenet", "mlp")}
    if "torch" in sections:
        for kind, fwd in fwd_flops.items():
            _torch_pair(kind, fwd, batch, steps, eval_n, min_s, repeat, add, notes)
    lenet_fwd = fwd_flops["lenet"]
    single = None
    if {"steps", "seeds"} & set(sections):  # both compare with the single-seed default
        single = cases["lenet.train"]["images_per_s"] if "lenet.train" in cases else \
            add("lenet.train", equivar_train_ips("lenet", 1, "auto", batch, steps, min_s), 3 * lenet_fwd,
                None)["images_per_s"]
    if "steps" in sections:
        for k in (4, 16):  # what scanning k steps per jitted call buys on this backend (vs lenet.train)
            name = f"lenet.train.steps_per_call{k}"
            add(name, equivar_train_ips("lenet", 1, "auto", batch, steps, min_s, k), 3 * lenet_fwd, None)
            cases[name]["ratio_to_lenet_train"] = cases[name]["images_per_s"] / single
    if "seeds" in sections:
        for n_seeds in seeds:
            for packing in ("loop", "vmap"):
                name = f"lenet.seeds{n_seeds}.{packing}"
                add(name, equivar_train_ips("lenet", n_seeds, packing, batch, steps, min_s), 3 * lenet_fwd, None)
                cases[name]["ratio_to_lenet_train"] = cases[name]["images_per_s"] / single
        add("lenet.shift_grid_eval", equivar_eval_ips("lenet", 1024 if quick else 2048, min_s, max_shift=4),
            lenet_fwd, None)
    if "zoo" in sections:  # every zoo model any experiment trains, through the same paths, so their costs compare
        chosen = set(zoo_entries()) if zoo is None else set(zoo) | {"lenet"}
        names = sorted(chosen, key=lambda n: (n != "lenet", n))  # lenet first: the others' unit
        for name in names:
            kind = f"zoo.{name}"
            try:
                fwd_xla = xla_forward_flops(kind)
            except Exception as err:  # e.g. a 1-D paper model on 28x28 images
                notes.append(f"{kind}: not benchmarked on {MNIST_SHAPE}: {str(err).splitlines()[0]}")
                continue
            add(f"{kind}.train", equivar_train_ips(kind, 1, "auto", batch, steps, min_s), round(3 * fwd_xla), None)
            add(f"{kind}.eval", equivar_eval_ips(kind, eval_n, min_s), round(fwd_xla), None)
            for stage in ("train", "eval"):
                lenet = cases.get(f"zoo.lenet.{stage}", {}).get("images_per_s")
                cases[f"{kind}.{stage}"]["ratio_to_lenet"] = None if not lenet else \
                    cases[f"{kind}.{stage}"]["images_per_s"] / lenet
            print(f"{kind}: {cases[kind + '.train']['images_per_s']:,.0f} train, "
                  f"{cases[kind + '.eval']['images_per_s']:,.0f} eval images/s", flush=True)
    result = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
              "machine": platform.machine(), "processor": processor_name() or platform.processor(),
              "vector_isa": vector_isa(), "jax": jax.__version__,
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "batch_size": batch, "matmul_peak_gflops": peak,
              "plan": plan.describe(), "repeat": repeat, "cases": cases, "date": time.strftime("%Y-%m-%d")}
    if "study" in sections:
        print(f"study: python -m equivar.run {' '.join(STUDY_COMMAND)} models=[{','.join(TORCH_BASELINE_MODELS)}] "
              "cold and warm, and python -m equivar.tools.torch_baseline (several minutes)", flush=True)
        pair = study_against_torch(notes)
        print(f"study: python -m equivar.run {' '.join(STUDY_COMMAND)} (the default models, several minutes)",
              flush=True)
        record = study()
        if "error" in record:
            notes.append(f"study skipped: python -m equivar.run {' '.join(STUDY_COMMAND)} failed: {record['error']}")
        else:
            record.pop("numbers")
            result["study"] = {"mnist_shift_test": record}
            if "torch" in pair:  # the whole default study in units of the PyTorch script's MLP + LeNet job
                record["ratio_to_torch"] = pair["torch"]["seconds"] / record["seconds"]
        if pair:
            result["study_vs_torch"] = pair
    result["notes"] = sorted(set(notes))
    return result


def _torch_pair(kind: str, fwd: int, batch: int, steps: int, eval_n: int, min_s: float, repeat: int,
                add: Callable[..., dict[str, Any]], notes: list[str]) -> None:
    """``kind``'s training and evaluation against PyTorch eager, ``repeat`` times interleaved, and the same
    step without its divergence guard."""
    samples: dict[str, list[float]] = {"train": [], "eval": [], "torch.train": [], "torch.eval": [],
                                       "unguarded": []}
    ref = None
    for _ in range(repeat):
        ref = torch_reference(kind, batch, steps, eval_n, min_s)
        samples["train"].append(equivar_train_ips(kind, 1, "auto", batch, steps, min_s))
        # the same step without its divergence guard: what the guard costs, measured interleaved
        samples["unguarded"].append(equivar_train_ips(kind, 1, "auto", batch, steps, min_s, guard=False))
        samples["eval"].append(equivar_eval_ips(kind, eval_n, min_s))
        if ref is not None:
            samples["torch.train"].append(ref["train"])
            samples["torch.eval"].append(ref["eval"])
    if ref is None:
        notes.append("torch not installed: no PyTorch reference (pip install torch)")
    for what, flops in (("train", 3 * fwd), ("eval", fwd)):
        ours = float(np.median(samples[what]))
        theirs = float(np.median(samples[f"torch.{what}"])) if ref else None
        case = add(f"{kind}.{what}", ours, flops, theirs)
        if ref and repeat > 1:
            ratios = np.array(samples[what]) / np.array(samples[f"torch.{what}"])
            case["ratio_to_torch_range"] = [float(ratios.min()), float(ratios.max())]
        if what == "train":
            unguarded = add(f"{kind}.train.no_guard", float(np.median(samples["unguarded"])), flops, theirs)
            unguarded["ratio_to_lenet_train"] = None
            unguarded["guarded_over_unguarded"] = float(np.median(
                np.array(samples["train"]) / np.array(samples["unguarded"])))
        if ref:
            torch_case = add(f"{kind}.{what}.torch", theirs, flops, theirs)
            torch_case["torch"] = f"{ref['version']} eager on {ref['device']}, Adam, {ref['threads']} threads, " \
                                  "python -m equivar.tools.torch_baseline --throughput"


def format_table(result: dict[str, Any]) -> str:
    cpu = f"{result.get('processor') or 'unknown processor'} ({result.get('vector_isa') or 'ISA unknown'}), "
    lines = [f"{cpu}{result['backend']} ({', '.join(result['devices'])}), jax {result['jax']}, float32 matmul peak "
             f"{result['matmul_peak_gflops']:.1f} GFLOP/s, batch {result['batch_size']}, "
             f"medians of {result['repeat']} interleaved repeats", "",
             "| case | images/s | GFLOP/s | % of peak | vs torch (range) | vs lenet.train |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, c in result["cases"].items():
        ratio = "" if c["ratio_to_torch"] is None else f"{c['ratio_to_torch']:.2f}×"
        if "ratio_to_torch_range" in c:
            ratio += " ({:.2f}–{:.2f})".format(*c["ratio_to_torch_range"])
        seq = f"{c['ratio_to_lenet_train']:.2f}×" if c.get("ratio_to_lenet_train") is not None else ""
        if c.get("ratio_to_lenet") is not None:  # a zoo row: against zoo.lenet in the same stage
            seq = f"{c['ratio_to_lenet']:.2f}× zoo.lenet"
        if "guarded_over_unguarded" in c:
            seq = f"guarded = {c['guarded_over_unguarded']:.2f}× this"
        lines.append(f"| {name} | {c['images_per_s']:,.0f} | {c['gflops']:.1f} | {c['pct_of_peak']:.0f} % | "
                     f"{ratio} | {seq} |")
    pair = result.get("study_vs_torch") or {}
    for name, record in result.get("study", {}).items():
        units = ""
        if "torch" in pair:  # units that survive a change of machine
            torch_run = pair["torch"]
            train = sum(m["train_seconds"] for m in record["models"].values())
            torch_train = sum(m["train_seconds"] for m in torch_run["models"].values())
            units = (f" ({record['seconds'] / torch_run['seconds']:.2f} times the PyTorch script's MLP + LeNet job "
                     f"of the same bench run, {torch_run['seconds']:.1f} s; its training {train:.0f} s, "
                     f"{train / torch_train:.2f} times the script's, {torch_train:.1f} s)")
        lines += ["", f"study.{name}: `{record['command']}` ({record['n_seeds']} seeds per model), end to end in "
                  f"a fresh process with a cold compilation cache: {record['seconds']:.0f} s{units}", "",
                  "| row | params | train s | eval s | clean acc | grid-mean acc | worst-shift acc | consistency |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for model, m in record["models"].items():
            cells = [_num(m["n_params"], "{:,}"), _num(m["train_seconds"], "{:.0f}"),
                     _num(m["eval_seconds"], "{:.0f}")] + [
                _num(m[what], "{:.4f}") + (f" ± {m[what + '_std']:.4f}" if m.get(what + "_std") is not None else "")
                for what in ("clean_accuracy", "grid_mean_accuracy", "worst_shift_accuracy", "consistency")]
            lines.append(f"| study.{name}.{model} | " + " | ".join(cells) + " |")
    if pair:
        lines += _pair_table(pair)
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


def _pair_table(pair: dict[str, Any]) -> list[str]:
    """The equivar CLI (cold and warm compilation cache) against the plain PyTorch script, end to end and per
    model; ratios are PyTorch's seconds over equivar's (above 1: equivar is faster)."""
    cold = pair["cold"]
    lines = ["", f"study.mnist_mlp_lenet: `{cold['command']}` ({cold['n_seeds']} seeds per model), each run in a "
             "fresh process: with a cold compilation cache, then again with the warm cache"
             + (f", against `{pair['torch']['command']}` (PyTorch {pair['torch']['torch']}, "
                f"{pair['torch']['threads']} threads; it spent {pair['torch']['load_seconds']:.0f} s reading MNIST)"
                if "torch" in pair else "")
             + (f"; warm metrics identical to cold: {'yes' if pair['warm_metrics_identical'] else 'NO'}"
                if "warm_metrics_identical" in pair else ""), "",
             "| row | end to end s | vs torch | train s | train vs torch | eval s | eval vs torch | clean acc | "
             "consistency |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for run_name in ("cold", "warm", "torch"):
        record = pair.get(run_name)
        if record is None:
            continue
        ratio = 1.0 if run_name == "torch" else record.get("ratio_to_torch")
        lines.append(f"| study.mnist_mlp_lenet.{run_name} | {record['seconds']:.1f} | {_num(ratio, '{:.2f}×')} | "
                     "| | | | | |")
        for model, m in record["models"].items():
            own = run_name == "torch"
            lines.append(
                f"| study.mnist_mlp_lenet.{run_name}.{model} | | | {_num(m['train_seconds'], '{:.1f}')} | "
                f"{'1.00×' if own else _num(m.get('train_ratio_to_torch'), '{:.2f}×')} | "
                f"{_num(m['eval_seconds'], '{:.1f}')} | "
                f"{'1.00×' if own else _num(m.get('eval_ratio_to_torch'), '{:.2f}×')} | "
                f"{_num(m['clean_accuracy'], '{:.4f}')} ± {m['clean_accuracy_std']:.4f} | "
                f"{_num(m['consistency'], '{:.4f}')} ± {m['consistency_std']:.4f} |")
    return lines


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


def main(argv: list[str] | None = None) -> None:
    set_up_process()
    parser = argparse.ArgumentParser(prog="python -m equivar.tools.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter timings (noisier)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 4, 8],
                        help="seed counts of the seeds section's N-seed rows (default: 1 4 8)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="interleaved equivar/torch repeats; the table shows medians and the ratio range")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), metavar="SECTION",
                        help="sections to run (default: all): torch (lenet and mlp against PyTorch), steps "
                             "(scanned steps), seeds (N-seed packings), zoo (every zoo model any experiment "
                             "trains, the techniques included, against LeNet), study (the "
                             "real-MNIST shift test end to end, several minutes)")
    parser.add_argument("--zoo", nargs="+", metavar="MODEL",
                        help="the zoo section's models (default: every one; lenet, the unit, always)")
    parser.add_argument("--out", default="bench.json", help="where to write the results (JSON)")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, seeds=tuple(args.seeds), repeat=args.repeat, sections=tuple(args.only),
                 zoo=None if args.zoo is None else tuple(args.zoo))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(format_table(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
