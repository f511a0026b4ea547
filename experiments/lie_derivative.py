"""lie_derivative: how far each trained model is from invariance under continuous (sub-pixel) transformations.

For every model and seed (trained here, or loaded with ``load_from``), on ``lie_derivative.n_examples`` test
inputs: the Lie derivative of the logits and of the softmax probabilities under translation along every
spatial axis (and, in 2D, rotation and scaling about the centre), computed exactly with ``jax.jvp``
(``equivar.lie``). The local equivariance error (LEE) is reported two ways, each mean ± std over seeds:
``mse``, the mean over inputs of the squared norm of the derivative (Gruver et al. 2023, their eq.), and
``mean_abs``, the mean absolute entry (what their code averages). Units: per pixel of translation, per radian
of rotation, per unit of log-scale.

Layer by layer (translations, for models whose layers form an exact chain): each layer's own Lie derivative,
pushed through the rest of the network, is its contribution to the output's derivative; the contributions sum
to it exactly. Beside them: clean accuracy and the integer-shift consistency over the ``shift.max`` roll grid
(for the scatter of LEE against consistency), and the predicted class's probability of a few inputs as they
slide by sub-pixel Fourier shifts (the saw-tooth of aliasing).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from equivar.anatomy import NoFixedField
from equivar.config import RunConfig
from equivar.data import load_dataset
from equivar.equivariance import layer_geometry_of
from equivar.evaluate import ShiftEvaluator
from equivar.experiments.common import check_before_data, execution_plan, obtain, publish, run_record, spec_variants
from equivar.introspect import trace_layers
from equivar.lie import generators, layer_contributions, lie_derivative
from equivar.metrics import accuracy, consistency, mean_std
from equivar.options import check, option
from equivar.plot import plot_lie_derivative
from equivar.text import mean_std_text, seeds_phrase
from equivar.transforms import fourier_shift, shift_grid

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Options:
    """``lie_derivative.*``."""

    n_examples: int = option(256, "test inputs the derivatives are averaged over", minimum=1)
    batch: int = option(64, "inputs per jitted call (memory)", minimum=1)
    per_layer: bool = option(True, "also split the translation derivative into per-layer contributions")
    sawtooth_inputs: int = option(4, "test inputs whose predicted probability is traced over sub-pixel shifts",
                                  minimum=0)
    sawtooth_max: float = option(2.0, "Fourier shifts 0..sawtooth_max pixels for that trace", minimum=0.0)
    sawtooth_step: float = option(0.05, "step of that trace (pixels)", minimum=1e-3)


def _batched(fn, x: jax.Array, size: int) -> Any:
    """``fn`` over ``x`` in chunks of ``size``, outputs concatenated on the leading axis (pytrees too)."""
    parts = [fn(x[i:i + size]) for i in range(0, x.shape[0], size)]
    return jax.tree.map(lambda *a: jnp.concatenate(a), *parts)


def _lee(d: jax.Array) -> dict[str, float]:
    """Mean squared norm over the output axis and mean absolute entry of a derivative ``(N, K)``."""
    return {"mse": float(jnp.mean(jnp.sum(jnp.square(d), axis=-1))), "mean_abs": float(jnp.mean(jnp.abs(d)))}


def measure_seed(module, x: jax.Array, gens: tuple[str, ...], per_layer: bool, batch: int,
                 input_shape: tuple[int, ...]) -> dict[str, Any]:
    """LEE of one model (one seed) for every generator, and per-layer contributions for translations."""
    out: dict[str, Any] = {"lee": {}}

    def derivatives(v, gen):
        logits = module(v)
        d_logits = lie_derivative(module, v, gen)
        d_probs = jax.jvp(jax.nn.softmax, (logits,), (d_logits,))[1]
        return d_logits, d_probs

    for gen in gens:
        d_logits, d_probs = _batched(jax.jit(lambda v, g=gen: derivatives(v, g)), x, batch)
        out["lee"][gen] = {"logits": _lee(d_logits), "probs": _lee(d_probs)}
    if not per_layer:
        return out
    try:
        names, jumps, _ = layer_geometry_of(module, input_shape)
        trace = trace_layers(module, input_shape)
        if not trace.chained:
            raise NoFixedField(trace.why_not_chained)
    except NoFixedField as err:
        out["per_layer_unavailable"] = str(err)
        return out
    rank = len(input_shape) - 1
    out["layers"] = {}
    for gen in gens:
        if not gen.startswith("translate_"):
            continue
        axis = rank - 1 if gen == "translate_x" else 0

        def contributions(v, axis=axis):
            total, parts = layer_contributions(trace.layers, [jumps[n] for n in names], v, axis)
            logits = module(v)
            to_probs = lambda d: jax.jvp(jax.nn.softmax, (logits,), (d,))[1]  # noqa: E731
            return total, parts, {k: to_probs(p) for k, p in parts.items()}

        total, parts, parts_probs = _batched(jax.jit(contributions), x, batch)
        residual = float(jnp.max(jnp.abs(sum(parts.values()) - total)) / jnp.maximum(jnp.max(jnp.abs(total)), 1e-30))
        order = [n for n, _ in trace.layers]  # call order (pytree maps sort dict keys)
        out["layers"][gen] = {"logits": {k: _lee(parts[k])["mse"] for k in order},
                              "probs": {k: _lee(parts_probs[k])["mse"] for k in order},
                              "sum_residual": residual}
    return out


def sawtooth(module, x: jax.Array, shifts: np.ndarray, axis: int) -> dict[str, Any]:
    """The probability of each input's clean predicted class under Fourier shifts along ``axis``."""
    rank = x.ndim - 2
    clean = jnp.argmax(module(x), -1)

    def probs_at(t):
        offset = jnp.zeros((rank,), jnp.float32).at[axis].set(t)
        p = jax.nn.softmax(module(fourier_shift(x, offset)))
        return jnp.take_along_axis(p, clean[:, None], axis=1)[:, 0]

    values = jax.jit(jax.vmap(probs_at))(jnp.asarray(shifts, jnp.float32))  # (shifts, inputs)
    return {"shifts": [float(s) for s in shifts], "class": clean.tolist(), "probability": np.asarray(values).T.tolist()}


