"""Faults mid-run: SIGKILL at a random moment, Ctrl-C, and a killed sweep, each followed by the same command.

A killed run leaves no half-written file (every JSON in its folder parses), its status.json does not claim it
finished, and re-running the same command into that folder completes it. A killed sweep, re-launched into its
folder, skips its finished runs, completes the others, and its report lists every configuration once.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from equivar.report import write_report

from support import ROOT

RUN = ["experiment=shift_test", "dataset=synthetic", "models=[mlp,lenet]", "n_seeds=2", "train.epochs=6",
       "train.batch_size=32", "zoo.mlp.hidden=[16]", "zoo.lenet.channels=[4,8]", "zoo.lenet.hidden=[16]",
       "shift.max=3"]


def _start(args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"} | (env_extra or {})
    # SIGINT back to its default: a shell running the tests in the background starts them with it ignored.
    return subprocess.Popen([sys.executable, "-m", "equivar.run", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _files_are_whole(folder: Path) -> None:
    """Every JSON and YAML file under ``folder`` parses: nothing half-written (temp files are hidden and
    removed by the writer, or left behind as ``.name.XXXX`` by a kill, never as the file itself)."""
    for path in folder.rglob("*.json"):
        if not path.name.startswith("."):
            json.loads(path.read_text())
    for path in folder.rglob("*.yaml"):
        yaml.safe_load(path.read_text())


@pytest.mark.slow
def test_a_run_killed_at_a_random_moment_resumes_with_the_same_command(tmp_path):
    rng = random.Random(7)
    outcomes = []
    for trial in range(2):
        run_dir = tmp_path / f"run{trial}"
        args = RUN + [f"hydra.run.dir={run_dir}"]
        proc = _start(args)
        delay = rng.uniform(1.5, 5.5)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        _files_are_whole(run_dir)
        status = json.loads((run_dir / "status.json").read_text())["status"] \
            if (run_dir / "status.json").exists() else None
        if status != "complete":  # killed before the end: no metrics, and no claim to have finished
            assert status in (None, "running") and not (run_dir / "metrics.json").exists()
        again = subprocess.run([sys.executable, "-m", "equivar.run", *args], cwd=ROOT, capture_output=True,
                               text=True, timeout=300)
        assert again.returncode == 0, again.stderr[-2000:]
        assert json.loads((run_dir / "status.json").read_text())["status"] == "complete"
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert set(metrics["models"]) == {"mlp", "lenet"}
        _files_are_whole(run_dir)
        outcomes.append((round(delay, 1), status))
    print("kill/resume trials (delay s, status when killed):", outcomes)


@pytest.mark.slow
def test_ctrl_c_exits_130_and_records_the_interruption(tmp_path):
    run_dir = tmp_path / "run"
    proc = _start([a for a in RUN if not a.startswith("train.epochs")] + ["train.epochs=100000", f"hydra.run.dir={run_dir}"])
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until training has started
        status = run_dir / "status.json"
        if status.exists() and json.loads(status.read_text())["status"] == "running":
            break
        time.sleep(0.2)
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "equivar: interrupted" in stderr and "Traceback" not in stderr
    assert json.loads((run_dir / "status.json").read_text())["status"] == "interrupted"
    assert not (run_dir / "metrics.json").exists()


def _complete(run_dir: Path) -> bool:
    """The run's status.json says it finished (written after metrics.json and every plot)."""
    try:
        return json.loads((run_dir / "status.json").read_text()).get("status") == "complete"
    except (OSError, ValueError):  # not there yet, or caught while being replaced
        return False


@pytest.mark.slow
def test_a_killed_sweep_resumes_and_its_report_lists_each_run_once(tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["-m", "experiment=shift_test", "dataset=synthetic", "models=[mlp]", "n_seeds=1", "train.epochs=2",
            "train.batch_size=32", "zoo.mlp.hidden=[8]", "shift.max=2", "dataset.n_train=64,96,128",
            f"hydra.sweep.dir={sweep_dir}"]
    proc = _start(args)
    deadline = time.time() + 180
    while time.time() < deadline and not _complete(sweep_dir / "0"):  # metrics.json comes before the plots
        time.sleep(0.2)
    time.sleep(random.Random(3).uniform(0.0, 2.0))
    proc.send_signal(signal.SIGKILL)  # during the second job (or just after the first)
    proc.communicate()
    _files_are_whole(sweep_dir)
    finished_before = {p.parent.name for p in sweep_dir.glob("*/metrics.json")}
    assert "0" in finished_before and len(finished_before) < 3
    first_metrics = (sweep_dir / "0" / "metrics.json").read_bytes()
    again = subprocess.run([sys.executable, "-m", "equivar.run", *args], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (sweep_dir / "0" / "metrics.json").read_bytes() == first_metrics  # finished runs are skipped
    summary = write_report(sweep_dir)
    assert summary["n_runs"] == summary["finished"] == 3 and not summary["problems"]
    rows = (sweep_dir / "report" / "report.csv").read_text().splitlines()[1:]
    sizes = sorted(int(r.split(",")[1]) for r in rows)
    assert sizes == [64, 96, 128]  # each configuration once, none missing
