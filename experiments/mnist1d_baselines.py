"""mnist1d_baselines: the MNIST-1D paper's baseline table (Greydanus 2020), reproduced with its own models
(logistic regression, MLP, CNN: ``conf/model/paper_*.yaml``) and protocol (Adam 1e-2, batch 100, 8000 steps),
mean ± std over seeds beside the paper's numbers. It checks that the default dataset and the training code
give the published accuracies before any shift study relies on them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from equivar.config import RunConfig
from equivar.data import load_dataset
from equivar.experiment import base_fields, check_before_data, obtain, record_fields, spec_variants, unmeasured
from equivar.metrics import accuracy
from equivar.plot import draw_chance, model_color, over_seeds, save
from equivar.results import ExperimentResult, Headline, MeanStd, ModelRecord, Record, seeds_phrase
from equivar.train import make_predict

log = logging.getLogger(__name__)

# Test accuracy in the MNIST-1D paper's table (greydanus/mnist1d README, "Benchmarks").
PAPER = {"equivar.models.PaperLinear": 0.32, "equivar.models.PaperMLP": 0.68, "equivar.models.PaperCNN": 0.94}


class ModelResult(ModelRecord):
    headline = (Headline("test_accuracy"),)

    test_accuracy: MeanStd
    paper_accuracy: float | None  # the paper's table (None: a model the paper does not list)
    per_seed_accuracy: list[float]
    train_seconds: float | None = None


class Protocol(Record):
    optimizer: str
    learning_rate: float
    batch_size: int
    steps: int


class Result(ExperimentResult[ModelResult]):
    protocol: Protocol


def run(config: RunConfig, out_dir: Path) -> Result:
    check_before_data(config, spec_variants(config.models))
    data = load_dataset(config.dataset)
    if data.name != "mnist1d":
        log.warning("the paper's numbers are for MNIST-1D; this runs on %s", data.name)
    plan = config.plan()
    steps = config.train.epochs_for(len(data.y_train)) * (len(data.y_train) // config.train.batch_size)
    records, lost, measured = {}, {}, []
    for spec in config.models:
        model = obtain(config, data, out_dir, spec.name, spec.target, spec.options, plan)
        measured.append(model)
        if (diverged := unmeasured(model)) is not None:
            lost[spec.name] = diverged
            continue
        predict = jax.jit(jax.vmap(make_predict(model.graphdef), in_axes=(0, None)))
        preds = np.asarray(predict(model.variables(), jnp.asarray(data.x_test)))
        acc = accuracy(preds, data.y_test)
        records[spec.name] = ModelResult(**record_fields(model), test_accuracy=MeanStd.of(acc),
                                         paper_accuracy=PAPER.get(model.target), per_seed_accuracy=acc.tolist(),
                                         train_seconds=model.train_record["seconds"] if model.train_record else None)
    return Result(**base_fields(config, data, measured),
                  protocol=Protocol(optimizer=config.train.optimizer, learning_rate=config.train.learning_rate,
                                    batch_size=config.train.batch_size, steps=steps),
                  models=records, unmeasured=lost)


def summary(result: Result) -> str:
    p = result.protocol
    dataset = result.dataset.name if result.dataset else "?"
    lines = [f"mnist1d_baselines on {dataset} ({seeds_phrase(result.n_seeds)}; {p.optimizer} {p.learning_rate:g}, "
             f"batch {p.batch_size}, {p.steps} steps): test accuracy", "",
             "| model | params | paper | equivar |", "|---|---:|---:|---:|"]
    for name, m in result.models.items():
        paper = "—" if m.paper_accuracy is None else f"{m.paper_accuracy:.2f}"
        lines.append(f"| {name}{m.seeds_note()} | {m.n_params} | {paper} | {m.test_accuracy.text()} |")
    lines += result.unmeasured_rows(3, lambda r: [str(r.n_params), _paper_text(r.target)])
    return "\n".join(lines)


def _paper_text(target: str) -> str:
    return "—" if target not in PAPER else f"{PAPER[target]:.2f}"


def plot(result: Result, out_dir: Path) -> list[Path]:
    """Test accuracy per model (mean ± std over seeds) beside the paper's number."""
    models = result.models
    if not models:
        return []
    fig, ax = plt.subplots(figsize=(max(5.0, 2.6 + 1.3 * len(models)), 4), layout="constrained")
    x = np.arange(len(models))
    ours = [m.test_accuracy.mean for m in models.values()]
    spread = [m.test_accuracy.std if m.test_accuracy.n > 1 else 0 for m in models.values()]
    ax.bar(x - 0.2, ours, 0.4, yerr=spread, capsize=4, color=[model_color(n) for n in models], label="equivar")
    paper = [np.nan if m.paper_accuracy is None else m.paper_accuracy for m in models.values()]
    ax.bar(x + 0.2, paper, 0.4, color="lightgrey", edgecolor="grey", label="paper")
    for xi, v in zip(x, ours):
        ax.text(xi - 0.2, v + 0.02, f"{v:.3f}", ha="center", fontsize=8)
    draw_chance(ax, result.chance)
    ax.set_xticks(x, [n + m.seeds_note() for n, m in models.items()])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over one
    p = result.protocol
    ax.set_title(f"MNIST-1D baselines ({over_seeds(result.n_seeds)}; {p.optimizer} {p.learning_rate:g}, "
                 f"batch {p.batch_size}, {p.steps} steps)", fontsize=9)
    return [save(fig, Path(out_dir) / "mnist1d_baselines.png")]


