"""mnist1d_baselines: the MNIST-1D paper's baseline table (Greydanus 2020), reproduced with its own models
(logistic regression, MLP, CNN: ``conf/model/paper_*.yaml``) and protocol (Adam 1e-2, batch 100, 8000 steps),
mean ± std over seeds beside the paper's numbers. It checks that the default dataset and the training code
give the published accuracies before any shift study relies on them.
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
from equivar.experiments.common import check_before_data, execution_plan, obtain, publish, run_record, spec_variants
from equivar.metrics import accuracy, mean_std
from equivar.plot import plot_mnist1d_baselines
from equivar.text import mean_std_text, seeds_phrase
from equivar.train import make_predict

log = logging.getLogger(__name__)

# Test accuracy in the MNIST-1D paper's table (greydanus/mnist1d README, "Benchmarks").
PAPER = {"equivar.models.PaperLinear": 0.32, "equivar.models.PaperMLP": 0.68, "equivar.models.PaperCNN": 0.94}


def run(config: RunConfig, out_dir: Path) -> dict[str, Any]:
    check_before_data(config, spec_variants(config.models))
    data = load_dataset(config.dataset.loader, config.dataset.options)
    if config.dataset.loader != "mnist1d":
        log.warning("the paper's numbers are for MNIST-1D; this runs on %s", data.name)
    plan = execution_plan(config)
    steps = config.train.epochs_for(len(data.y_train)) * (len(data.y_train) // config.train.batch_size)
    results, measured = {}, []
    for spec in config.models:
        model = obtain(config, data, out_dir, spec.name, spec.target, spec.options, plan)
        measured.append(model)
        record: dict[str, Any] = {"target": model.target, "n_params": model.n_params, "status": model.status,
                                  "source": model.source, "paper_accuracy": PAPER.get(model.target)}
        if model.ok.any():
            predict = jax.jit(jax.vmap(make_predict(model.graphdef), in_axes=(0, None)))
            preds = np.asarray(predict(model.variables(), jnp.asarray(data.x_test)))
            acc = accuracy(preds, data.y_test)
            record |= {"test_accuracy": mean_std(acc), "per_seed": {"seeds": model.healthy_seeds(),
                                                                     "test_accuracy": acc.tolist()}}
            if model.train_record:
                record["train_seconds"] = model.train_record["seconds"]
        results[spec.name] = record
    metrics = run_record("mnist1d_baselines", config, data.summary(), measured) | {
        "protocol": {"optimizer": config.train.optimizer, "learning_rate": config.train.learning_rate,
                     "batch_size": config.train.batch_size, "steps": steps},
        "models": results,
    }
    return publish(metrics, out_dir, plot_mnist1d_baselines, summary(metrics), measured)


def summary(metrics: dict[str, Any]) -> str:
    p = metrics["protocol"]
    lines = [f"mnist1d_baselines on {metrics['dataset']['name']} ({seeds_phrase(metrics['n_seeds'])}; "
             f"{p['optimizer']} {p['learning_rate']:g}, batch {p['batch_size']}, {p['steps']} steps): test accuracy",
             "", "| model | params | paper | equivar |", "|---|---:|---:|---:|"]
    for name, m in metrics["models"].items():
        paper = "—" if m["paper_accuracy"] is None else f"{m['paper_accuracy']:.2f}"
        ours = mean_std_text(m["test_accuracy"]) if "test_accuracy" in m else "every seed diverged"
        lines.append(f"| {name} | {m['n_params']} | {paper} | {ours} |")
    return "\n".join(lines)
