"""feature_pooling: the lecture's pooling across feature maps buys invariance to rotations.

Two variants of ``group_pool`` (``zoo.group_pool`` options) are trained on upright data: filters tied to
their rotated copies with a max over the copies (``pooled``), and the same net without that cross-map max
(``unpooled``). On 2D data the transforms are rotations by 0/90/180/270 degrees, on 1D data (MNIST-1D) the
identity and reversal. Each variant is tested on every transformed copy of the test set: accuracy, the
relative change of its logits ``||f(Rx) - f(x)|| / ||f(x)||``, and the share of test inputs predicted the
same under every transform.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from equivar.config import RunConfig
from equivar.data import load_dataset
from equivar.equivariance import relative_error
from equivar.errors import ConfigError
from equivar.metrics import accuracy, mean_std
from equivar.plot import plot_feature_pooling
from equivar.text import mean_std_text, seeds_phrase
from equivar.experiments.common import check_before_data, execution_plan, measurable, obtain, publish, run_record
from equivar.train import make_logits

log = logging.getLogger(__name__)


def group_transforms(rank: int) -> dict[str, Any]:
    if rank == 2:
        return {f"rot{90 * r}": (lambda x, r=r: jnp.rot90(x, r, axes=(1, 2))) for r in range(4)}
    if rank == 1:
        return {"identity": lambda x: x, "reversed": lambda x: jnp.flip(x, axis=1)}
    raise ConfigError(f"feature_pooling needs 1D or 2D data, got {rank} spatial axes")


def run(config: RunConfig, out_dir: Path) -> dict[str, Any]:
    zoo = config.raw.get("zoo") or {}
    if "group_pool" not in zoo:
        raise ConfigError("feature_pooling needs zoo.group_pool (conf/model/group_pool.yaml)")
    base = {k: v for k, v in dict(zoo["group_pool"]).items() if k != "_target_"}
    target = dict(zoo["group_pool"]).get("_target_", "equivar.models.GroupPoolNet")
    check_before_data(config, [(target, dict(base, pool_copies=p), "zoo.group_pool") for p in (True, False)])
    data = load_dataset(config.dataset.loader, config.dataset.options)
    if data.rank == 2 and data.input_shape[0] != data.input_shape[1]:
        raise ConfigError(f"feature_pooling rotates images by 90 degrees: they must be square, got "
                          f"{data.input_shape[:-1]}")
    transforms = group_transforms(data.rank)
    plan = execution_plan(config)
    x_test = jnp.asarray(data.x_test)
    results, measured = {}, []
    for variant, pool in (("pooled", True), ("unpooled", False)):
        options = dict(base, pool_copies=pool)
        model = obtain(config, data, out_dir, f"group_pool_{variant}", target, options, plan, "zoo.group_pool")
        measured.append(model)
        if not measurable(model):
            results[variant] = {"pool_copies": pool, "n_params": model.n_params, "train_status": model.status,
                                "source": model.source}
            continue
        n_params = model.n_params
        logits_fn = jax.jit(jax.vmap(make_logits(model.graphdef), in_axes=(0, None)))
        logits = {name: np.asarray(_chunked(logits_fn, model.variables(), t(x_test)))
                  for name, t in transforms.items()}
        reference = logits[next(iter(transforms))]
        preds = {name: l.argmax(-1) for name, l in logits.items()}
        agree = np.mean(np.stack([preds[n] == preds[next(iter(transforms))] for n in transforms]).all(0), axis=-1)
        results[variant] = {
            "pool_copies": pool,
            "n_params": n_params,
            "accuracy": {name: mean_std(accuracy(p, data.y_test)) for name, p in preds.items()},
            "logit_change": {name: mean_std([float(np.mean(relative_error(jnp.asarray(l[s]),
                                                                          jnp.asarray(reference[s]),
                                                                          jnp.asarray(reference[s]))))
                                             for s in range(len(l))]) for name, l in logits.items()},
            "same_prediction_under_all": mean_std(agree),
            "train_status": model.status,
            "source": model.source,
        }
        log.info("%s: accuracy %s", variant, {n: round(v["mean"], 4) for n, v in results[variant]["accuracy"].items()})
    metrics = run_record("feature_pooling", config, data.summary()) | {
        "transforms": list(transforms),
        "variants": results,
    }
    return publish(metrics, out_dir, plot_feature_pooling, summary(metrics), measured)


def _chunked(fn, params, x, size: int = 2048):
    return jnp.concatenate([fn(params, x[i:i + size]) for i in range(0, x.shape[0], size)], axis=1)


def summary(metrics: dict[str, Any]) -> str:
    names = metrics["transforms"]
    lines = [f"feature_pooling on {metrics['dataset']['name']} ({seeds_phrase(metrics['n_seeds'])}): test accuracy per "
             "transform of the test set, and the logits' relative change", "",
             "| variant | params | " + " | ".join(f"acc {n}" for n in names) + " | max logit change | "
             "same prediction under all |", "|---|---:|" + "---:|" * (len(names) + 2)]
    for variant, r in metrics["variants"].items():
        if "accuracy" not in r:
            lines.append(f"| {variant} | {r['n_params']} | every seed diverged |" + " |" * (len(names) + 1))
            continue
        accs = " | ".join(mean_std_text(r["accuracy"][n]) for n in names)
        change = max(r["logit_change"][n]["mean"] for n in names)
        lines.append(f"| {variant} | {r['n_params']} | {accs} | {change:.1e} | "
                     f"{r['same_prediction_under_all']['mean']:.4f} |")
    return "\n".join(lines)
