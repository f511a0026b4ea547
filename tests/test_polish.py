"""What a reader sees: one colour per model, chance lines, "1 seed" wording, a quiet start on machines without
a TPU, readable run files, and a report for sweeps over categorical keys."""

import importlib.util
import json
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_hex
from matplotlib.container import BarContainer

from equivar.experiments import feature_pooling, shift_test
from equivar.io import write_json
from equivar.plot import model_color, over_seeds
from equivar.quiet import MissingTpuFilter
from equivar.report import write_report

from support import ROOT, fake_seeds, fake_shift_record, fake_shift_result, fake_stat

ZOO = ("mlp", "lenet", "local", "cnn_gap", "group_pool", "stack")


_stat, _seeds, _shift_record = fake_stat, fake_seeds, fake_shift_record


def shift_metrics(models=("mlp", "lenet", "my_net"), n_seeds=3, rank=1, n_classes=10):
    """A shift_test result, as experiments/shift_test.py builds it."""
    if rank == 1:
        shifts = [[s] for s in range(-2, 3)]
    else:
        shifts = [[dy, dx] for dy in range(-1, 2) for dx in range(-1, 2)]
    dataset = {"name": f"synthetic{rank}d", "rank": rank, "n_train": 64, "n_test": 32,
               "input_shape": [12] * rank + [1], "n_classes": n_classes}
    out = {name: _shift_record(name, 0.4 + 0.1 * i, n_seeds, len(shifts), consistency=0.5) for i, name in
           enumerate(models)}
    return fake_shift_result(out, n_seeds, shifts, dataset if n_classes else {})


def feature_pooling_metrics(n_seeds=2, n_classes=10):
    names = ["identity", "reversed"]
    variant = {"n_params": 50, "seeds": _seeds(["ok"] * n_seeds), "pool_copies": True,
               "accuracy": {n: _stat(0.8, 0.01, n_seeds) for n in names},
               "logit_change": {n: _stat(1e-3, 1e-4, n_seeds) for n in names},
               "same_prediction_under_all": _stat(1.0, 0.0, n_seeds)}
    dataset = {"name": "synthetic1d", "rank": 1, "n_train": 64, "n_test": 32, "input_shape": [12, 1],
               "n_classes": n_classes}
    return feature_pooling.Result.model_validate({
        "experiment": "feature_pooling", "module": feature_pooling.__name__, "dataset": dataset,
        "seeds": list(range(n_seeds)), "transforms": names,
        "models": {"pooled": variant, "unpooled": {**variant, "pool_copies": False}}})


