"""Benchmarks (not tests): ``python -m equivar.bench [--quick]``.

Measures, in one process, training throughput of each zoo model with its seeds packed as a Python loop or
as one ``vmap``-ed step, for several seed counts, on random data of the requested input shape. Prints a
table and writes ``bench.json`` in the working directory. Ratios are taken within this one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from equivar.models import build_model
from equivar.strategy import plan_execution
from equivar.train import SeedTrainer, TrainSpec, init_states, make_optimizer, seed_keys


def time_training(kind: str, input_shape: tuple[int, ...], n_seeds: int, packing: str, *, batch_size: int,
                  steps: int, options: dict[str, Any] | None = None) -> float:
    """Images per second summed over seeds, for ``steps`` training steps per seed after a warm-up."""
    rng = np.random.default_rng(0)
    n = steps * batch_size
    x = jnp.asarray(rng.standard_normal((n,) + input_shape, dtype=np.float32))
    y = jnp.asarray(rng.integers(0, 10, n).astype(np.int32))
    spec = TrainSpec(epochs=1, batch_size=batch_size)
    tx = make_optimizer(spec)
    keys = seed_keys(0, n_seeds)
    build = lambda rngs: build_model(kind, input_shape, 10, options or {}, rngs)
    graphdef, states = init_states(build, tx, keys)
    trainer = SeedTrainer(graphdef, tx, plan_execution(packing))
    warm, _ = trainer.fit(states, x, y, keys, spec, label=f"warm-up {kind}")  # compiles
    jax.block_until_ready(warm)
    start = time.perf_counter()
    out, _ = trainer.fit(states, x, y, keys, spec, label=f"{kind} x{n_seeds} {packing}")
    jax.block_until_ready(out)
    return n_seeds * n / (time.perf_counter() - start)


def seed_packing_table(shapes: dict[str, tuple[int, ...]], seeds: list[int], kinds: list[str],
                       batch_size: int, steps: int) -> list[dict[str, Any]]:
    rows = []
    for data_name, shape in shapes.items():
        for kind in kinds:
            single = None
            for n_seeds in seeds:
                row = {"data": data_name, "model": kind, "n_seeds": n_seeds}
                for packing in ("loop", "vmap"):
                    row[f"{packing}_img_per_s"] = time_training(kind, shape, n_seeds, packing,
                                                                batch_size=batch_size, steps=steps)
                if n_seeds == 1:
                    single = max(row["loop_img_per_s"], row["vmap_img_per_s"])
                row["vmap_over_loop"] = row["vmap_img_per_s"] / row["loop_img_per_s"]
                row["best_over_n_x_single"] = max(row["loop_img_per_s"], row["vmap_img_per_s"]) / single
                rows.append(row)
                print(f"{data_name:8s} {kind:8s} seeds={n_seeds:2d} loop={row['loop_img_per_s']:9.0f} "
                      f"vmap={row['vmap_img_per_s']:9.0f} img/s  vmap/loop={row['vmap_over_loop']:.2f}  "
                      f"best/(N x single)={row['best_over_n_x_single']:.2f}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m equivar.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer steps and seed counts")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--models", nargs="+", default=["mlp", "lenet", "cnn_gap"])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default="bench.json")
    args = parser.parse_args(argv)
    seeds = args.seeds or ([1, 4] if args.quick else [1, 4, 8])
    steps = args.steps or (10 if args.quick else 40)
    shapes = {"mnist1d": (40, 1), "mnist": (28, 28, 1)}
    print(f"backend {jax.default_backend()}, devices {jax.devices()}")
    rows = seed_packing_table(shapes, seeds, args.models, args.batch_size, steps)
    result = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
              "machine": platform.machine(), "jax": jax.__version__, "batch_size": args.batch_size,
              "steps": steps, "seed_packing": rows}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
