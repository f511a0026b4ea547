"""Typed results: the shared pieces every experiment's ``Result`` (what its ``metrics.json`` holds) is built from.

An experiment's result is an :class:`ExperimentResult` whose ``models`` maps each measured model (or variant:
a padding, a pooling, an implementation) to a record, a subclass of :class:`ModelRecord` with that
experiment's measurements; a model whose every seed diverged has no measurements and is recorded under
``unmeasured`` instead. Every record carries the same seed bookkeeping (:class:`SeedRecord`, one
:class:`SeedStatus` per seed; diverged seeds are left out of every number) and the run carries one
:class:`RunStatus`, decided in one place (:meth:`ExperimentResult.finish`). A record declares its headline
numbers (:class:`Headline`), which ``python -m equivar.report`` tabulates and plots for a sweep of any
experiment.

``metrics.json`` is ``result.model_dump(mode="json")`` and reads back with ``Result.model_validate``; the JSON
Schema of each experiment's file is ``Result.model_json_schema()`` (published in docs/schemas/).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import re
from collections.abc import Callable, Sequence
from typing import Annotated, Any, ClassVar, Generic, TypeVar

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, WithJsonSchema

from equivar.metrics import mean_std


def seeds_phrase(n: int) -> str:
    """``1 seed``, ``3 seeds``."""
    return f"{n} seed" if n == 1 else f"{n} seeds"


def mean_std_text(summary: dict[str, Any], digits: int = 4) -> str:
    """``0.8620 ± 0.0075``; the mean alone when it summarises one seed (a spread of one value is no spread)."""
    mean = f"{summary['mean']:.{digits}f}"
    if summary.get("n", 2) < 2:
        return mean
    return f"{mean} ± {summary['std']:.{digits}f}"


def _nan_for_null(value: Any) -> Any:
    return math.nan if value is None else value


# A measured number: NaN (not measured, or not finite) is written as JSON null and read back as NaN.
Number = Annotated[float, BeforeValidator(_nan_for_null),
                   WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "null"}]})]


class Record(BaseModel):
    """A piece of a result: every key declared (the schema refuses others), JSON-serialisable."""

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="null")


class MeanStd(Record):
    """One number over seeds: the mean, the sample standard deviation (ddof=1; 0 for one seed) and ``n``,
    how many seeds it summarises."""

    mean: Number
    std: Number
    n: int

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray) -> MeanStd:
        """Over the leading (seed) axis of scalars."""
        return cls.model_validate(mean_std(values))

    def text(self, digits: int = 4) -> str:
        """``0.8620 ± 0.0075``; the mean alone for one seed."""
        return mean_std_text(self.model_dump(), digits)


class MeanStdSeries(Record):
    """A series (per shift, per layer position, ...) over seeds: element-wise mean and std, and ``n``."""

    mean: list[Number]
    std: list[Number]
    n: int

    @classmethod
    def of(cls, values: np.ndarray | Sequence[Sequence[float]]) -> MeanStdSeries:
        """Over the leading (seed) axis of ``(seeds, k)`` values."""
        return cls.model_validate(mean_std(np.asarray(values, dtype=np.float64)))

    def at(self, i: int) -> MeanStd:
        return MeanStd(mean=self.mean[i], std=self.std[i], n=self.n)


class MeanStdGrid(Record):
    """A grid (e.g. per (dy, dx) shift) over seeds: element-wise mean and std, and ``n``."""

    mean: list[list[Number]]
    std: list[list[Number]]
    n: int

    @classmethod
    def of(cls, values: np.ndarray | Sequence[Sequence[Sequence[float]]]) -> MeanStdGrid:
        """Over the leading (seed) axis of ``(seeds, rows, columns)`` values."""
        return cls.model_validate(mean_std(np.asarray(values, dtype=np.float64)))


class SeedStatus(enum.StrEnum):
    """How one seed's training ended."""

    OK = "ok"
    DIVERGED = "diverged"  # a non-finite loss, gradient or parameter froze it (diverged_at_step says when)


class SeedRecord(Record):
    """One seed of a measured model."""

    seed: int
    status: SeedStatus
    diverged_at_step: int | None = None
    diverged_in_epoch: int | None = None

    @property
    def ok(self) -> bool:
        return self.status is SeedStatus.OK

    @classmethod
    def from_text(cls, seed: int, text: str) -> SeedRecord:
        """From the training status text, ``ok`` or ``diverged at step S (epoch E)`` (checkpoint manifests)."""
        if text == "ok":
            return cls(seed=seed, status=SeedStatus.OK)
        found = re.match(r"diverged at step (\d+)(?: \(epoch (\d+)\))?", text)
        step, epoch = (found.group(1), found.group(2)) if found else (None, None)
        return cls(seed=seed, status=SeedStatus.DIVERGED, diverged_at_step=None if step is None else int(step),
                   diverged_in_epoch=None if epoch is None else int(epoch))

    def text(self) -> str:
        if self.ok:
            return "ok"
        if self.diverged_at_step is None:
            return "diverged"
        epoch = f" (epoch {self.diverged_in_epoch})" if self.diverged_in_epoch is not None else ""
        return f"diverged at step {self.diverged_at_step}{epoch}"


