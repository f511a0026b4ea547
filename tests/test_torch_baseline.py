"""The PyTorch baseline of the bench's study: it measures what equivar measures, and without torch the bench's
PyTorch rows are notes, not crashes."""

import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from equivar.metrics import consistency
from equivar.tools import bench
from equivar.transforms import shift


def test_without_torch_the_pytorch_rows_are_notes(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    assert bench.torch_reference("lenet", 8, 2, 8, 0.01) is None
    assert "torch not installed" in bench.torch_baseline()["error"]


def test_the_script_without_torch_says_what_to_install():
    """``python -m equivar.tools.torch_baseline`` where torch cannot be imported: a one-line message, not a traceback."""
    code = ("import runpy, sys; sys.modules['torch'] = None; "
            "runpy.run_module('equivar.tools.torch_baseline', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "needs PyTorch" in proc.stderr and "pip install torch" in proc.stderr


def _fake_study(seconds: float, train: float, evaluation: float, numbers: object):
    return {"command": "python -m equivar.run ...", "seconds": seconds, "n_seeds": 3, "numbers": numbers,
            "models": {"mlp": {"n_params": 1, "train_seconds": train, "eval_seconds": evaluation,
                               "clean_accuracy": 0.97, "clean_accuracy_std": 0.001, "consistency": 0.3,
                               "consistency_std": 0.01}}}


def test_the_study_ratios_are_pytorch_seconds_over_equivar_seconds(monkeypatch):
    runs = iter([_fake_study(100.0, 40.0, 10.0, {"a": 1}), _fake_study(80.0, 30.0, 8.0, {"a": 1})])
    monkeypatch.setattr(bench, "study", lambda command, cache_dir=None: next(runs))
    reference = _fake_study(60.0, 30.0, 12.0, None) | {"command": "python -m equivar.tools.torch_baseline", "torch": "2",
                                                       "threads": 2, "load_seconds": 5.0}
    monkeypatch.setattr(bench, "torch_baseline", lambda: reference)
    notes: list[str] = []
    pair = bench.study_against_torch(notes)
    assert not notes and pair["warm_metrics_identical"] is True
    assert pair["cold"]["ratio_to_torch"] == pytest.approx(0.6) and pair["warm"]["ratio_to_torch"] == 0.75
    assert pair["cold"]["models"]["mlp"]["train_ratio_to_torch"] == 0.75
    assert pair["cold"]["models"]["mlp"]["eval_ratio_to_torch"] == 1.2
    table = "\n".join(bench._pair_table(pair))
    assert "| study.mnist_mlp_lenet.cold | 100.0 | 0.60× |" in table
    assert "| study.mnist_mlp_lenet.warm.mlp | | | 30.0 | 1.00× | 8.0 | 1.50× |" in table


def test_the_default_study_is_reported_in_units_of_the_pytorch_job_of_the_same_run():
    """The four-model study cannot run in PyTorch; its seconds over the PyTorch MLP + LeNet job's seconds, both
    from one bench run, is the machine-independent number to compare between versions."""
    record = _fake_study(400.0, 40.0, 10.0, None)
    record.pop("numbers")
    for what in ("grid_mean_accuracy", "worst_shift_accuracy"):
        record["models"]["mlp"] |= {what: 0.5, what + "_std": 0.01}
    reference = _fake_study(100.0, 30.0, 12.0, None) | {"command": "python -m equivar.tools.torch_baseline"}
    result = {"backend": "cpu", "devices": ["cpu:0"], "jax": "x", "matmul_peak_gflops": 1.0, "batch_size": 128,
              "repeat": 1, "cases": {}, "notes": [], "study": {"mnist_shift_test": record},
              "study_vs_torch": {"cold": _fake_study(120.0, 40.0, 10.0, None), "torch": reference | {
                  "torch": "2", "threads": 2, "load_seconds": 5.0}}}
    assert "cold compilation cache: 400 s (4.00 times the PyTorch script's MLP + LeNet job of the same bench " \
           "run, 100.0 s; its training 40 s, 1.33 times the script's, 30.0 s)" in bench.format_table(result)
    del result["study_vs_torch"]["torch"]
    assert "cold compilation cache: 400 s\n" in bench.format_table(result)


def test_a_warm_run_that_measures_differently_is_flagged_and_a_missing_torch_is_a_note(monkeypatch):
    runs = iter([_fake_study(100.0, 40.0, 10.0, {"a": 1}), _fake_study(80.0, 30.0, 8.0, {"a": 2})])
    monkeypatch.setattr(bench, "study", lambda command, cache_dir=None: next(runs))
    monkeypatch.setattr(bench, "torch_baseline", lambda: {"error": "torch not installed"})
    notes: list[str] = []
    pair = bench.study_against_torch(notes)
    assert pair["warm_metrics_identical"] is False and "torch" not in pair
    assert notes == ["no PyTorch study: torch not installed"]
    assert "identical to cold: NO" in "\n".join(bench._pair_table(pair))


def test_the_scripts_shifts_and_consistency_are_equivars():
    """The baseline's roll, zero-canvas and reflect-canvas crops (channels-first) equal equivar's ``roll``,
    ``zero`` and ``bilinear-reflect`` shifts at integer offsets, and its consistency equals equivar's."""
    torch = pytest.importorskip("torch")
    from equivar.tools.torch_baseline import consistency as torch_consistency
    from equivar.tools.torch_baseline import crop_shift

    x = np.random.default_rng(0).random((3, 7, 6, 1), dtype=np.float32)  # channels-last, as equivar
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    for dy, dx in [(0, 0), (2, -3), (-4, 1), (3, 3)]:
        for ours, mode in [(torch.roll(xt, (dy, dx), dims=(2, 3)), "roll"), (crop_shift(xt, dy, dx, "zero"), "zero"),
                           (crop_shift(xt, dy, dx, "reflect"), "bilinear-reflect")]:
            expected = np.asarray(shift(jnp.asarray(x), (dy, dx), mode)).transpose(0, 3, 1, 2)
            np.testing.assert_allclose(ours.numpy(), expected, atol=1e-6, err_msg=f"{mode} {dy, dx}")
    predictions = np.random.default_rng(1).integers(0, 10, (9, 50))
    assert torch_consistency(predictions) == pytest.approx(consistency(predictions, 10), abs=1e-12)
