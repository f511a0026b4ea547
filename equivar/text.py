"""How numbers read in printed summaries: seed counts and mean ± std (no "± 0" for a single seed)."""

from __future__ import annotations

from typing import Any


def seeds_phrase(n: int) -> str:
    """``1 seed``, ``3 seeds``."""
    return f"{n} seed" if n == 1 else f"{n} seeds"


def mean_std_text(summary: dict[str, Any], digits: int = 4) -> str:
    """``0.8620 ± 0.0075``; the mean alone when it summarises one seed (a spread of one value is no spread)."""
    mean = f"{summary['mean']:.{digits}f}"
    if summary.get("n", 2) < 2:
        return mean
    return f"{mean} ± {summary['std']:.{digits}f}"