def _sweep_run(folder: Path, config_yaml: str, models: dict, n_seeds: int = 2, n_classes: int = 10,
               unmeasured: dict | None = None) -> None:
    """One finished run of a multirun folder, as Hydra and equivar.run leave it."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(f"experiment_name: shift_test\nn_seeds: {n_seeds}\n" + config_yaml)
    (folder / "status.json").write_text(json.dumps({"status": "complete"}))
    dataset = {"name": "synthetic1d", "rank": 1, "n_train": 64, "n_test": 32, "input_shape": [12, 1],
               "n_classes": n_classes}
    result = fake_shift_result(models, n_seeds, dataset=dataset, unmeasured=unmeasured)
    (folder / "metrics.json").write_text(json.dumps(result.model_dump(mode="json")))


def _models(accuracies: dict, n_seeds: int = 2, status=None) -> dict:
    return {name: _shift_record(name, acc, n_seeds, 1, status) for name, acc in accuracies.items()}


def _line_colors(ax) -> dict:
    return {line.get_label(): to_hex(line.get_color()) for line in ax.get_lines() if line.get_label() != "chance"}


def _tick_bar_colors(ax) -> dict:
    """Bar colour per x tick label, for charts with one bar per model."""
    bars = [p for c in ax.containers if isinstance(c, BarContainer) for p in c.patches]
    return {t.get_text(): to_hex(b.get_facecolor()) for t, b in zip(ax.get_xticklabels(), bars)}


def _chance_lines(ax) -> list:
    return [line for line in ax.get_lines() if line.get_label() == "chance"]


def _texts(fig) -> list[str]:
    texts = [fig.get_suptitle()]
    for ax in fig.axes:
        texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        legend = ax.get_legend()
        if legend:
            texts += [t.get_text() for t in legend.get_texts()]
    return texts


# 1. one colour per model

@pytest.mark.slow
def test_model_color_is_fixed_for_the_zoo_and_stable_for_other_names():
    zoo = [model_color(name) for name in ZOO]
    assert len(set(zoo)) == len(ZOO)
    assert model_color("my_net") == model_color("my_net")
    assert model_color("my_net") not in zoo and model_color("lenet_blur") not in zoo
    code = "from equivar.plot import model_color; print(model_color('my_net'), model_color('lenet_aps'))"
    # fresh processes (with other str-hash salts) pick the same colours for the same names in the same order
    outs = [subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": salt}).stdout.split() for salt in ("1", "2")]
    assert outs[0] == outs[1] and len(set(outs[0])) == 2


def test_user_models_never_share_a_colour():
    """Names outside the zoo get distinct, well-separated colours however their hashes fall (16 at least)."""
    names = [f"user_net_{i}" for i in range(16)]
    colours = [model_color(n) for n in names]
    assert len(set(colours)) == 16 and not set(colours) & set(model_color(z) for z in ZOO)
    assert [model_color(n) for n in names] == colours  # and keep them


def test_a_model_has_the_same_colour_in_every_plot(figures, tmp_path):
    shift_test.plot(shift_metrics(("mlp", "lenet", "my_net")), tmp_path / "a")
    first = {"lines": _line_colors(figures["accuracy_vs_shift.png"].axes[0]),
             "bars": _tick_bar_colors(figures["consistency.png"].axes[0])}
    # another run listing the models in another order
    shift_test.plot(shift_metrics(("my_net", "lenet")), tmp_path / "b")
    second = {"lines": _line_colors(figures["accuracy_vs_shift.png"].axes[0]),
              "bars": _tick_bar_colors(figures["consistency.png"].axes[0])}
    for name in ("mlp", "lenet", "my_net"):
        assert first["lines"][name] == first["bars"][name] == model_color(name)
    for name in ("lenet", "my_net"):
        assert second["lines"][name] == second["bars"][name] == model_color(name)

    _sweep_run(tmp_path / "sweep" / "0", "dataset:\n  n_train: 100\n", _models({"my_net": 0.3, "mlp": 0.4}))
    _sweep_run(tmp_path / "sweep" / "1", "dataset:\n  n_train: 200\n", _models({"my_net": 0.5, "mlp": 0.6}))
    write_report(tmp_path / "sweep")
    report = _line_colors(figures["report.png"].axes[0])
    assert report["my_net"] == model_color("my_net") and report["mlp"] == model_color("mlp")


# 2. chance lines

@pytest.mark.parametrize("rank", [1, 2])
def test_accuracy_plots_draw_a_dashed_grey_chance_line(figures, tmp_path, rank):
    shift_test.plot(shift_metrics(rank=rank, n_classes=10), tmp_path)
    for ax in figures["accuracy_vs_shift.png"].axes:
        (line,) = _chance_lines(ax)
        assert list(line.get_ydata()) == [0.1, 0.1] and line.get_linestyle() == "--"
        assert to_hex(line.get_color()) == to_hex("gray")
    assert "chance" in [t.get_text() for t in figures["accuracy_vs_shift.png"].axes[0].get_legend().get_texts()]
    if rank == 2:
        assert not any(_chance_lines(ax) for ax in figures["accuracy_heatmap.png"].axes)
    assert not _chance_lines(figures["consistency.png"].axes[0])

    feature_pooling.plot(feature_pooling_metrics(n_classes=4), tmp_path)
    accuracy_ax, logits_ax = figures["feature_pooling.png"].axes
    assert list(_chance_lines(accuracy_ax)[0].get_ydata()) == [0.25, 0.25] and not _chance_lines(logits_ax)


def test_no_chance_line_when_the_number_of_classes_is_unknown(figures, tmp_path):
    shift_test.plot(shift_metrics(n_classes=None), tmp_path)
    assert not any(_chance_lines(ax) for ax in figures["accuracy_vs_shift.png"].axes)


# 3. "1 seed", and no "± 0" for one seed

def test_seed_wording_helpers():
    assert over_seeds(1) == "1 seed" and over_seeds(3) == "mean ± std over 3 seeds"
    assert over_seeds(2, "mean") == "mean over 2 seeds"
    assert over_seeds(None) == "mean ± std over seeds"


def test_one_seed_plots_say_1_seed_and_show_no_spread(figures, tmp_path):
    shift_test.plot(shift_metrics(rank=2, n_seeds=1), tmp_path)
    feature_pooling.plot(feature_pooling_metrics(n_seeds=1), tmp_path)
    for name in ("accuracy_vs_shift.png", "accuracy_heatmap.png", "consistency.png", "feature_pooling.png"):
        texts = " | ".join(_texts(figures[name]))
        assert "1 seed" in texts and "1 seeds" not in texts and "±" not in texts, (name, texts)
    # no error bars of height 0 pretending to be a measured spread
    (bars,) = [c for c in figures["consistency.png"].axes[0].containers if isinstance(c, BarContainer)]
    drawn = [seg for lc in bars.errorbar.lines[2] for seg in lc.get_segments()] if bars.errorbar else []
    assert all(np.asarray(seg).size == 0 or np.isnan(seg).any() for seg in drawn)


def test_one_seed_report_shows_means_without_plus_minus(tmp_path):
    _sweep_run(tmp_path / "0", "dataset:\n  n_train: 100\n", _models({"mlp": 0.25}, n_seeds=1), n_seeds=1)
    _sweep_run(tmp_path / "1", "dataset:\n  n_train: 200\n",
               _models({"mlp": 0.5}, n_seeds=2, status=["ok", "diverged at step 3 (epoch 1)"]), n_seeds=2)
    _sweep_run(tmp_path / "2", "dataset:\n  n_train: 400\n", _models({"mlp": 0.75}, n_seeds=3), n_seeds=3)
    write_report(tmp_path)
    md = (tmp_path / "report" / "report.md").read_text()
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert "| 0.2500 | 0.2500 | 0.1500 | 0.5000 |" in rows["0"] and "±" not in rows["0"]
    assert "1/2 seeds diverged" in rows["1"] and "±" not in rows["1"]  # its statistics are over one seed
    assert "0.7500 ± 0.0200" in rows["2"]
    assert "1 seeds" not in md


def test_one_diverged_seed_of_one_says_seed_not_seeds(tmp_path):
    _sweep_run(tmp_path / "0", "dataset:\n  n_train: 100\n", _models({"mlp": 0.25}, n_seeds=1), n_seeds=1)
    lost = {"mlp": {"target": "zoo.mlp", "seeds": _seeds(["diverged at step 1 (epoch 1)"])}}
    _sweep_run(tmp_path / "1", "dataset:\n  n_train: 200\n", _models({"lenet": 0.5}, 1), n_seeds=1, unmeasured=lost)
    write_report(tmp_path)
    md = (tmp_path / "report" / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| 1 |")]
    assert any("| mlp | every seed diverged |" in r for r in rows) and any("| lenet | ok |" in r for r in rows)
    assert "seeds diverged" not in md


# 4. no TPU noise on machines without a TPU

def _quiet_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "TPU_LIBRARY_PATH", "EQUIVAR_QUIET_TPU")}
    return {**env, **extra}


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("libtpu") is not None, reason="a TPU runtime is installed here")
def test_an_entry_point_keeps_the_tpu_probe_quiet_on_a_machine_without_tpu():
    # logging at INFO, as Hydra sets it up for every run: JAX's failed TPU probe is an INFO record
    code = ("import logging; logging.basicConfig(level=logging.INFO)\n"
            "from equivar.execution import set_up_process; set_up_process()\n"
            "import jax; jax.devices()")
    quiet = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, env=_quiet_env())
    assert quiet.returncode == 0, quiet.stderr
    assert "tpu" not in quiet.stderr.lower(), quiet.stderr
    # the same start with the filter switched off: the message this test is about is real
    loud = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True,
                          env=_quiet_env(EQUIVAR_QUIET_TPU="off"))
    assert "Unable to initialize backend 'tpu'" in loud.stderr, loud.stderr


def test_importing_equivar_changes_nothing_outside_it():
    """No XLA flag, no log filter: a library user's own JAX code runs as if equivar were not there. The
    entry points set both (the API on its first call, before a backend starts)."""
    code = ("import logging, os, sys\n"
            "before = os.environ.get('XLA_FLAGS')\n"
            "import equivar, equivar.run, equivar.api, equivar.models\n"
            "assert os.environ.get('XLA_FLAGS') == before, os.environ.get('XLA_FLAGS')\n"
            "assert not logging.getLogger('jax._src.xla_bridge').filters\n"
            "from equivar.execution import set_up_process\n"
            "added = set_up_process()\n"
            "import json; print(json.dumps([before, os.environ.get('XLA_FLAGS'), added]))")
    flags = "--xla_cpu_enable_fast_math=false"  # a user's own flag
    env = os.environ | {"XLA_FLAGS": flags}
    proc = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before, after, added = json.loads(proc.stdout.strip().splitlines()[-1])
    assert before == flags
    # the check can fail: the entry point's set-up does add its flags (on the jaxlib versions it knows), after
    # the user's
    assert not added or after == " ".join([flags, *added]), proc.stdout


def _record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord("jax._src.xla_bridge", level, __file__, 1, message, None, None)


def test_the_tpu_filter_keeps_messages_about_real_problems(monkeypatch):
    flt = MissingTpuFilter()
    missing = _record("Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so: libtpu.so: cannot "
                      "open shared object file: No such file or directory")
    monkeypatch.delenv("TPU_LIBRARY_PATH", raising=False)
    monkeypatch.setattr("equivar.quiet.find_spec", lambda name: None)
    assert not flt.filter(missing)
    assert flt.filter(_record("Unable to initialize backend 'cuda': no GPU"))
    assert flt.filter(_record("A Google TPU may be present on this machine, but either a TPU-enabled jaxlib or "
                              "libtpu is not installed. Falling back to cpu.", logging.WARNING))
    # a TPU runtime is installed but does not start: that is worth seeing
    monkeypatch.setattr("equivar.quiet.find_spec", lambda name: object())
    assert flt.filter(missing)
    monkeypatch.setattr("equivar.quiet.find_spec", lambda name: None)
    monkeypatch.setenv("TPU_LIBRARY_PATH", "/opt/libtpu.so")
    assert flt.filter(missing)


# 5. run files readable like the plots

@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=["022", "077", "002"])
def test_write_json_gives_the_mode_open_would(tmp_path, umask):
    old = os.umask(umask)
    try:
        path = write_json(tmp_path / "run" / "metrics.json", {"a": 1.0, "b": float("nan")})
        with open(tmp_path / "plain.txt", "w"):
            pass
    finally:
        os.umask(old)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert json.loads(path.read_text()) == {"a": 1.0, "b": None}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]  # no temp file left behind


def test_write_json_replaces_an_existing_file(tmp_path):
    path = write_json(tmp_path / "status.json", {"status": "running"})
    write_json(path, {"status": "complete"})
    assert json.loads(path.read_text()) == {"status": "complete"}
    old = os.umask(0)
    os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~old


# 6. categorical sweeps get grouped bars

def test_a_sweep_over_a_categorical_key_draws_grouped_bars(figures, tmp_path):
    for i, pool in enumerate(["max", "mean", "blurmax"]):
        _sweep_run(tmp_path / str(i), f"zoo:\n  lenet:\n    pool: {pool}\n",
                   _models({"mlp": 0.4 + 0.1 * i, "lenet": 0.6 + 0.1 * i}))
    summary = write_report(tmp_path)
    assert summary["varying_keys"] == ["zoo.lenet.pool"]
    report_png = tmp_path / "report" / "report.png"
    assert report_png.is_file() and str(report_png) in summary["files"]
    fig = figures["report.png"]
    accuracy_ax, consistency_ax = fig.axes[0], fig.axes[3]
    assert [ax.get_title() for ax in fig.axes] == ["clean accuracy", "grid mean accuracy", "worst shift accuracy",
                                                   "consistency"]
    assert all(ax.get_ylim() == (0, 1.05) for ax in fig.axes)  # shares are drawn from 0 to 1
    for ax in (accuracy_ax, consistency_ax):
        bars = {c.get_label(): c for c in ax.containers if isinstance(c, BarContainer)}
        assert set(bars) == {"mlp", "lenet"}
        assert [t.get_text() for t in ax.get_xticklabels()] == ["max", "mean", "blurmax"]
        for model, container in bars.items():
            assert len(container.patches) == 3  # one bar per category
            assert {to_hex(p.get_facecolor()) for p in container.patches} == {model_color(model)}
            assert container.errorbar is not None  # ± std over the two seeds
        heights = [p.get_height() for p in bars["lenet"].patches]
        if ax is accuracy_ax:
            assert heights == pytest.approx([0.6, 0.7, 0.8])
        # each category's bars sit side by side, centred on its tick
        centres = np.array([[p.get_x() + p.get_width() / 2 for p in c.patches] for c in bars.values()])
        assert centres.mean(axis=0) == pytest.approx(ax.get_xticks())
        assert np.ptp(centres, axis=0) == pytest.approx([bars["mlp"].patches[0].get_width()] * 3)
    assert len(_chance_lines(accuracy_ax)) == 1 and not _chance_lines(consistency_ax)
    assert fig.axes[-1].get_legend() is not None


def test_a_numeric_sweep_keeps_the_line_plot_with_a_chance_line(figures, tmp_path):
    for i, n in enumerate([100, 200]):
        _sweep_run(tmp_path / str(i), f"dataset:\n  n_train: {n}\nzoo:\n  lenet:\n    pool: max\n",
                   _models({"mlp": 0.4, "lenet": 0.6}), n_classes=5)
    write_report(tmp_path)
    accuracy_ax = figures["report.png"].axes[0]
    assert not [c for c in accuracy_ax.containers if isinstance(c, BarContainer)]
    assert set(_line_colors(accuracy_ax)) == {"mlp", "lenet"}
    for band in accuracy_ax.collections:  # ± std over the seeds around each line (the records' std is 0.01)
        low, high = band.get_paths()[0].vertices[:, 1].min(), band.get_paths()[0].vertices[:, 1].max()
        assert (high - low) / 2 == pytest.approx(0.01) and (high + low) / 2 in (pytest.approx(0.4), pytest.approx(0.6))
    assert len(accuracy_ax.collections) == 2
    assert list(_chance_lines(accuracy_ax)[0].get_ydata()) == [0.2, 0.2]


def test_a_sweep_whose_runs_share_every_value_labels_its_bars_by_run(figures, tmp_path):
    for i in range(2):
        _sweep_run(tmp_path / str(i), "zoo:\n  lenet:\n    pool: max\n", _models({"mlp": 0.4 + 0.1 * i}))
    summary = write_report(tmp_path)
    assert summary["varying_keys"] == [] and summary["n_runs"] == 2
    assert [t.get_text() for t in figures["report.png"].axes[0].get_xticklabels()] == ["0", "1"]


def test_flatten_gives_dotted_keys_and_lists_as_one_json_value():
    from equivar.report import flatten

    assert flatten({"zoo": {"mlp": {"hidden": [8, 16]}}, "seed": 0}) == {"zoo.mlp.hidden": "[8, 16]", "seed": 0}


def test_a_log_axis_of_nonnegative_values_stays_readable():
    import matplotlib.pyplot as plt

    from equivar.plot import clipped_errors, nonnegative_log_axis

    fig, (within, with_zero) = plt.subplots(1, 2)
    within.plot([0, 1], [0.003, 0.008])
    nonnegative_log_axis(within, [0.003, 0.008])  # one decade: the decade ticks would both fall outside
    labels = [t for t, y in zip(within.get_yticklabels(), within.get_yticks()) if 0.003 <= y <= 0.008]
    assert within.get_yscale() == "log" and len(labels) >= 3 and all(t.get_text() for t in labels)
    with_zero.bar([0, 1, 2], [0.0, 1e-17, 0.01])
    nonnegative_log_axis(with_zero, [0.0, 1e-17, 0.01])  # float noise reads as 0, at most 5 decades shown
    assert with_zero.get_yscale() == "symlog" and with_zero.get_ylim()[0] == 0
    assert with_zero.yaxis.get_transform().linthresh == pytest.approx(1e-7) and with_zero.get_ylim()[1] > 0.01
    np.testing.assert_array_equal(clipped_errors([0.1, 0.5], [0.3, 0.2], 2), [[0.1, 0.2], [0.3, 0.2]])
    assert clipped_errors([0.1], [0.3], 1) is None
    plt.close(fig)
