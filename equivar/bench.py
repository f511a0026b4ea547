"""Benchmarks (not tests): ``python -m equivar.bench [--quick] [--only SECTION ...]``.

In one process: the float32 matmul peak of this device, equivar's own training step and evaluation for
``lenet`` and ``mlp`` on MNIST-shaped data against a PyTorch eager reference of the same model and optimizer
(Adam with ``fused=True``; skipped with a note when torch is not installed; section ``torch``), scanned steps
(``steps``), N-seed training for N = 1, 4, 8 with each seed packing and the shift-grid evaluation (``seeds``),
every default zoo model's training and evaluation throughput (``zoo``), and the whole real-MNIST study a user
waits for, ``python -m equivar.run experiment=shift_test dataset=mnist``, end to end in a fresh process with a
cold compilation cache, split per model (``study``; skipped with a note when MNIST is not in
``$TFDS_DATA_DIR``). Prints tables and writes ``bench.json`` in the working directory: per case
(``lenet.train``, ``mlp.eval``, ``lenet.seeds8.vmap``, ``zoo.local.train``, ...) the keys
``images_per_s``, ``gflops``, ``pct_of_peak`` and ``ratio_to_torch``; per study row (``study.mnist_shift_test``,
``study.mnist_shift_test.local``, ...) ``seconds`` and the accuracy it reached. Ratios are taken within this one run;
the equivar/torch pairs are repeated ``--repeat`` times, interleaved, and reported as medians with the range
of the per-repeat ratios (``ratio_to_torch_range``), because a shared machine's load drifts. Seed-packing
and steps-per-call cases carry ``ratio_to_lenet_train``: throughput over the single-seed default.

FLOPs are counted analytically from the layers (2 per multiply-add; a training step counts 3x the forward
pass: forward, input gradients and weight gradients), so ``gflops`` is useful work, not what XLA executed.
"""

from __future__ import annotations

import argparse
import dataclasses
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
from equivar.introspect import layer_outputs
from equivar.layers import LocallyConnected, conv_geometry
from equivar.models import MLP, LayerStack, LeNet, build_model
from equivar.strategy import plan_execution
from equivar.train import SeedTrainer, TrainOptions, init_states, make_optimizer, seed_keys
from equivar.transforms import shift_grid

BENCH_MODELS = {"lenet": LeNet, "mlp": MLP}  # the bench's rows, by the zoo's names
ZOO_ROWS = ("mlp", "lenet", "local", "cnn_aps", "cnn_gap")  # the zoo section: the default models and cnn_gap
SECTIONS = ("torch", "steps", "seeds", "zoo", "study")
STUDY_COMMAND = ("experiment=shift_test", "dataset=mnist")  # python -m equivar.run ... (the real-MNIST study)

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


def zoo_entry(name: str) -> tuple[str, dict[str, Any]]:
    """A zoo model's ``_target_`` and options, as ``conf/model/NAME.yaml`` gives them."""
    from omegaconf import OmegaConf

    from equivar.config import as_dict
    from equivar.run import config_dir

    entry = as_dict(OmegaConf.load(Path(config_dir()) / "model" / f"{name}.yaml"))
    return str(entry.pop("_target_")), entry


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
    """The same model and Adam in PyTorch eager (fused Adam, channels-first): train and eval images/s."""
    try:
        import torch
        from torch import nn
    except ImportError:
        return None
    torch.manual_seed(0)
    device = "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if kind == "lenet":
        model = nn.Sequential(nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 32, 5), nn.ReLU(),
                              nn.MaxPool2d(2), nn.Flatten(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    else:
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                              nn.Linear(512, 10))
    model = model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    n = steps * batch_size
    x = torch.rand(n, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (n,), device=device)
    loss_fn = nn.CrossEntropyLoss()

    def epoch() -> None:
        perm = torch.randperm(n, device=device)
        for t in range(steps):
            idx = perm[t * batch_size:(t + 1) * batch_size]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
        sync()

    train = n / _timed(epoch, min_seconds)
    xe = torch.rand(eval_examples, 1, 28, 28, device=device)

    def evaluate() -> None:
        with torch.inference_mode():
            for i in range(0, eval_examples, 1024):
                model(xe[i:i + 1024]).argmax(-1)
        sync()

    return {"train": train, "eval": eval_examples / _timed(evaluate, min_seconds),
            "version": torch.__version__, "threads": torch.get_num_threads(), "device": device}


def study(command: tuple[str, ...] = STUDY_COMMAND) -> dict[str, Any]:
    """Runs ``python -m equivar.run COMMAND`` in a fresh process with a cold compilation cache, as a user waits
    for it; returns its wall time and, per model, training and evaluation seconds and accuracies (None when
    the run fails, e.g. no MNIST in ``$TFDS_DATA_DIR``: ``{"error": reason}``)."""
    with tempfile.TemporaryDirectory(prefix="equivar-study-") as tmp:
        out = Path(tmp) / "run"
        env = {**os.environ, "EQUIVAR_JAX_CACHE": str(Path(tmp) / "jax-cache")}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "equivar.run", *command, f"hydra.run.dir={out}"], env=env,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0 or not (out / "metrics.json").exists():
            lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines() if ln.strip()]
            return {"error": lines[-1] if lines else f"exit code {proc.returncode}"}
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
            "n_seeds": len(metrics.get("seeds", [])), "models": models}


