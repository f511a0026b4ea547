"""pooling_invariance: how much invariance each pooling buys, as a function of shift and pooling size.

Features are a circular convolution + ReLU (``pooling_invariance.channels`` maps, kernel ``kernel``; one
random initialisation per seed, the same for every pooling) on the test inputs. Each pooling ``g`` is applied
to them and its invariance error ``||g(T_s x) - g(x)|| / ||g(x)||`` is measured for circular shifts
``s = 0..max`` along every axis: local max and mean pooling, Zhang's (2019) blur pooling (max with stride 1,
binomial blur, subsample) and Chaman & Dokmanic's (2021) adaptive polyphase sampling (APS; max with stride 1,
then the largest-norm polyphase component), each with window = stride = ``p`` for every ``p`` in ``sizes``,
and global average and global max pooling. Everything is circular, so global pooling is exactly invariant.

Expected: errors grow with the shift and saturate; larger ``p`` rise more slowly (invariance to larger
displacements); blur pooling is smoother than max pooling; APS output is a shifted copy of itself, so it is
*equivariant* (error 0 after undoing the shift, reported as ``aps_shift_aligned``) though not invariant;
global pooling stays at 0.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from equivar.config import RunConfig
from equivar.options import check, option
from equivar.data import load_dataset
from equivar.equivariance import relative_error
from equivar.errors import ConfigError
from equivar.layers import Blur, GlobalPool, PolyphaseDownsample, Pool
from equivar.metrics import mean_std
from equivar.plot import plot_pooling_invariance
from equivar.text import mean_std_text, seeds_phrase
from equivar.trained import TrainedModel
from equivar.transforms import shift
from equivar.experiments.common import execution_plan, obtain, publish, run_record

log = logging.getLogger(__name__)

Pooling = Callable[[jax.Array], jax.Array]


def poolings(rank: int, sizes: list[int]) -> dict[str, dict[str, Any]]:
    """Name -> {"fn", "type", "size"}; every local pooling has window = stride = size, circular windows."""
    out: dict[str, dict[str, Any]] = {}
    for p in sizes:
        window = (p,) * rank
        dense_max = Pool("max", window, (1,) * rank, "CIRCULAR")
        out[f"max{p}"] = {"fn": Pool("max", window, window), "type": "max", "size": p}
        out[f"mean{p}"] = {"fn": Pool("mean", window, window), "type": "mean", "size": p}
        blur = Blur(3, window, "CIRCULAR")
        out[f"blur{p}"] = {"fn": lambda x, m=dense_max, b=blur: b(m(x)), "type": "blur", "size": p}
        aps = PolyphaseDownsample(window)
        out[f"aps{p}"] = {"fn": lambda x, m=dense_max, a=aps: a(m(x)), "type": "aps", "size": p}
    out["global_mean"] = {"fn": GlobalPool("mean"), "type": "global mean", "size": None}
    out["global_max"] = {"fn": GlobalPool("max"), "type": "global max", "size": None}
    return out


def _aligned_error(pooled_shifted: jax.Array, pooled: jax.Array) -> jax.Array:
    """The smallest error over every circular shift of the pooled map (how far from equivariant it is)."""
    spatial = pooled.shape[1:-1]
    grids = np.stack(np.meshgrid(*[np.arange(n) for n in spatial], indexing="ij"), -1).reshape(-1, len(spatial))
    errs = jnp.stack([relative_error(pooled_shifted, shift(pooled, g), pooled) for g in grids])
    return errs.min(0)


@dataclasses.dataclass
class Options:
    """``pooling_invariance.*``."""

    sizes: list[int] = option([2, 4, 8], "pooling sizes (window = stride)", minimum=1)
    max_shift: int = option(12, "circular shifts 0..max_shift along every axis", minimum=1)
    channels: int = option(16, "feature maps of the circular conv + ReLU", minimum=1)
    kernel: int = option(5, "kernel size of that conv along every axis", minimum=1)
    n_examples: int = option(256, "test inputs", minimum=1)
    mode: str = option("roll", "how inputs are shifted: roll, or fourier for sub-pixel steps (both circular)",
                       choices=("roll", "fourier"))
    step: float = option(1.0, "spacing of the shifts 0..max_shift (fractional needs mode=fourier)", minimum=1e-3)
    features: str = option("random", "the conv's weights: random (a fresh initialisation per seed) or trained "
                                     "(a circular conv + ReLU + global max pool + linear net trained on the "
                                     "dataset with train.*; with load_from, the one saved there)",
                           choices=("random", "trained"))


def feature_convs(config: RunConfig, data, out_dir: Path, opts: Options
                  ) -> tuple[list[nnx.Conv], list[TrainedModel]]:
    """One circular convolution per seed: freshly initialised, or the first layer of a trained (or loaded)
    circular conv + ReLU + global max pool + linear classifier."""
    if opts.features == "random":
        return [nnx.Conv(data.input_shape[-1], opts.channels, (opts.kernel,) * data.rank, padding="CIRCULAR",
                         rngs=nnx.Rngs(config.seed + i)) for i in range(config.n_seeds)], []
    layers = [{"type": "conv", "features": opts.channels, "kernel": opts.kernel, "padding": "CIRCULAR"},
              {"type": "activation", "fn": "relu"}, {"type": "global_pool", "kind": "max"}]
    model = obtain(config, data, out_dir, "pooling_features", "equivar.models.Stack", {"layers": layers},
                   execution_plan(config), where="pooling_invariance.features")
    return [m.conv1 for m in model.modules()], [model]  # the healthy seeds only


def run(config: RunConfig, out_dir: Path) -> dict[str, Any]:
    opts = check(Options, config.raw.get("pooling_invariance"), "pooling_invariance")
    data = load_dataset(config.dataset.loader, config.dataset.options)
    spatial = data.input_shape[:-1]
    sizes = opts.sizes
    too_big = [p for p in sizes if p > min(spatial)]
    if too_big:
        raise ConfigError(f"pooling_invariance.sizes {too_big} exceed the input size {spatial}")
    max_shift = opts.max_shift
    if max_shift >= min(spatial):
        raise ConfigError(f"pooling_invariance.max_shift={max_shift} must be smaller than the input {spatial}")
    channels, kernel, n_examples = opts.channels, opts.kernel, opts.n_examples
    x = jnp.asarray(data.x_test[:n_examples])
    if opts.mode == "roll" and not float(opts.step).is_integer():
        raise ConfigError(f"pooling_invariance.step={opts.step} is fractional: use pooling_invariance.mode=fourier")
    values = [i * opts.step for i in range(int(round(max_shift / opts.step)) + 1)]
    shifts = [(v,) * data.rank for v in values]
    pools = poolings(data.rank, sizes)

    per_seed: dict[str, list[list[float]]] = {name: [] for name in pools}
    aligned: dict[str, list[list[float]]] = {name: [] for name in pools if pools[name]["type"] == "aps"}
    convs, measured = feature_convs(config, data, out_dir, opts)
    for conv in convs:
        features = jax.jit(lambda v, c=conv: jax.nn.relu(c(v)))
        base = features(x)
        moved = [features(shift(x, s, opts.mode)) for s in shifts]
        for name, p in pools.items():
            fn = jax.jit(p["fn"])
            pooled = fn(base)
            pooled_moved = [fn(m) for m in moved]
            per_seed[name].append([float(relative_error(pm, pooled, pooled).mean()) for pm in pooled_moved])
            if name in aligned:
                aligned[name].append([float(_aligned_error(pm, pooled).mean()) for pm in pooled_moved])
    results = {}
    for name, p in pools.items() if convs else ():
        results[name] = {"type": p["type"], "size": p["size"], "error": mean_std(np.asarray(per_seed[name]))}
        if name in aligned:
            results[name]["shift_aligned_error"] = mean_std(np.asarray(aligned[name]))
    metrics = run_record("pooling_invariance", config, data.summary()) | {
        "features": {"channels": channels, "kernel": kernel, "padding": "CIRCULAR", "activation": "relu",
                     "weights": "random (one initialisation per seed)" if opts.features == "random" else
                     "trained (circular conv + ReLU + global max pool + linear, one model per seed)"},
        "n_examples": int(x.shape[0]),
        "shift_mode": opts.mode,
        "shifts": [int(s[0]) if float(s[0]).is_integer() else float(s[0]) for s in shifts],
        "sizes": sizes,
        "poolings": results,
    }
    return publish(metrics, out_dir, plot_pooling_invariance, summary(metrics), measured)


def summary(metrics: dict[str, Any]) -> str:
    shifts = metrics["shifts"]
    picks = sorted({0.5, 1, 2, 4, shifts[-1]} & set(shifts))
    lines = [f"pooling_invariance on {metrics['dataset']['name']} ({seeds_phrase(metrics['n_seeds'])}, "
             f"{metrics['n_examples']} test inputs, circular shifts along every axis): invariance error", "",
             "| pooling | " + " | ".join(f"shift {s}" for s in picks) + " |",
             "|---|" + "---:|" * len(picks)]
    for name, r in metrics["poolings"].items():
        cells = [mean_std_text({"mean": r['error']['mean'][shifts.index(s)], "std": r['error']['std'][shifts.index(s)], "n": r['error'].get('n', 2)}, 3) for s in picks]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
