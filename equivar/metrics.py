"""Pure functions of arrays: accuracies, shift consistency, and summaries over seeds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Share of correct predictions along the last axis: ``(..., N)`` against ``(N,)`` gives ``(...)``."""
    return (np.asarray(predictions) == np.asarray(labels)).mean(axis=-1)


def consistency(predictions: np.ndarray, n_classes: int) -> float:
    """Expected share of inputs whose predicted class agrees under two independent random shifts.

    ``predictions`` is ``(n_shifts, N)``, the predicted class of every input under every shift of the grid.
    Zhang (2019) samples two shifts per input; here the expectation over independent uniform draws is
    computed exactly, ``mean_i sum_c p_ic**2`` with ``p_ic`` the share of shifts predicting class ``c`` for
    input ``i``, so the number carries no sampling noise. It is 1 exactly when every input's prediction is
    the same under every shift.
    """
    predictions = np.asarray(predictions)
    n_shifts = predictions.shape[0]
    counts = np.zeros((predictions.shape[1], n_classes))
    for row in predictions:
        counts[np.arange(predictions.shape[1]), row] += 1
    share = counts / n_shifts
    return float((share**2).sum(axis=1).mean())


def consistency_by_correctness(predictions: np.ndarray, reference: np.ndarray, labels: np.ndarray,
                               n_classes: int) -> tuple[float, float]:
    """``consistency`` among the inputs the model classifies correctly unshifted, and among the others.

    A model that is right on almost every input is consistent on them almost by necessity; split this way the
    number says whether invariance holds where the model is unsure too (NaN where a group is empty).

    Args:
        predictions: ``(n_shifts, N)`` predicted classes under every shift of the grid.
        reference: ``(N,)`` predicted classes of the unshifted inputs.
        labels: ``(N,)`` true classes.
    """
    correct = np.asarray(reference) == np.asarray(labels)
    predictions = np.asarray(predictions)
    return tuple(consistency(predictions[:, group], n_classes) if group.any() else float("nan")
                 for group in (correct, ~correct))  # type: ignore[return-value]  # two floats


def worst_case_robustness(predictions: np.ndarray, offsets: np.ndarray, labels: np.ndarray,
                          radii: Sequence[float]) -> np.ndarray:
    """R(r): the share of inputs classified correctly under every shift of the grid with ``max |s| <= r``
    (the adversarial-shift accuracy of Michaeli et al. 2023), for each radius.

    Args:
        predictions: ``(n_shifts, N)`` predicted classes under every shift.
        offsets: ``(n_shifts, rank)`` the shifts.
        labels: ``(N,)`` true classes.
        radii: the radii ``r`` (each must cover at least one shift of the grid).
    """
    correct = np.asarray(predictions) == np.asarray(labels)[None, :]
    size = np.abs(np.asarray(offsets, dtype=np.float64)).max(axis=1)
    out = []
    for r in radii:
        inside = size <= r + 1e-9
        if not inside.any():
            raise ValueError(f"no shift of the grid lies within radius {r}")
        out.append(float(correct[inside].all(axis=0).mean()))
    return np.asarray(out)


def mean_std(values: Sequence[float] | np.ndarray) -> dict[str, float | int | list[float]]:
    """Mean and sample standard deviation (ddof=1; 0 for one seed) over the leading (seed) axis, and ``n``,
    the number of seeds they summarise."""
    values = np.asarray(values, dtype=np.float64)
    std = values.std(axis=0, ddof=1) if values.shape[0] > 1 else np.zeros(values.shape[1:])
    mean = values.mean(axis=0)
    if mean.ndim == 0:
        return {"mean": float(mean), "std": float(std), "n": int(values.shape[0])}
    return {"mean": mean.tolist(), "std": std.tolist(), "n": int(values.shape[0])}


def probability_change(probabilities: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute change of the predicted class's probability under the grid's shifts.

    For every input the class predicted unshifted, ``c = argmax reference``; the number is the mean over shifts
    and inputs of ``|p_c(T_s x) - p_c(x)|``. Unlike consistency it sees a wobble that does not flip the argmax
    (Zhang 2019 and Michaeli et al. 2023 report such probability stability beside consistency). 0 for an
    exactly invariant model.

    Args:
        probabilities: ``(n_shifts, N, n_classes)`` softmax probabilities under every shift.
        reference: ``(N, n_classes)`` the unshifted inputs' probabilities.
    """
    probabilities, reference = np.asarray(probabilities), np.asarray(reference)
    top = reference.argmax(-1)
    rows = np.arange(len(top))
    return float(np.abs(probabilities[:, rows, top] - reference[rows, top][None, :]).mean())