def run(quick: bool = False, seeds: tuple[int, ...] = (1, 4, 8), repeat: int = 1,
        sections: tuple[str, ...] = SECTIONS) -> dict[str, Any]:
    """The cases of ``sections``; the equivar-vs-torch pairs are measured ``repeat`` times, interleaved, and
    reported as the median with the range of the per-repeat ratios (the machine's load drifts; one pair is one
    sample)."""
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
    if "zoo" in sections:  # every default model through the same paths, so their costs compare
        for name in ZOO_ROWS:
            kind = f"zoo.{name}"
            fwd = forward_flops(_builder(kind)(nnx.Rngs(0)), MNIST_SHAPE)
            add(f"{kind}.train", equivar_train_ips(kind, 1, "auto", batch, steps, min_s), 3 * fwd, None)
            add(f"{kind}.eval", equivar_eval_ips(kind, eval_n, min_s), fwd, None)
            print(f"{kind}: {cases[kind + '.train']['images_per_s']:,.0f} train, "
                  f"{cases[kind + '.eval']['images_per_s']:,.0f} eval images/s", flush=True)
    result = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
              "machine": platform.machine(), "processor": platform.processor(), "jax": jax.__version__,
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "batch_size": batch, "matmul_peak_gflops": peak,
              "plan": plan.describe(), "repeat": repeat, "cases": cases, "date": time.strftime("%Y-%m-%d")}
    if "study" in sections:
        print(f"study: python -m equivar.run {' '.join(STUDY_COMMAND)} (several minutes)", flush=True)
        record = study()
        if "error" in record:
            notes.append(f"study skipped: python -m equivar.run {' '.join(STUDY_COMMAND)} failed: {record['error']}")
        else:
            result["study"] = {"mnist_shift_test": record}
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
            torch_case["torch"] = f"{ref['version']} eager on {ref['device']}, Adam(fused=True), " \
                                  f"{ref['threads']} threads"


def format_table(result: dict[str, Any]) -> str:
    lines = [f"{result['backend']} ({', '.join(result['devices'])}), jax {result['jax']}, float32 matmul peak "
             f"{result['matmul_peak_gflops']:.1f} GFLOP/s, batch {result['batch_size']}, "
             f"medians of {result['repeat']} interleaved repeats", "",
             "| case | images/s | GFLOP/s | % of peak | vs torch (range) | vs lenet.train |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, c in result["cases"].items():
        ratio = "" if c["ratio_to_torch"] is None else f"{c['ratio_to_torch']:.2f}×"
        if "ratio_to_torch_range" in c:
            ratio += " ({:.2f}–{:.2f})".format(*c["ratio_to_torch_range"])
        seq = f"{c['ratio_to_lenet_train']:.2f}×" if c.get("ratio_to_lenet_train") is not None else ""
        if "guarded_over_unguarded" in c:
            seq = f"guarded = {c['guarded_over_unguarded']:.2f}× this"
        lines.append(f"| {name} | {c['images_per_s']:,.0f} | {c['gflops']:.1f} | {c['pct_of_peak']:.0f} % | "
                     f"{ratio} | {seq} |")
    for name, record in result.get("study", {}).items():
        lines += ["", f"study.{name}: `{record['command']}` ({record['n_seeds']} seeds per model), end to end in "
                  f"a fresh process with a cold compilation cache: {record['seconds']:.0f} s", "",
                  "| row | params | train s | eval s | clean acc | grid-mean acc | worst-shift acc | consistency |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for model, m in record["models"].items():
            cells = [_num(m["n_params"], "{:,}"), _num(m["train_seconds"], "{:.0f}"),
                     _num(m["eval_seconds"], "{:.0f}")] + [
                _num(m[what], "{:.4f}") + (f" ± {m[what + '_std']:.4f}" if m.get(what + "_std") is not None else "")
                for what in ("clean_accuracy", "grid_mean_accuracy", "worst_shift_accuracy", "consistency")]
            lines.append(f"| study.{name}.{model} | " + " | ".join(cells) + " |")
    lines += [f"note: {n}" for n in result["notes"]]
    return "\n".join(lines)


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m equivar.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter timings (noisier)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 4, 8],
                        help="seed counts of the seeds section's N-seed rows (default: 1 4 8)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="interleaved equivar/torch repeats; the table shows medians and the ratio range")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), metavar="SECTION",
                        help="sections to run (default: all): torch (lenet and mlp against PyTorch), steps "
                             "(scanned steps), seeds (N-seed packings), zoo (every default model), study (the "
                             "real-MNIST shift test end to end, several minutes)")
    parser.add_argument("--out", default="bench.json", help="where to write the results (JSON)")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, seeds=tuple(args.seeds), repeat=args.repeat, sections=tuple(args.only))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(format_table(result))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
