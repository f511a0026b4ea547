"""lee_scaling: does a model's learned equivariance grow with its size and accuracy, whatever its architecture?

Gruver et al. (ICLR 2023) measured hundreds of image models and found that after training, larger and more
accurate models have a smaller local equivariance error (LEE) regardless of architecture (transformers can beat
CNNs), and that much of the error comes from pointwise non-linearities (aliasing). This experiment puts those
claims to the test at this scale: every model in ``models`` (a family: by default LeNet, a ViT and an
MLP-Mixer) is trained at every size in ``lee_scaling.sizes`` (option overrides of its zoo entry), with and
without shift augmentation (``lee_scaling.augment``), and each trained seed is one point: clean accuracy
against the softmax LEE of translations (Gruver's measure, exactly with ``jax.jvp``), with Spearman's rank
correlation over all points and per family. The LEE is split over the rows of the forward pass
(``equivar.dataflow``: layers and the computation between them), and the rows are summed by kind
(non-linearity, normalisation, attention, pooling/downsampling, linear, position, residual/reshape): each
kind's share of the summed squared contributions says which part of each family breaks equivariance.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from pydantic import Field
from scipy import stats

from equivar.config import RunConfig
from equivar.data import load_dataset
from equivar.dataflow import KINDS, softmax_lee_split
from equivar.evaluate import ShiftEvaluator
from equivar.experiment import base_fields, check_before_data, obtain, record_fields, unmeasured
from equivar.metrics import accuracy
from equivar.plot import save
from equivar.results import ExperimentResult, Headline, MeanStd, ModelRecord, Record, seeds_phrase
from equivar.schema import NonNegativeInt, PositiveInt
from equivar.schema import Options as OptionsBase

log = logging.getLogger(__name__)


# Three sizes per family (widths and depths) that train reliably with MNIST-1D's recipe (Adam 1e-2): a fourth
# (LeNet 32/64 channels, ViT dim 96 depth 4, Mixer dim 96 depth 6) did not (ViT 0.39 clean), docs/lee_scaling.md.
DEFAULT_SIZES: dict[str, list[dict[str, Any]]] = {
    "lenet": [{"channels": [4, 8], "hidden": [32]}, {"channels": [8, 16], "hidden": [128]},
              {"channels": [16, 32], "hidden": [512]}],
    "vit": [{"dim": 16, "depth": 1, "heads": 2}, {"dim": 32, "depth": 2, "heads": 4},
            {"dim": 64, "depth": 3, "heads": 4}],
    "mixer": [{"dim": 16, "depth": 1}, {"dim": 32, "depth": 2}, {"dim": 64, "depth": 4}],
}


class Options(OptionsBase):
    """``lee_scaling.*``: the sizes of every family and the augmentations each is trained with."""

    sizes: dict[str, list[dict[str, Any]]] = Field(
        default_factory=lambda: {k: [dict(v) for v in vs] for k, vs in DEFAULT_SIZES.items()},
        description="per zoo model (a family), the option overrides of each size, smallest first; a model in "
                    "models without an entry is trained at its zoo size only, entries of models not in models "
                    "are not trained")
    augment: list[NonNegativeInt | None] = Field(
        [0, None], min_length=1, description="shift augmentation ranges each size is trained with (integer rolls; "
                                             "0: none; null: shift.max)")
    n_examples: PositiveInt = Field(256, description="test inputs the Lie derivative is averaged over")
    batch: PositiveInt = Field(64, description="inputs per jitted Lie-derivative call (memory)")


class PerSeed(Record):
    clean_accuracy: list[float]
    lee: list[float]
    shares: list[dict[str, float]]  # per seed: kind -> share of the rows' summed squared contributions


class Variant(ModelRecord):
    """One family at one size and augmentation, over its healthy seeds."""

    headline = (Headline("clean_accuracy"), Headline("lee", "softmax LEE", share=False, log=True))

    family: str  # the zoo entry
    size: int  # index into lee_scaling.sizes[family]
    options: dict[str, Any]  # the size's overrides
    augmentation: int  # shift augmentation range (0: none)
    clean_accuracy: MeanStd
    lee: MeanStd  # softmax, translate along the last axis, per pixel
    shares: dict[str, MeanStd]  # kind -> share of the rows' summed squared contributions
    layer_sum_residual: float
    per_seed: PerSeed


class Correlation(Record):
    rho: float | None  # Spearman's rank correlation (None: fewer than 3 points or a constant)
    p_value: float | None
    n: int


class Result(ExperimentResult[Variant]):
    generator: str
    n_examples: int
    accuracy_vs_lee: dict[str, Correlation]  # "all" and per family: clean accuracy against log LEE, per seed
    params_vs_lee: dict[str, Correlation]


def _variants(config: RunConfig) -> list[tuple[str, Any, int, dict[str, Any], dict[str, Any], int]]:
    """(name, spec, size index, the size's overrides, options, augmentation) of every training, in order."""
    opts: Options = config.options
    out = []
    for spec in config.models:
        sizes = opts.sizes.get(spec.name) or [{}]
        for i, size in enumerate(sizes):
            for aug in opts.augment:
                reach = int(config.shift.max if aug is None else aug)
                name = f"{spec.name}_s{i}" + (f"_aug{reach}" if reach else "")
                out.append((name, spec, i, size, {**spec.options, **size}, reach))
    return out


def check(config: RunConfig) -> None:
    from equivar.errors import ConfigError

    opts: Options = config.options
    unknown = sorted(set(opts.sizes) - set(config.zoo))
    if unknown:  # sizes of zoo models the run does not train are kept for another run (models=[lenet,vit])
        raise ConfigError(f"lee_scaling.sizes names {', '.join(unknown)}, not a zoo model; zoo models: "
                          f"{', '.join(sorted(config.zoo))}")
    seen: dict[str, int] = {}
    for name, *_ in _variants(config):
        seen[name] = seen.get(name, 0) + 1
    if any(n > 1 for n in seen.values()):
        raise ConfigError(f"lee_scaling.augment={opts.augment} repeats an augmentation range; give each once")


def _correlation(x: list[float], y: list[float]) -> Correlation:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return Correlation(rho=None, p_value=None, n=len(x))
    r = stats.spearmanr(x, y)
    return Correlation(rho=float(r.statistic), p_value=float(r.pvalue), n=len(x))


def run(config: RunConfig, out_dir: Path) -> Result:
    opts: Options = config.options
    check(config)
    variants = _variants(config)
    check_before_data(config, [(spec.target, options, spec.where) for _, spec, _, _, options, _ in variants])
    data = load_dataset(config.dataset)
    plan = config.plan()
    axis = data.rank - 1
    x = jnp.asarray(data.x_test[:opts.n_examples])
    zero = np.zeros((1, data.rank), np.int32)
    records: dict[str, Variant] = {}
    lost: dict[str, ModelRecord] = {}
    measured = []
    for name, spec, size, overrides, options, reach in variants:
        train = config.train.model_copy(update={"augment_shift": reach, "augment_mode": "roll"})
        model = obtain(dataclasses.replace(config, train=train), data, out_dir, name, spec.target, options, plan,
                       spec.where)
        measured.append(model)
        if (diverged := unmeasured(model)) is not None:
            lost[name] = diverged
            continue
        clean = accuracy(ShiftEvaluator(model.graphdef, "roll", plan).predict(model.variables(), data.x_test,
                                                                                zero)[:, 0], data.y_test)
        lees, shares, residual = [], [], 0.0
        for module in model.modules():
            total, parts, kinds, res = softmax_lee_split(module, x, axis, opts.batch)
            summed = sum(parts.values()) or 1.0
            share = {k: sum(v for row, v in parts.items() if kinds[row] == k) / summed for k in KINDS}
            lees.append(total)
            shares.append({k: v for k, v in share.items() if any(kinds[r] == k for r in parts)})
            residual = max(residual, res)
        kinds_present = list(dict.fromkeys(k for s in shares for k in s))
        records[name] = Variant(
            **record_fields(model), family=spec.name, size=size, options=overrides, augmentation=reach,
            clean_accuracy=MeanStd.of(clean),
            lee=MeanStd.of(lees), shares={k: MeanStd.of([s.get(k, 0.0) for s in shares]) for k in kinds_present},
            layer_sum_residual=residual,
            per_seed=PerSeed(clean_accuracy=clean.tolist(), lee=lees, shares=shares))
        log.info("%s: %d params, clean %.4f, softmax LEE %.3g", name, model.n_params, clean.mean(), np.mean(lees))
    by_family: dict[str, list[Variant]] = {}
    for v in records.values():
        by_family.setdefault(v.family, []).append(v)
    groups = {"all": list(records.values()), **by_family}
    return Result(**base_fields(config, data, measured), generator="translate_x", n_examples=int(x.shape[0]),
                  accuracy_vs_lee={g: _correlation([a for v in vs for a in v.per_seed.clean_accuracy],
                                                   [float(np.log10(max(e, 1e-30))) for v in vs for e in v.per_seed.lee])
                                   for g, vs in groups.items()},
                  params_vs_lee={g: _correlation([float(v.n_params or 0) for v in vs for _ in v.per_seed.lee],
                                                 [e for v in vs for e in v.per_seed.lee]) for g, vs in groups.items()},
                  models=records, unmeasured=lost)


def _rho(c: Correlation) -> str:
    return "—" if c.rho is None else f"{c.rho:+.2f} (p = {c.p_value:.2g}, {c.n} models)"


def summary(result: Result) -> str:
    dataset = result.dataset.name if result.dataset else "?"
    lines = [f"lee_scaling on {dataset} ({seeds_phrase(result.n_seeds)} per variant, {result.n_examples} test inputs; "
             f"softmax LEE of {result.generator}, per pixel; shares: each kind's part of the rows' summed squared "
             "contributions)", "",
             "| variant | family | params | augmentation | clean acc | softmax LEE | non-linearity share | "
             "largest share |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for name, v in result.models.items():
        top = max(v.shares, key=lambda k: v.shares[k].mean) if v.shares else None
        nonlin = v.shares.get("non-linearity")
        cells = [f"{name}{v.seeds_note()}", v.family, str(v.n_params), str(v.augmentation or "none"),
                 v.clean_accuracy.text(), f"{v.lee.mean:.3g}" + (f" ± {v.lee.std:.2g}" if v.lee.n > 1 else ""),
                 f"{nonlin.mean:.2f}" if nonlin else "—", f"{top} ({v.shares[top].mean:.2f})" if top else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += result.unmeasured_rows(7)
    lines += ["", "Spearman rank correlation, one point per trained seed (—: fewer than 3 points, or all equal):", "",
              "| models | accuracy vs log LEE | parameters vs LEE |", "|---|---|---|"]
    for g, c in result.accuracy_vs_lee.items():
        lines.append(f"| {g} | {_rho(c)} | {_rho(result.params_vs_lee[g])} |")
    return "\n".join(lines)


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def plot(result: Result, out_dir: Path) -> list[Path]:
    """``lee_vs_accuracy.png`` (Gruver et al.'s Figure 1, right: one point per trained model, marker by family,
    hollow when trained with shift augmentation, larger for more parameters) and ``lee_shares.png`` (each
    variant's LEE split by kind of row)."""
    models = result.models
    if not models:
        return []
    out_dir = Path(out_dir)
    dataset = result.dataset.name if result.dataset else "?"
    families = list(dict.fromkeys(v.family for v in models.values()))
    params = [float(v.n_params or 1) for v in models.values()]
    lo, hi = np.log10(min(params)), np.log10(max(params))
    fig, ax = plt.subplots(figsize=(8.2, 4.8), layout="constrained")
    for v in models.values():
        f = families.index(v.family)
        size = 30 + 120 * ((np.log10(v.n_params or 1) - lo) / (hi - lo) if hi > lo else 0.5)
        color = plt.get_cmap("tab10")(f % 10)
        ax.scatter(v.per_seed.clean_accuracy, v.per_seed.lee, s=size, marker=MARKERS[f % len(MARKERS)],
                   facecolors="none" if v.augmentation else color, edgecolors=color, linewidths=1.4)
    for f, fam in enumerate(families):
        ax.scatter([], [], marker=MARKERS[f % len(MARKERS)], color=plt.get_cmap("tab10")(f % 10), label=fam)
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="0.3", label="shift-augmented (hollow)")
    ax.set_yscale("log")
    ax.set_xlabel("clean test accuracy")
    ax.set_ylabel(f"softmax LEE ({result.generator}, per pixel)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the points, never over them
    ax.set_title(f"LEE against accuracy, {dataset}: one point per trained seed, size ~ parameters\n"
                 f"Spearman (accuracy, log LEE): {_rho(result.accuracy_vs_lee['all'])}", fontsize=9)
    written = [save(fig, out_dir / "lee_vs_accuracy.png")]

    kinds = [k for k in KINDS if any(k in v.shares for v in models.values())]
    names = list(models)
    fig, ax = plt.subplots(figsize=(9.5, 0.32 * len(names) + 1.6), layout="constrained")
    left = np.zeros(len(names))
    cmap = plt.get_cmap("tab10")
    for i, k in enumerate(kinds):
        widths = np.array([models[n].shares[k].mean if k in models[n].shares else 0.0 for n in names])
        ax.barh(np.arange(len(names)), widths, left=left, color=cmap(i), label=k)
        left += widths
    ax.set_yticks(np.arange(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the rows' summed squared contributions to the softmax LEE")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title(f"Which kind of row breaks translation equivariance, {dataset} (mean over "
                 f"{seeds_phrase(result.n_seeds)})",
                 fontsize=9)
    written.append(save(fig, out_dir / "lee_shares.png"))
    return written
