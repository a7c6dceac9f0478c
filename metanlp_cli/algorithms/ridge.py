"""A differentiable closed-form ridge-regression head (Bertinetto et al. 2019, R2D2; the classifier of
Bao et al. 2020): fitted on the support embeddings X [n, d] and one-hot labels Y [n, N] by
W = argmin ||X W - Y||^2 + lambda ||W||^2, the query logits are scale * X_q W + bias.

W = (X^T X + lambda I_d)^-1 X^T Y (primal, a d x d system) equals X^T (X X^T + lambda I_n)^-1 Y (dual, by
the Woodbury identity; an n x n system): solved in the dual when the support set is smaller than the
embedding (n < d, the usual few-shot case), else in the primal. lambda = exp(log_lambda), scale and bias
are meta-learned. Under the softmax cross-entropy a bias shared by all classes cancels; it is kept as in
the papers and matters in the regression path.

A regression episode fits the support targets y the same way, with an intercept: X and y are centred
on their support means, and the prediction is scale * (x - mean_X) W + mean_y + bias.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metanlp_cli.algorithms.base import LabelSpace
from metanlp_cli.algorithms.metric_learner import FittedHead, MetricLearner, one_hot
from metanlp_cli.sampling import Batch


def ridge_solution(features: torch.Tensor, targets: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """[dim, outputs]: the ridge-regression weights, by the smaller of the dual and primal systems."""
    examples, dim = features.shape
    if examples < dim:
        gram = features @ features.T + penalty * torch.eye(examples, dtype=features.dtype, device=features.device)
        return features.T @ torch.linalg.solve(gram, targets)
    gram = features.T @ features + penalty * torch.eye(dim, dtype=features.dtype, device=features.device)
    return torch.linalg.solve(gram, features.T @ targets)


class RidgeHead(nn.Module):
    def __init__(self, init_lambda: float, init_scale: float) -> None:
        super().__init__()
        if init_lambda <= 0:
            raise ValueError(f"init_lambda={init_lambda} must be > 0")
        self.log_lambda = nn.Parameter(torch.tensor(math.log(init_lambda)))
        self.scale = nn.Parameter(torch.tensor(float(init_scale)))
        self.bias = nn.Parameter(torch.tensor(0.0))

    def fit(self, features: torch.Tensor, support: Batch) -> FittedHead:
        penalty = self.log_lambda.exp()
        if support.is_regression:
            feature_mean, targets = features.mean(0), support.labels.to(features.dtype)
            target_mean = targets.mean()
            weights = ridge_solution(features - feature_mean, (targets - target_mean).unsqueeze(1), penalty)
            return lambda queries: self.scale * (queries - feature_mean) @ weights + target_mean + self.bias
        weights = ridge_solution(features, one_hot(support.labels, len(support.classes), features.dtype), penalty)
        return lambda queries: self.scale * queries @ weights + self.bias


class Ridge(MetricLearner):
    """`init_lambda` starts the learned ridge penalty, `init_scale` the learned scale of the logits."""

    def __init__(
        self, encoder: nn.Module, label_space: LabelSpace, init_lambda: float = 1.0, init_scale: float = 10.0
    ) -> None:
        super().__init__(encoder, RidgeHead(init_lambda, init_scale))
