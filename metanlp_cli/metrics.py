"""Scores and their uncertainty."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

Z_95 = 1.959963984540054  # two-sided 95% quantile of the standard normal


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=-1) == labels).float().mean().item()


def mean_confidence_interval(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation and the 95% CI half-width 1.96 * std / sqrt(n), the few-shot
    convention (Snell et al. 2017; Bao et al. 2020) over a fixed set of test episodes."""
    array = np.asarray(values, dtype=np.float64)
    count = int(array.size)
    std = float(array.std(ddof=1)) if count > 1 else 0.0
    return {
        "mean": float(array.mean()) if count else math.nan,
        "std": std,
        "ci95": Z_95 * std / math.sqrt(count) if count > 1 else math.nan,
        "count": count,
    }
