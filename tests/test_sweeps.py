"""Sweeps: the report of a multirun folder, the joblib and submitit launchers, and resuming a sweep."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from equivar.report import write_report

from support import CONF, ROOT, TINY, cli, fake_seeds, fake_shift_record, fake_shift_result

TINY_SWEEP = ["experiment=shift_test", "dataset=synthetic", "models=[mlp]", *TINY, "n_seeds=1", "train.epochs=1",
              "shift.max=2"]


def _fake_run(folder: Path, n_train: int, aug: int, status: str, accuracy: float | None = None) -> None:
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(
        f"experiment_name: shift_test\nseed: 0\ndataset:\n  n_train: {n_train}\n  _target_: equivar.data.MNIST1D\n"
        f"train:\n  augment_shift: {aug}\n  epochs: 30\n")
    (folder / "status.json").write_text(json.dumps({"status": status, "error": "RuntimeError: boom"
                                                    if status == "failed" else None}))
    if accuracy is not None:
        models = {m: fake_shift_record(m, accuracy + i) for i, m in enumerate(["mlp", "lenet"])}
        (folder / "metrics.json").write_text(json.dumps(fake_shift_result(models).model_dump(mode="json")))


def test_report_of_a_multirun_folder_lists_every_run(tmp_path):
    _fake_run(tmp_path / "0", 250, 0, "complete", 0.1)
    _fake_run(tmp_path / "1", 1000, 0, "complete", 0.2)
    _fake_run(tmp_path / "2", 250, 20, "failed")
    _fake_run(tmp_path / "10", 1000, 20, "running")
    summary = write_report(tmp_path)
    assert summary["varying_keys"] == ["dataset.n_train", "train.augment_shift"]
    assert summary["finished"] == 2 and summary["n_runs"] == 4
    assert [(p["run"], p["status"]) for p in summary["problems"]] == [("2", "failed"), ("10", "running")]
    rows = (tmp_path / "report" / "report.csv").read_text().splitlines()
    assert rows[0] == ("run,dataset.n_train,train.augment_shift,model,status,clean_accuracy_mean,"
                       "clean_accuracy_std,grid_mean_accuracy_mean,grid_mean_accuracy_std,"
                       "worst_shift_accuracy_mean,worst_shift_accuracy_std,consistency_mean,consistency_std")
    assert [",".join(r.split(",")[:7]) + "," + ",".join(r.split(",")[-2:]) for r in rows[1:]] == [
        "0,250,0,mlp,ok,0.1,0.01,0.5,0.0", "0,250,0,lenet,ok,1.1,0.01,0.5,0.0",
        "1,1000,0,mlp,ok,0.2,0.01,0.5,0.0", "1,1000,0,lenet,ok,1.2,0.01,0.5,0.0"]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "Failed or unfinished runs: 2" in markdown and "`2`: failed (RuntimeError: boom)" in markdown
    assert markdown.startswith(f"# Report of {tmp_path}\n")
    assert (tmp_path / "report" / "report.png").is_file()
    assert summary["sweep_dir"] == str(tmp_path) and summary["problems"][0]["error"] == "RuntimeError: boom"
    assert json.loads((tmp_path / "report" / "report.json").read_text()) == summary


def test_a_run_without_status_json_is_complete_with_metrics_and_unfinished_without(tmp_path):
    _fake_run(tmp_path / "0", 250, 0, "complete", 0.1)
    _fake_run(tmp_path / "1", 1000, 0, "complete", 0.2)
    _fake_run(tmp_path / "2", 4000, 0, "complete")
    for run in ("1", "2"):  # a run folder from before status.json, or one Hydra made but never started
        (tmp_path / run / "status.json").unlink()
    summary = write_report(tmp_path)
    assert summary["finished"] == 2 and [(p["run"], p["status"]) for p in summary["problems"]] == [("2", "unfinished")]


def _sweep(args, sweep_dir, timeout=600):
    return subprocess.run([sys.executable, "-m", "equivar.run", "-m", *args, f"hydra.sweep.dir={sweep_dir}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _complete(run_dir: Path) -> bool:
    status = run_dir / "status.json"
    return (run_dir / "metrics.json").is_file() and json.loads(status.read_text())["status"] == "complete"


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["local_parallel", "submitit_local"])
def test_tiny_sweep_through_a_launcher_completes_every_run(launcher, tmp_path):
    extra = ["hydra.launcher.timeout_min=5"] if launcher == "submitit_local" else []
    proc = _sweep(TINY_SWEEP + ["dataset.n_train=64,96", f"hydra/launcher={launcher}"] + extra, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _complete(tmp_path / "0") and _complete(tmp_path / "1")
    sizes = {json.loads((tmp_path / d / "metrics.json").read_text())["dataset"]["n_train"] for d in "01"}
    assert sizes == {64, 96}


@pytest.mark.slow
def test_an_interrupted_sweep_resumes_without_recomputing_finished_runs(tmp_path):
    args = ["-m", *TINY_SWEEP, "dataset.n_train=64,96", f"hydra.sweep.dir={tmp_path}"]  # jobs in this process
    assert cli(args, tmp_path).returncode == 0
    finished = (tmp_path / "0" / "metrics.json").stat().st_mtime_ns
    # job 1 "was interrupted": its status says so and it has no metrics.json
    (tmp_path / "1" / "metrics.json").unlink()
    (tmp_path / "1" / "status.json").write_text(json.dumps({"status": "interrupted"}))
    proc = cli(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "0" / "metrics.json").stat().st_mtime_ns == finished  # skipped, not recomputed
    assert "already holds this run, complete: skipped" in (tmp_path / "0" / "run.log").read_text()
    assert _complete(tmp_path / "1")


def test_sample_efficiency_defines_its_sweep_and_report():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=sample_efficiency"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert params["dataset.n_train"] == "250,500,1000,2000,4000" and params["train.augment_shift"] == "0,20"
    assert cfg.hydra.callbacks.report._target_ == "equivar.report.ReportCallback"


def test_slurm_launcher_config_composes():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=shift_test", "hydra/launcher=slurm"],
                      return_hydra_config=True)
    assert "SlurmLauncher" in cfg.hydra.launcher._target_ and cfg.hydra.launcher.gpus_per_node == 1


def test_a_diverged_run_is_counted_once_and_its_models_are_rows_without_numbers(tmp_path):
    _fake_run(tmp_path / "0", 250, 0, "complete", 0.1)
    folder = tmp_path / "1"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text("experiment_name: shift_test\nseed: 0\ndataset:\n  n_train: 1000\n"
                                                   "  _target_: equivar.data.MNIST1D\n"
                                                   "train:\n  augment_shift: 0\n  epochs: 30\n")
    (folder / "status.json").write_text(json.dumps({"status": "diverged"}))
    lost = {m: {"target": m, "seeds": fake_seeds(["diverged at step 4 (epoch 1)"] * 2)} for m in ("mlp", "lenet")}
    (folder / "metrics.json").write_text(json.dumps(fake_shift_result({}, unmeasured=lost).model_dump(mode="json")))
    summary = write_report(tmp_path)
    assert summary["n_runs"] == 2 and summary["finished"] == 2 and summary["problems"] == []
    rows = (tmp_path / "report" / "report.csv").read_text().splitlines()[1:]
    assert len(rows) == 4 and [r.split(",")[:4] for r in rows[2:]] == [["1", "1000", "mlp", "every seed diverged"],
                                                                      ["1", "1000", "lenet", "every seed diverged"]]
    assert all(r.endswith(",,,,,,,,") for r in rows[2:])  # no numbers for a model that has none


def test_report_command_prints_the_table_and_refuses_a_missing_folder(tmp_path, capsys):
    from equivar.report import main

    _fake_run(tmp_path / "0", 250, 0, "complete", 0.1)
    assert main([str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith(f"# Report of {tmp_path}\n")
    assert main([str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"equivar.report: error: {tmp_path / 'nope'} is not a folder\n"