class Training(Record):
    """Training curves of a model trained in this run: per seed and epoch, the mean over the epoch's steps."""

    loss: list[list[Number]]
    accuracy: list[list[Number]]
    seconds: float
    heldout_examples: int = 0  # the first test examples, evaluated in inference mode after every epoch
    heldout_loss: list[list[Number]] | None = None
    heldout_accuracy: list[list[Number]] | None = None
    epoch_seconds: list[float] | None = None  # per epoch: the training steps (the first compiles), no evaluation
    steady_epoch_seconds: float | None = None  # the median epoch after the first: an epoch's cost once compiled


@dataclasses.dataclass(frozen=True)
class Headline:
    """A headline number of a record: where it is (a dotted path to a :class:`MeanStd`), what it is called,
    and how to draw it (``share``: a fraction in [0, 1], drawn from 0 to 1; ``log``: a positive quantity on a
    log axis)."""

    path: str
    label: str = ""
    share: bool = True
    log: bool = False

    @property
    def name(self) -> str:
        """The column name: the path with underscores (``lee_translate_x_probs_mse``)."""
        return self.path.replace(".", "_")

    @property
    def title(self) -> str:
        return self.label or self.path.replace("_", " ").replace(".", " ")


EVERY_SEED_DIVERGED = "every seed diverged"  # what a model with no healthy seed shows instead of numbers


class ModelRecord(Record):
    """What every experiment records of one model or variant; subclasses add the measurements."""

    headline: ClassVar[tuple[Headline, ...]] = ()

    target: str = ""
    source: str = "trained"  # trained, initialised, or the run folder the model was loaded from
    n_params: int | None = None
    seeds: list[SeedRecord] = []
    training: Training | None = None

    @property
    def n_diverged(self) -> int:
        return sum(not s.ok for s in self.seeds)

    def seeds_note(self) -> str:
        """`` (1/3 seeds diverged)`` where some seeds diverged (they are left out of every number), else ``""``."""
        if not self.n_diverged:
            return ""
        return f" ({self.n_diverged}/{seeds_phrase(len(self.seeds))} diverged)"

    def headline_values(self) -> dict[str, MeanStd]:
        """The record's headline numbers by name (those it has: none when every seed diverged)."""
        out = {}
        for h in self.headline:
            value = _at(self, h.path)
            if isinstance(value, MeanStd):
                out[h.name] = value
        return out


def _at(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part, None)
        if obj is None:
            return None
    return obj


class RunStatus(enum.StrEnum):
    """A run's outcome: ``partial`` when some seeds diverged, ``diverged`` when every seed of every model did
    (the CLI then exits with code 3)."""

    OK = "ok"
    PARTIAL = "partial"
    DIVERGED = "diverged"


class DatasetSummary(Record):
    name: str
    rank: int
    n_train: int
    n_test: int
    input_shape: list[int]
    n_classes: int


class Environment(Record):
    """The software and devices a run used."""

    python: str
    platform: str
    packages: dict[str, str | None]
    jax_backend: str
    devices: list[str]
    processor: str | None = None  # the CPU's model name: float results of training depend on it
    vector_isa: str | None = None  # the widest vector instruction set XLA:CPU may use here (AVX512, AVX2, ...)


R = TypeVar("R", bound=ModelRecord)


class ExperimentResult(Record, Generic[R]):
    """The keys every experiment's metrics.json holds, and ``models``: one record per model or variant."""

    experiment: str
    module: str  # the Python module that ran it (and draws and summarises it)
    dataset: DatasetSummary | None = None
    seeds: list[int] = []
    load_from: str | None = None
    status: RunStatus = RunStatus.OK
    environment: Environment | None = None
    models: dict[str, R]
    unmeasured: dict[str, ModelRecord] = {}  # models whose every seed diverged: their seeds, no numbers

    def finish(self, environment: Environment | None = None) -> None:
        """Sets the run's status from every record's seeds (records without seeds do not count) and the
        environment."""
        records: list[ModelRecord] = [*self.models.values(), *self.unmeasured.values()]
        seeds = [s for record in records for s in record.seeds]
        healthy = sum(s.ok for s in seeds)
        if healthy == len(seeds):
            self.status = RunStatus.OK
        else:
            self.status = RunStatus.DIVERGED if healthy == 0 else RunStatus.PARTIAL
        if environment is not None:
            self.environment = environment

    @property
    def n_seeds(self) -> int:
        return len(self.seeds)

    @property
    def chance(self) -> float | None:
        """1 / n_classes of the dataset (None when unknown)."""
        return 1.0 / self.dataset.n_classes if self.dataset and self.dataset.n_classes >= 1 else None

    def unmeasured_rows(self, n_cells: int, leading: Callable[[ModelRecord], list[str]] | None = None) -> list[str]:
        """Summary-table rows for the models whose every seed diverged: the name, ``leading`` cells (what is
        known without training, e.g. parameters), "every seed diverged", padded to ``n_cells`` cells."""
        rows = []
        for name, record in self.unmeasured.items():
            cells = [*(leading(record) if leading else []), EVERY_SEED_DIVERGED]
            rows.append(f"| {name} | " + " | ".join(cells + [""] * (n_cells - len(cells))) + " |")
        return rows
