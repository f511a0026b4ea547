"""Every command in docs/ that re-measures with ``load_from`` works on the run it refers to.

"That run" is the nearest ``experiment=shift_test`` command before it in the same page, else the README's
default run (``python -m equivar.run experiment=shift_test``). Both are run tiny (one seed, one epoch, a few
hundred examples) into a temporary folder, then the re-measuring command with its own overrides: a default
that drifts away from what the default run trains (a model it no longer trains, another dataset) fails here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from equivar.run import run_experiment

from support import ROOT, TINY, compose_raw, mnist_dir

DOCS = ROOT / "docs"
README_DEFAULT = ("experiment=shift_test",)
# Each run small (the tiny preset, for training and re-measuring alike: a checkpoint is checked against the
# options it was trained with); the command's own overrides (models, dataset, modes) are kept.
TINY_TRAIN = [*TINY, "n_seeds=1", "train.epochs=1"]


def docs_commands(text: str) -> list[tuple[str, ...]]:
    """The ``python -m equivar.run`` commands of a page in order, as override tuples: lines of code blocks
    (with ``\\`` continuations) and inline code spans (which may wrap lines); comments dropped."""
    commands = []
    for k, segment in enumerate(text.split("```")):
        if k % 2:  # a fenced code block
            pieces = segment.replace("\\\n", " ").splitlines()
        else:  # prose: its inline code spans
            pieces = [m.group(1).replace("\n", " ") for m in re.finditer(r"`([^`]+)`", segment)]
        for piece in pieces:
            if "python -m equivar.run" in piece:
                tail = piece.split("python -m equivar.run", 1)[1].split(" #", 1)[0]
                commands.append(tuple(shlex.split(tail.replace("<", "'<").replace(">", ">'"))))
    return commands


def load_commands() -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """``(page, that run's overrides, the re-measuring command's overrides)`` for every load_from command."""
    out = []
    for page in sorted(DOCS.glob("*.md")):
        if page.name in ("reliability.md", "configuration.md"):  # tables of refused mistakes, generated text
            continue
        train: tuple[str, ...] = README_DEFAULT
        for command in docs_commands(page.read_text()):
            if any(a.startswith("load_from=") for a in command):
                out.append((page.name, train, command))
            elif "experiment=shift_test" in command and "-m" not in command:
                train = command
    return out


COMMANDS = load_commands()


def _dataset_kind(overrides: tuple[str, ...]) -> str:
    chosen = next((a.split("=", 1)[1] for a in overrides if a.startswith("dataset=")), "mnist1d")
    return "mnist1d" if chosen == "mnist1d" else "tfds"


def test_the_docs_have_load_from_commands():
    """The parser finds the pages' re-measuring commands (a parser that finds none would test nothing)."""
    pages = {page for page, _, _ in COMMANDS}
    assert {"lie_derivative.md", "your_model.md", "shift_test.md", "equivariance.md"} <= pages, pages
    assert all(any(a.startswith("experiment=") for a in c) for _, _, c in COMMANDS)


@pytest.mark.slow  # one tiny training per distinct "that run", then every command: about 2 minutes
def test_every_docs_load_from_command_runs_on_the_run_it_names(tmp_path, monkeypatch):
    trained: dict[tuple[str, ...], Path] = {}
    failures = []
    for i, (page, train, command) in enumerate(COMMANDS):
        kind = _dataset_kind(train)
        if kind == "tfds":
            if mnist_dir() is None:
                continue
            monkeypatch.setenv("TFDS_DATA_DIR", str(mnist_dir()))
        if train not in trained:
            folder = tmp_path / f"train{len(trained)}"
            run_experiment(compose_raw([*train, *TINY_TRAIN]), folder)
            trained[train] = folder
        overrides = [a for a in command if not a.startswith("load_from=")]
        overrides += [f"load_from={trained[train]}", *TINY]
        try:
            run_experiment(compose_raw(overrides), tmp_path / f"measure{i}")
        except Exception as err:  # collect them all: one test names every broken command
            failures.append(f"{page}: {' '.join(command)} -> {type(err).__name__}: {str(err).splitlines()[0]}")
    assert not failures, "\n".join(failures)