def run(config: RunConfig, out_dir: Path) -> dict[str, Any]:
    opts = check(Options, config.raw.get("lie_derivative"), "lie_derivative")
    check_before_data(config, spec_variants(config.models))
    data = load_dataset(config.dataset.loader, config.dataset.options)
    gens = generators(data.rank)
    plan = execution_plan(config)
    x = jnp.asarray(data.x_test[:opts.n_examples])
    grid = shift_grid(int(min(config.shift.max, min(data.input_shape[:-1]))), data.rank)
    x_grid, y_grid = data.x_test[:config.shift_subset or len(data.y_test)], \
        data.y_test[:config.shift_subset or len(data.y_test)]
    saw_shifts = np.arange(0, opts.sawtooth_max + 1e-9, opts.sawtooth_step)
    results, measured = {}, []
    for spec in config.models:
        model = obtain(config, data, out_dir, spec.name, spec.target, spec.options, plan)
        measured.append(model)
        record: dict[str, Any] = {"target": model.target, "source": model.source, "status": model.status,
                                  "n_params": model.n_params}
        if not model.ok.any():
            results[spec.name] = record
            continue
        evaluator = ShiftEvaluator(model.graphdef, "roll", plan)
        variables = model.variables()
        clean = accuracy(evaluator.predict(variables, data.x_test, np.zeros((1, data.rank), np.int32))[:, 0],
                         data.y_test)
        grid_preds = evaluator.predict(variables, x_grid, grid)
        cons = np.array([consistency(p, data.n_classes) for p in grid_preds])
        per_seed = [measure_seed(m, x, gens, opts.per_layer, opts.batch, data.input_shape) for m in model.modules()]
        record |= {
            "clean_accuracy": mean_std(clean),
            "consistency": mean_std(cons),
            "grid_mean_accuracy": mean_std(accuracy(grid_preds, y_grid).mean(axis=1)),
            "lee": {g: {out: {k: mean_std([s["lee"][g][out][k] for s in per_seed]) for k in ("mse", "mean_abs")}
                        for out in ("logits", "probs")} for g in gens},
            "per_seed": {"seeds": model.healthy_seeds(), "lee": [s["lee"] for s in per_seed],
                         "consistency": cons.tolist(), "clean_accuracy": clean.tolist()},
        }
        if "layers" in per_seed[0]:
            record["layers"] = {g: {out: {layer: mean_std([s["layers"][g][out][layer] for s in per_seed])
                                          for layer in per_seed[0]["layers"][g][out]} for out in ("logits", "probs")}
                                for g in per_seed[0]["layers"]}
            record["layer_sum_residual"] = max(s["layers"][g]["sum_residual"] for s in per_seed for g in s["layers"])
        elif "per_layer_unavailable" in per_seed[0]:
            record["per_layer_unavailable"] = per_seed[0]["per_layer_unavailable"]
        if opts.sawtooth_inputs:
            record["sawtooth"] = sawtooth(model.modules()[0], x[:opts.sawtooth_inputs], saw_shifts, data.rank - 1)
        results[spec.name] = record
        log.info("%s: LEE (probs, %s) %s", spec.name, gens[-1 if data.rank == 1 else 1],
                 record["lee"][gens[-1 if data.rank == 1 else 1]]["probs"]["mse"])
    metrics = run_record("lie_derivative", config, data.summary(), measured) | {
        "generators": list(gens),
        "n_examples": int(x.shape[0]),
        "units": {"translate_x": "per pixel", "translate_y": "per pixel", "rotate": "per radian",
                  "scale": "per unit log-scale"},
        "consistency_grid": {"mode": "roll", "max": int(np.max(np.abs(grid))) if grid.size else 0,
                             "n_examples": int(len(y_grid))},
        "models": results,
    }
    return publish(metrics, out_dir, plot_lie_derivative, summary(metrics), measured)


def summary(metrics: dict[str, Any]) -> str:
    gens = metrics["generators"]
    lines = [f"lie_derivative on {metrics['dataset']['name']} ({seeds_phrase(metrics['n_seeds'])}, "
             f"{metrics['n_examples']} test inputs): local equivariance error of the softmax output, mean squared "
             "norm of the Lie derivative (translation per pixel; rotation per radian; scale per log-unit)", "",
             "| model | clean acc | consistency (integer rolls) | " + " | ".join(f"LEE {g}" for g in gens) +
             " | largest layer contribution (translate) |",
             "|---|---:|---:|" + "---:|" * len(gens) + "---|"]
    for name, m in metrics["models"].items():
        if "lee" not in m:
            lines.append(f"| {name} | every seed diverged |" + " |" * (len(gens) + 2))
            continue
        lee = " | ".join(mean_std_text(m["lee"][g]["probs"]["mse"], 3) for g in gens)
        top = "—"
        if "layers" in m:
            g = next(iter(m["layers"]))
            parts = m["layers"][g]["probs"]
            layer = max(parts, key=lambda k: parts[k]["mean"])
            top = f"{layer} ({parts[layer]['mean']:.3g})"
        lines.append(f"| {name} | {mean_std_text(m['clean_accuracy'])} | {mean_std_text(m['consistency'])} | "
                     f"{lee} | {top} |")
    return "\n".join(lines)
