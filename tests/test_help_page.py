"""The command's front door: ``equivar --help`` and ``--version`` are equivar's own pages."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import equivar
from equivar.help_page import experiment_questions

ROOT = Path(__file__).resolve().parent.parent
CONSOLE_SCRIPT = Path(sys.executable).parent / "equivar"


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_every_builtin_experiment_states_its_question():
    questions = experiment_questions(ROOT / "conf")
    assert set(questions) == {p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml")}
    for name, question in questions.items():
        assert question.endswith(("?", ".")) and len(question) < 100, (name, question)
        assert "no '# Question:' line" not in question, name


def test_a_header_without_a_question_says_so(tmp_path):
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "mine.yaml").write_text("# @package _global_\n# python -m equivar.run ...\n")
    assert "no '# Question:' line" in experiment_questions(tmp_path)["mine"]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["console script", "python -m"])
def test_help_is_equivars_own_page(how, tmp_path):
    command = [str(CONSOLE_SCRIPT)] if how == "console script" else [sys.executable, "-m", "equivar.run"]
    if how == "console script" and not CONSOLE_SCRIPT.exists():
        pytest.skip("the equivar console script is not installed beside this Python")
    result = _run([*command, "--help"], cwd=tmp_path)  # anywhere, not only in the repository
    assert result.returncode == 0, result.stderr
    page = result.stdout
    assert page.startswith(f"equivar {equivar.__version__} (jax ")
    for name, question in experiment_questions(ROOT / "conf").items():
        assert name in page, name
        assert question.split()[0] in page  # wrapped, so only its first word is sure to be on one line
    # the options as the default run composes them, not the schema's bare defaults
    assert "models=[mlp,lenet,local,cnn_aps]" in page and "train.epochs=60" in page and "shift.max=20" in page
    for internal in ("powered by Hydra", "schema", "dataset_schema", "options/", "== Config =="):
        assert internal not in page, internal
    assert not list(tmp_path.iterdir()), "--help must not start a run"


@pytest.mark.slow
def test_version_is_equivars():
    result = _run([sys.executable, "-m", "equivar.run", "--version"], cwd=ROOT)
    assert result.returncode == 0
    assert result.stdout.startswith(f"equivar {equivar.__version__} (jax ")
    assert "Hydra" not in result.stdout
