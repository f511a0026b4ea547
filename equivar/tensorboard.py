"""Live training curves for TensorBoard: one event folder per model and seed under ``<run>/tensorboard/``.

Written through tensorboardX's ``SummaryWriter`` (the standard event format, no TensorFlow needed) after every
epoch, outside the compiled steps: ``train/loss``, ``train/accuracy``, ``heldout/loss``, ``heldout/accuracy``
at step = epoch (1-based). ``tensorboard --logdir outputs`` shows every run; ``--logdir <run>/tensorboard``
one run, with its models and seeds as separate curves.
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import numpy as np

TENSORBOARD = "tensorboard"


class EpochWriter:
    """Writes each epoch's per-seed numbers of one model (``fit``'s ``on_epoch``) as TensorBoard scalars."""

    def __init__(self, run_dir: Path, model: str, seeds: list[int]):
        from tensorboardX import SummaryWriter

        self.writers = [SummaryWriter(logdir=str(Path(run_dir) / TENSORBOARD / model / f"seed_{seed}"),
                                      flush_secs=30) for seed in seeds]

    def __call__(self, epoch: int, numbers: dict[str, np.ndarray]) -> None:
        for name, values in numbers.items():
            part, _, metric = name.partition("_")
            for writer, value in zip(self.writers, np.asarray(values, np.float64)):
                if np.isfinite(value):  # a diverged seed's curve ends where it diverged
                    writer.add_scalar(f"{part}/{metric}", float(value), epoch + 1)
        for writer in self.writers:
            writer.flush()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()

    def __enter__(self) -> EpochWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
