"""Uncertainty, in one place: the mean and 95% CI of a score over test episodes or over seeds, the paired
difference of two methods scored on the same episodes / seeds / tasks, and how a score is printed.

- Over a fixed set of test episodes (hundreds): the few-shot convention, 1.96 * std / sqrt(n) (Snell et al.
  2017; Bao et al. 2020), `mean_confidence_interval`.
- Over a handful of seeds or folds, and for every paired difference: Student's t with n - 1 degrees of
  freedom, `seed_confidence_interval` and `paired_difference` (the CI of a paired t-test).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

Z_95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def _summary(values: Sequence[float], quantile: float | None) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    count = int(array.size)
    std = float(array.std(ddof=1)) if count > 1 else 0.0
    half_width = quantile * std / math.sqrt(count) if count > 1 and quantile is not None else math.nan
    return {"mean": float(array.mean()) if count else math.nan, "std": std, "ci95": half_width, "count": count}


def mean_confidence_interval(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation and the 95% CI half-width 1.96 * std / sqrt(n), the few-shot
    convention over a fixed set of test episodes."""
    return _summary(values, Z_95)


def seed_confidence_interval(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation and the Student-t 95% CI half-width over a few seeds or folds."""
    count = len(values)
    return _summary(values, float(stats.t.ppf(0.975, count - 1)) if count > 1 else None)


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Mean of a - b over paired units (the same episodes, seeds or tasks), with the Student-t 95% CI of a
    paired t-test: `ci95` its half-width, `low`/`high` its ends."""
    if len(a) != len(b):
        raise ValueError(f"a paired difference needs the same units on both sides; got {len(a)} and {len(b)}")
    difference = seed_confidence_interval(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    return {
        **difference,
        "low": difference["mean"] - difference["ci95"],
        "high": difference["mean"] + difference["ci95"],
    }


def format_score(score: dict, signed: bool = False) -> str:
    """A score in percent, `72.50 +/- 1.20` (its 95% CI), or `72.50` where it has no CI; `+7.50 +/- 4.90`
    for a difference."""
    mean = f"{100 * score['mean']:{'+' if signed else ''}.2f}"
    ci = score.get("ci95", math.nan)
    return f"{mean} +/- {100 * ci:.2f}" if ci is not None and math.isfinite(ci) else mean
