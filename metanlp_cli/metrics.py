"""Scores: accuracy and the GLUE metrics (scikit-learn / scipy, no network). Their uncertainty
(confidence intervals, paired differences) is stats.py."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import stats
from sklearn.metrics import f1_score, matthews_corrcoef


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(dim=-1) == labels).float().mean().item()


def _constant(values: np.ndarray) -> bool:
    return values.size < 2 or bool(np.all(values == values.flat[0]))


def _accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predictions == labels))


def _f1(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Binary F1 of the positive class 1 (MRPC, QQP), as GLUE reports it."""
    return float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0.0))


def _mcc(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation (CoLA); 0 when either side has a single class."""
    if _constant(predictions) or _constant(labels):
        return 0.0
    return float(matthews_corrcoef(labels, predictions))


def _pearson(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Pearson r (STS-B); 0 when either side is constant (the correlation is undefined there)."""
    if _constant(predictions) or _constant(labels):
        return 0.0
    return float(stats.pearsonr(predictions, labels).statistic)


def _spearman(predictions: np.ndarray, labels: np.ndarray) -> float:
    if _constant(predictions) or _constant(labels):
        return 0.0
    return float(stats.spearmanr(predictions, labels).statistic)


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": _accuracy,
    "f1": _f1,
    "mcc": _mcc,
    "pearson": _pearson,
    "spearman": _spearman,
}
# The metrics of a regression target (STS-B); the others score class predictions.
REGRESSION_METRICS = ("pearson", "spearman")


def task_scores(metric_names: Sequence[str], predictions: Sequence, labels: Sequence) -> dict[str, float]:
    """The named metrics of one task, plus `combined` (their mean) where there are several, as GLUE does."""
    unknown = [name for name in metric_names if name not in METRICS]
    if unknown:
        raise ValueError(f"metrics {unknown} are not known; allowed: {', '.join(METRICS)}")
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    scores = {name: METRICS[name](predictions, labels) for name in metric_names}
    if len(scores) > 1:
        scores["combined"] = float(np.mean(list(scores.values())))
    return scores
