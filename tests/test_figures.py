"""Every figure equivar draws fits its canvas and reads, for 1, 3 and 12 models with long names.

Each experiment's ``plot`` (and ``equivar.plot.training_figure``) draws from a synthetic typed result (the
experiment's pydantic ``Result``, tiny made-up numbers of the right shapes); every figure handed to
``equivar.plot.save`` is then checked by ``equivar.plot.figure_problems``: no title, label, tick label, legend,
text or axes outside the canvas, no two tick labels of an axis on top of each other (nor a numeric axis with a
single labelled tick), no title, label or legend over another, no text colour below a WCAG contrast of 3 on
white. ``python tests/test_figures.py OUT_DIR`` writes every figure into OUT_DIR/<models>/ to look at.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib.figure
import matplotlib.ticker
import numpy as np
import pytest

from equivar import plot as eplot
from equivar.experiments import (
    anatomy,
    conv_compare,
    equivariance,
    feature_pooling,
    invariance_benchmark,
    lee_scaling,
    lie_derivative,
    mnist1d_baselines,
    padding_leak,
    pooling_invariance,
    shift_test,
    unseen_positions,
)

# Realistic names, the long ones first; several outside the zoo's fixed colours (pale tab20 shades among them).
NAMES = ["circular_transformer", "alias_free_vit", "lenet_blur", "cnn_aps", "mlp", "my_translation_net",
         "mixer", "vit", "group_pool", "lenet", "cnn_gap", "alias_free"]
COUNTS = (1, 3, 12)
SEEDS = 3


def _stat(mean: float, std: float = 0.02, n: int = SEEDS) -> dict:
    return {"mean": float(mean), "std": float(std if n > 1 else 0.0), "n": n}


def _series(values, std: float = 0.02, n: int = SEEDS) -> dict:
    values = [float(v) for v in values]
    return {"mean": values, "std": [std if n > 1 else 0.0] * len(values), "n": n}


def _seeds(n: int = SEEDS) -> list[dict]:
    return [{"seed": i, "status": "ok"} for i in range(n)]


def _dataset(rank: int = 1, n_classes: int = 10) -> dict:
    name = "mnist1d" if rank == 1 else "mnist"
    return {"name": name, "rank": rank, "n_train": 4000, "n_test": 1000, "input_shape": [40, 1] if rank == 1 else
            [28, 28, 1], "n_classes": n_classes}


def _base(module, names: list[str], rank: int = 1, **fields) -> dict:
    return {"experiment": module.__name__.rsplit(".", 1)[-1], "module": module.__name__, "dataset": _dataset(rank),
            "seeds": list(range(SEEDS)), **fields}


def _training(epochs: int) -> dict:
    curve = [[1.5 / (e + 1) + 0.01 * s for e in range(epochs)] for s in range(SEEDS)]
    acc = [[min(0.95, 0.5 + 0.15 * e + 0.01 * s) for e in range(epochs)] for s in range(SEEDS)]
    return {"loss": curve, "accuracy": acc, "seconds": 3.0, "heldout_examples": 500, "heldout_loss": curve,
            "heldout_accuracy": acc}


# One synthetic result per experiment (and rank), for any list of model names.

def fake_shift_test(names: list[str], rank: int = 1, epochs: int = 2) -> shift_test.Result:
    side = range(-4, 5) if rank == 1 else range(-2, 3)
    shifts = [[s] for s in side] if rank == 1 else [[dy, dx] for dy in side for dx in side]
    radii = sorted({float(max(abs(v) for v in s)) for s in shifts})
    models = {}
    for i, name in enumerate(names):
        acc = 0.95 - 0.04 * (i % 7)
        per_shift = [acc - 0.03 * max(abs(v) for v in s) * (i % 3) for s in shifts]
        models[name] = {
            "target": f"zoo.{name}", "n_params": 1000 * (i + 1), "seeds": _seeds(), "training": _training(epochs),
            "clean_accuracy": _stat(acc), "shift_accuracy": _series(per_shift), "grid_mean_accuracy":
            _stat(np.mean(per_shift)), "worst_shift_accuracy": _stat(min(per_shift)),
            "consistency": _stat(0.6 + 0.03 * (i % 10)), "robustness": _series([acc - 0.08 * r * (i % 4) / 4
                                                                                 for r in radii]),
            "per_seed": {"seeds": list(range(SEEDS)), "clean_accuracy": [acc] * SEEDS,
                         "grid_mean_accuracy": [acc] * SEEDS, "consistency": [0.7] * SEEDS},
            "eval_seconds": 0.5}
    return shift_test.Result.model_validate(_base(shift_test, names, rank, shift_mode="roll", shifts=shifts,
                                                  n_eval_shift=1000, robustness_radii=radii, execution={},
                                                  models=models))


def _layer_errors(shifts: list[float], jump: int | None, scale: float, grid: bool) -> dict:
    errors = [0.0 if s == 0 else scale * (1 + s) / 10 for s in shifts]
    out = {"shift": shifts, "divisible": [jump is not None and s % jump == 0 for s in shifts],
           "role": "equivariance" if jump else "invariance", "jump": [jump, jump] if jump else None,
           "full": _series(errors), "interior": _series([e / 10 for e in errors]) if jump else None}
    if grid and jump:
        out["grid"] = {"mean": [[scale * (a + b) / 10 for b in shifts] for a in shifts],
                       "std": [[0.0] * len(shifts)] * len(shifts), "n": SEEDS}
    return out


def fake_equivariance(names: list[str], rank: int = 1) -> equivariance.Result:
    shifts = [float(s) for s in range(9)]
    layers = {"conv1": 1, "act1": 1, "pool1": 2, "conv2": 2, "act2": 2, "pool2": 4, "logits": None}
    models = {}
    paddings = ["CIRCULAR", "SAME"] if len(names) < 3 else ["CIRCULAR"]
    for i, name in enumerate(names):
        for padding in paddings:
            stage = {"shift": {mode: {layer: _layer_errors(shifts, jump, 10.0 ** -(i % 5), rank == 2)
                                      for layer, jump in layers.items()} for mode in ("roll", "zero")},
                     "transforms": {t: {layer: _stat(0.3 + 0.05 * j) for j, layer in enumerate(layers)}
                                    for t in ("rotate90", "magnify2")}}
            # both stages' figures alike: both for one model, the trained one alone for more (time)
            stages = {"init": stage, "trained": stage} if len(names) == 1 else {"trained": stage}
            models[f"{name}/{padding}"] = {"target": f"zoo.{name}", "seeds": _seeds(), "model": name,
                                           "padding": padding, "stages": stages,
                                           "clean_accuracy": _stat(0.9)}
    return equivariance.Result.model_validate(_base(equivariance, names, rank, n_examples=256, max_shift=8.0,
                                                    step=1.0, modes=["roll", "zero"], models=models))


def _lee(value: float) -> dict:
    return {"logits": {"mse": _stat(value * 10), "mean_abs": _stat(value)},
            "probs": {"mse": _stat(value), "mean_abs": _stat(value / 10)}}


def fake_lie_derivative(names: list[str], rank: int = 1) -> lie_derivative.Result:
    gens = ["translate_x"] if rank == 1 else ["translate_y", "translate_x", "rotate", "scale"]
    rows = ["conv1 (Conv)", "act1 (Activation)", "pool1 (MaxPool)", "conv2 (Conv)", "act2 (Activation)",
            "blocks.0.attn (SelfAttention): q+k+v+softmax", "fc (Linear)"]
    translations = [g for g in gens if g.startswith("translate")]
    shifts = [0.1 * k for k in range(21)]
    models = {}
    for i, name in enumerate(names):
        lee = 10.0 ** -(i % 6)
        shares = {r: _stat(0.0 if j == 0 else lee * j / 10) for j, r in enumerate(rows)}
        models[name] = {
            "target": f"zoo.{name}", "seeds": _seeds(), "clean_accuracy": _stat(0.9 - 0.03 * i),
            "consistency": _stat(0.5 + 0.04 * i), "grid_mean_accuracy": _stat(0.8),
            "lee": {g: _lee(lee * (1 + k)) for k, g in enumerate(gens)},
            "per_seed": {"seeds": list(range(SEEDS)), "lee": [], "consistency": [0.5] * SEEDS,
                         "clean_accuracy": [0.9] * SEEDS},
            "layers": {g: {"logits": shares, "probs": shares} for g in translations},
            "sawtooth": {"shifts": shifts, "predicted_class": [1, 2],
                         "probability": [[0.6 + 0.3 * np.sin(3 * s + k) for s in shifts] for k in range(2)]}}
    return lie_derivative.Result.model_validate(_base(
        lie_derivative, names, rank, generators=gens, n_examples=256, units={},
        consistency_grid={"mode": "roll", "max": 4, "step": 1, "n_examples": 256}, models=models))


def fake_invariance_benchmark(names: list[str]) -> invariance_benchmark.Result:
    models = {}
    for i, name in enumerate(names):
        models[name] = {
            "target": f"zoo.{name}", "seeds": _seeds(), "model": name, "augmentation": "none",
            "clean_accuracy": _stat(0.9 - 0.02 * i), "integer_consistency": _stat(0.5 + 0.04 * i),
            "fractional_consistency": {"2": _stat(0.6), "4": _stat(0.55)},
            "robustness_integer": {"1": _stat(0.7)}, "robustness_half": {"0.5": _stat(0.7)},
            "lee": _stat(10.0 ** -(2 * (i % 8)), 10.0 ** -(2 * (i % 8)) / 3)}
    return invariance_benchmark.Result.model_validate(_base(
        invariance_benchmark, names, integer_grid={"max": 4, "step": 1, "mode": "roll"}, fractional_max=2.0,
        fractional_steps=[2, 4], n_examples=256, models=models))


def fake_unseen_positions(names: list[str], rank: int = 1) -> unseen_positions.Result:
    margin, step = (20, 1) if rank == 1 else (16, 4)
    axis = list(range(0, margin + 1, step))
    grid = [[p] for p in axis] if rank == 1 else [[a, b] for a in axis for b in axis]
    regions = [1, 5, 15]
    models = {}

    def record(name: str, stage: str, region: int | None, classes: list[int], i: int) -> dict:
        acc = [0.9 if region is None or max(p) < region else 0.9 - 0.02 * (max(p) - region) for p in grid]
        return {"target": f"zoo.{name}", "seeds": _seeds(), "model": name, "stage": stage, "region": region,
                "classes": classes, "accuracy_by_position": _series(np.clip(acc, 0.1, 1) - 0.01 * i),
                "seen_accuracy": _stat(0.9), "unseen_accuracy": None if region is None else _stat(0.5 - 0.01 * i),
                "farthest_accuracy": None if region is None else _stat(0.3)}

    for i, name in enumerate(names):
        for k in regions:
            models[f"{name}_region{k}"] = record(name, "region", k, list(range(10)), i)
        models[f"{name}_pretrain"] = record(name, "pretrain", None, list(range(5)), i)
        models[f"{name}_scratch"] = record(name, "scratch", 1, list(range(5, 10)), i)
        models[f"{name}_transfer"] = record(name, "transfer", 1, list(range(5, 10)), i)
    shape = [40] if rank == 1 else [28, 28]
    return unseen_positions.Result.model_validate(_base(
        unseen_positions, names, rank, pattern_shape=shape, canvas_shape=[s + margin for s in shape],
        margin=margin, background=0.0, positions=grid, grid_shape=[len(axis)] * rank, region_start=0,
        regions=regions, transfer_region=1, n_train=10000, n_test=500, models=models))


def fake_lee_scaling(names: list[str]) -> lee_scaling.Result:
    kinds = ["non-linearity", "normalisation", "attention", "pooling/downsampling", "linear"]
    models = {}
    for i, name in enumerate(names):
        for size in range(3):
            for aug in (0, 4):
                lees = [10.0 ** -(size + i % 3 + k / 10) for k in range(SEEDS)]
                share = {k: 1 / len(kinds) for k in kinds}
                models[f"{name}_s{size}" + (f"_aug{aug}" if aug else "")] = {
                    "target": f"zoo.{name}", "n_params": 1000 * 10 ** size, "seeds": _seeds(), "family": name,
                    "size": size, "options": {}, "augmentation": aug, "clean_accuracy": _stat(0.7 + 0.05 * size),
                    "lee": _stat(np.mean(lees)), "shares": {k: _stat(v) for k, v in share.items()},
                    "layer_sum_residual": 1e-6, "per_seed": {"clean_accuracy": [0.7 + 0.05 * size] * SEEDS,
                                                             "lee": lees, "shares": [share] * SEEDS}}
    corr = {"rho": -0.45, "p_value": 0.01, "n": 3 * len(models)}
    return lee_scaling.Result.model_validate(_base(
        lee_scaling, names, generator="translate_x", n_examples=256,
        accuracy_vs_lee={"all": corr, **{n: corr for n in names}}, params_vs_lee={"all": corr}, models=models))


def fake_anatomy(names: list[str], rank: int = 1) -> anatomy.Result:
    size = 40 if rank == 1 else 28
    rows = [("conv1", "Conv", 5), ("pool1", "MaxPool", 6), ("conv2", "Conv", 14), ("pool2", "MaxPool", 16),
            ("fc1", "Linear", size), ("logits", "Linear", size)]
    models = {}
    for name in names:
        layers, maps = [], {}
        for layer, kind, rf in rows:
            lo, hi = (size - rf) // 2, (size - rf) // 2 + rf - 1
            layers.append({"layer": layer, "type": kind, "output_shape": [8, 16], "weights": 100, "biases": 10,
                           "params": 110, "rf_forward": [rf] * rank, "support_size": [rf] * rank,
                           "support_range": [[lo, hi]] * rank, "empirical_equals_analytic": True})
            profile = np.zeros(size)
            profile[lo:hi + 1] = np.hanning(rf + 2)[1:-1] / max(np.hanning(rf + 2).max(), 1e-9)
            maps[layer] = (profile if rank == 1 else np.outer(profile, profile)).tolist()
        models[name] = {"target": f"zoo.{name}", "seeds": [], "input_shape": [size] * rank + [1], "layers": layers,
                        "total_params": 660, "model_param_total": 660, "gradient_maps": maps}
    return anatomy.Result.model_validate(_base(anatomy, names, rank, input_shape=[size] * rank + [1],
                                               input_source="mnist1d", n_classes=10, n_inputs=64, models=models))


def fake_conv_compare(names: list[str]) -> conv_compare.Result:
    calls = ["definition (loop)", "jnp.convolve full", "lax.conv_general_dilated VALID", "scipy convolve1d nearest",
             "scipy correlate1d reflect", "torch.nn.functional.conv1d", "vectorised JAX", "lax SAME",
             "scipy convolve1d wrap", "numpy.convolve same", "lax CIRCULAR via pad", "torch conv1d padding=same"]
    models = {}
    for i, call in enumerate(calls[:len(names)]):
        op = "convolution" if i % 2 == 0 else "cross-correlation"
        out = [0, 0, -4 if op == "convolution" else 4, 0, 0, 0] + [0] * (i % 3)
        models[call] = {"call": call, "lecture_output": out, "lecture_output_length": len(out), "operation": op,
                        "border": None, "valid_offset": 0, "random_output_length": 10, "random_input_length": 12,
                        "random_kernel_length": 3, "random_max_abs_error": 1e-7}
    matrix = np.eye(8, 10).tolist()
    toeplitz = {f"1d.{p}": {"matrix_shape": [8, 10], "max_abs_error": 1e-7, "weights_zeroed_fraction": 0.7,
                            "fully_connected_params": 80, "conv_params": 3, "matrix": matrix}
                for p in ("VALID", "SAME", "CIRCULAR")}
    return conv_compare.Result.model_validate(_base(
        conv_compare, names, lecture_example={"x": [2, 2, 2, 6, 6, 6, 6], "w": [-1, 1]}, multichannel={},
        toeplitz=toeplitz, notes=[], models=models))


def fake_feature_pooling(names: list[str]) -> feature_pooling.Result:
    transforms = ["identity", "rotate90", "rotate180", "rotate270"]
    models = {}
    for i, name in enumerate(names):
        variant = "pooled" if i == 0 else f"{name}_unpooled"
        models[variant] = {"target": "zoo.group_pool", "n_params": 12000, "seeds": _seeds(), "pool_copies": i == 0,
                           "accuracy": {t: _stat(0.9 - 0.1 * j * (i > 0)) for j, t in enumerate(transforms)},
                           "logit_change": {t: _stat(0.0 if i == 0 else 0.3 * j) for j, t in enumerate(transforms)},
                           "same_prediction_under_all": _stat(1.0 if i == 0 else 0.4)}
    return feature_pooling.Result.model_validate(_base(feature_pooling, names, transforms=transforms,
                                                       models=models))


def fake_mnist1d_baselines(names: list[str]) -> mnist1d_baselines.Result:
    models = {name: {"target": f"zoo.{name}", "seeds": _seeds(), "test_accuracy": _stat(0.6 + 0.03 * i),
                     "paper_accuracy": 0.7 if i % 2 else None, "per_seed_accuracy": [0.6] * SEEDS}
              for i, name in enumerate(names)}
    return mnist1d_baselines.Result.model_validate(_base(
        mnist1d_baselines, names, protocol={"optimizer": "adam", "learning_rate": 1e-2, "batch_size": 100,
                                            "steps": 8000}, models=models))


def fake_padding_leak(names: list[str]) -> padding_leak.Result:
    paddings = ["VALID", "SAME", "CIRCULAR", "REFLECT_SAME", "ZERO_8", "ZERO_16", "CIRCULAR_3x3", "SAME_5x5",
                "VALID_dilated", "SAME_dilated", "CIRCULAR_dilated", "REPLICATE"]
    models = {p: {"seeds": _seeds(), "test_accuracy": _stat(0.5 if "CIRCULAR" in p else 0.97),
                  "train_accuracy_last_epoch": _stat(0.98), "max_pair_logit_difference": [0.0] * SEEDS,
                  "pairs_identical": "CIRCULAR" in p, "pairs_same_prediction": [1.0] * SEEDS,
                  "per_seed_accuracy": [0.5] * SEEDS} for p in paddings[:len(names)]}
    return padding_leak.Result.model_validate(_base(
        padding_leak, names, source="mnist1d", margin=8, background=0.0,
        net={"conv_channels": 8, "kernel": 3, "then": "global max pool"}, models=models))


def fake_pooling_invariance(names: list[str]) -> pooling_invariance.Result:
    types = ["max", "mean", "blur", "aps"][:max(1, min(4, len(names)))]
    sizes = [2, 4, 8] if len(names) > 1 else [2]
    shifts = [float(s) for s in range(9)]
    models = {}
    for t in types:
        for size in sizes:
            error = _series([0.0 if s % size == 0 else 0.3 / size for s in shifts])
            models[f"{t}{size}"] = {"seeds": _seeds(), "type": t, "size": size, "error": error,
                                    "shift_aligned_error": error if t == "aps" else None}
    for g in ("global mean", "global max"):
        models[g] = {"seeds": _seeds(), "type": g, "size": None, "error": _series([0.0] * len(shifts))}
    return pooling_invariance.Result.model_validate(_base(
        pooling_invariance, names, features={"channels": 8, "kernel": 3, "padding": "CIRCULAR",
                                             "activation": "relu", "weights": "random"},
        n_examples=64, shift_mode="roll", shifts=shifts, sizes=sizes, models=models))


# (module, faker, ranks): every experiment module of experiments/ (test_every_plot_is_covered checks)
EXPERIMENTS = {
    "shift_test": (shift_test, fake_shift_test, (1, 2)),
    "equivariance": (equivariance, fake_equivariance, (1, 2)),
    "lie_derivative": (lie_derivative, fake_lie_derivative, (1, 2)),
    "invariance_benchmark": (invariance_benchmark, fake_invariance_benchmark, (1,)),
    "unseen_positions": (unseen_positions, fake_unseen_positions, (1, 2)),
    "lee_scaling": (lee_scaling, fake_lee_scaling, (1,)),
    "anatomy": (anatomy, fake_anatomy, (1, 2)),
    "conv_compare": (conv_compare, fake_conv_compare, (1,)),
    "feature_pooling": (feature_pooling, fake_feature_pooling, (1,)),
    "mnist1d_baselines": (mnist1d_baselines, fake_mnist1d_baselines, (1,)),
    "padding_leak": (padding_leak, fake_padding_leak, (1,)),
    "pooling_invariance": (pooling_invariance, fake_pooling_invariance, (1,)),
}


def fake_result(experiment: str, n: int, rank: int = 1):
    _, faker, ranks = EXPERIMENTS[experiment]
    return faker(NAMES[:n], rank) if len(ranks) > 1 else faker(NAMES[:n])


@pytest.fixture
def saved(monkeypatch):
    """Every figure handed to ``equivar.plot.save``, in order, as (file name, figure), kept alive after
    plt.close; laid out by ``save`` as for the PNG, whose writing is skipped (time: the checks draw it)."""
    figures: list[tuple[str, matplotlib.figure.Figure]] = []

    def savefig(self, fname, *args, **kwargs):
        figures.append((Path(fname).name, self))

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return figures


def _check(figures, draw: bool = False) -> None:
    # save() leaves every figure laid out as its PNG (fit_figure's last draw, at the PNG's dpi): judged as drawn
    problems = [f"{name}: {p}" for name, fig in figures for p in eplot.figure_problems(fig, draw=draw)]
    assert not problems, "\n".join(problems)


# The largest figures take seconds each to lay out: these run with --slow (CI), the rest by default (about 20 s
# on 2 cores). anatomy draws one figure per model, so its 3 and 12 models are more of the same figure.
SLOW = {("equivariance", 1, 12), ("equivariance", 2, 12), ("equivariance", 2, 3), ("lie_derivative", 1, 12),
        ("lie_derivative", 2, 12), ("anatomy", 1, 3), ("anatomy", 1, 12), ("anatomy", 2, 12), ("shift_test", 2, 12),
        ("unseen_positions", 2, 12)}
CASES = [pytest.param(e, rank, n, id=f"{e}-{rank}d-{n}", marks=[pytest.mark.slow] if (e, rank, n) in SLOW else [])
         for e, (_, _, ranks) in EXPERIMENTS.items() for rank in ranks for n in COUNTS]


@pytest.mark.parametrize("experiment,rank,n", CASES)
def test_every_figure_fits_its_canvas_and_reads(experiment, rank, n, saved, tmp_path):
    module = EXPERIMENTS[experiment][0]
    result = fake_result(experiment, n, rank)
    written = module.plot(result, tmp_path)
    assert written and [p.name for p in written] == [name for name, _ in saved]
    _check(saved)


@pytest.mark.parametrize("n,epochs", [(n, e) for n in COUNTS for e in (1, 2)] + [(3, 7)])
def test_training_figure_fits_and_counts_whole_epochs(n, epochs, saved, tmp_path):
    eplot.training_figure(fake_shift_test(NAMES[:n], epochs=epochs), tmp_path)
    ((name, fig),) = saved
    _check(saved)
    for ax in fig.axes:
        if ax.get_visible() and ax.get_xlabel() == "epoch":
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert all(float(t).is_integer() for t in ticks) and 1 <= min(ticks) and max(ticks) <= epochs


@pytest.mark.parametrize("n", COUNTS)
def test_sweep_report_figure_fits(n, saved, tmp_path):
    """report.png of a sweep (equivar.report draws it, without save()): one line per model."""
    from equivar.report import write_report

    from support import fake_shift_record, fake_shift_result

    for i, n_train in enumerate((100, 200, 400)):
        run = tmp_path / str(i)
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(f"experiment_name: shift_test\nn_seeds: 2\ndataset:\n  "
                                                    f"n_train: {n_train}\n")
        (run / "status.json").write_text(json.dumps({"status": "complete"}))
        models = {m: fake_shift_record(m, 0.4 + 0.03 * k) for k, m in enumerate(NAMES[:n])}
        result = fake_shift_result(models, 2, dataset=_dataset())
        (run / "metrics.json").write_text(json.dumps(result.model_dump(mode="json")))
    write_report(tmp_path)
    assert [name for name, _ in saved] == ["report.png"]
    _check(saved, draw=True)


def test_every_plot_is_covered():
    """Every experiment module that draws (a ``plot`` function) has a synthetic result here."""
    root = Path(__file__).resolve().parent.parent / "experiments"
    drawing = {p.stem for p in root.glob("*.py") if "\ndef plot(" in p.read_text()}
    assert drawing == set(EXPERIMENTS)


def test_the_checks_find_what_they_look_for():
    """A legend outside the canvas, crowded ticks, a single numeric tick and pale text are each reported."""
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(4, 3))
    a.plot([0, 1], [0, 1], label="a line")
    a.legend(loc="upper left", bbox_to_anchor=(2.5, 1.0))
    b.set_xticks(np.arange(30) / 1000)
    b.set_title("pale", color="#dbdb8d")
    problems = eplot.figure_problems(fig)
    assert any("legend is outside the canvas" in p for p in problems), problems
    assert any("x tick labels" in p and "overlap" in p for p in problems), problems
    assert any("'pale' in #dbdb8d has contrast" in p for p in problems), problems
    fig2, ax = plt.subplots(figsize=(3, 2), layout="constrained")
    ax.plot([0.9, 1.1], [0, 1])  # one epoch: an integer locator finds one tick in the view
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True, min_n_ticks=1))
    assert any("labels one tick only" in p for p in eplot.figure_problems(fig2))
    assert eplot.text_color("#dbdb8d") != "#dbdb8d" and eplot.contrast_ratio(eplot.text_color("#dbdb8d")) >= 4.5
    plt.close(fig)
    plt.close(fig2)


def test_save_fits_what_a_plot_leaves_too_wide(saved, tmp_path):
    """save() wraps a title wider than the canvas, rotates crowded category labels and puts a legend_below
    legend under the tick labels; "3 seeds" stays on one line."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4.5), layout="constrained")
    names = NAMES
    ax.bar(range(len(names)), np.linspace(0.2, 0.9, len(names)), label="accuracy")
    ax.set_xticks(range(len(names)), names)
    ax.plot([0, len(names) - 1], [0.5, 0.5], label="a reference line with a long name")
    eplot.legend_below(ax)
    fig.suptitle("a suptitle far wider than this small canvas, over 3 seeds, " * 3)
    eplot.save(fig, tmp_path / "fit.png")
    assert not eplot.figure_problems(fig, draw=False)
    assert fig.get_suptitle().count("\n") >= 2 and "3\nseeds" not in fig.get_suptitle()
    assert ax.get_xticklabels()[0].get_rotation() > 0


if __name__ == "__main__":  # python tests/test_figures.py OUT_DIR: every figure, to look at
    out = Path(sys.argv[1])
    for n in COUNTS:
        for experiment, (module, _, ranks) in EXPERIMENTS.items():
            for rank in ranks:
                folder = out / f"{n}_models" / (experiment if rank == 1 else f"{experiment}_2d")
                module.plot(fake_result(experiment, n, rank), folder)
        for epochs in (2, 7):
            eplot.training_figure(fake_shift_test(NAMES[:n], epochs=epochs), out / f"{n}_models" / f"training_{epochs}")
    print(out)
