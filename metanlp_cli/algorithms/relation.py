"""Relation Networks (Sung et al. 2018): a learned relation module g scores each (query, class) pair,
r_c(x) = sigmoid(g([f(x); c_c])), where the class representation c_c is the sum (the paper's, for K
shots) or the mean of the class's support embeddings f(x_i). The meta-loss is the paper's squared error
of r against the one-hot labels (summed over the classes, averaged over the queries), or cross-entropy
over the scores' logits (`loss`).

g is the text version of the paper's module (two convolution blocks and two fully connected layers on
image feature maps): two fully connected layers on the concatenated embeddings. The learner's outputs
are the logits g(...) before the sigmoid: the same ranking, and the logits that cross-entropy needs.
g starts as a negative distance between the query and the class (`RelationModule.start_as_a_distance`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metanlp_cli.algorithms.base import LabelSpace
from metanlp_cli.algorithms.metric_learner import FittedHead, MetricLearner, no_regression, relation_loss
from metanlp_cli.algorithms.protonet import class_means
from metanlp_cli.sampling import Batch

AGGREGATIONS = ("sum", "mean")


def class_representations(features: torch.Tensor, labels: torch.Tensor, n_way: int, aggregation: str) -> torch.Tensor:
    """[classes, dim]: the sum or the mean of each class's support embeddings."""
    if aggregation == "mean":
        return class_means(features, labels, n_way)
    return features.new_zeros(n_way, features.shape[1]).index_add(0, labels, features)


class RelationModule(nn.Module):
    """g([x; c]) for every query x and class c: [queries, classes] relation logits."""

    def __init__(self, dim: int, hidden_size: int) -> None:
        super().__init__()
        if hidden_size < 2 or hidden_size % 2:
            raise ValueError(f"hidden_size={hidden_size} must be even and >= 2")
        self.layers = nn.Sequential(nn.Linear(2 * dim, hidden_size), nn.ReLU(), nn.Linear(hidden_size, 1))
        self.start_as_a_distance()

    @torch.no_grad()
    def start_as_a_distance(self) -> None:
        """Initialise g to -(2/H) sqrt(pi/2) sum_h relu(+-a_h . (x - c)) = -mean_h |a_h . (x - c)| sqrt(pi/2)
        over H/2 directions a_h ~ N(0, I): the negative euclidean distance ||x - c|| in expectation. With
        the default initialisation the logits start close to additive, u(x) + v(c), whose ranking of the
        classes is the same for every query, and the MSE loss is at its plateau (every score 1/N) long
        before g learns an interaction."""
        first, second = self.layers[0], self.layers[2]
        half, dim = first.out_features // 2, first.in_features // 2
        directions = torch.randn(half, dim, dtype=first.weight.dtype, device=first.weight.device)
        pairs = torch.cat([directions, -directions], dim=1)  # a . x - a . c
        first.weight.copy_(torch.cat([pairs, -pairs]))
        first.bias.zero_()
        second.weight.fill_(-math.sqrt(math.pi / 2) / half)
        second.bias.zero_()

    def forward(self, queries: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        pairs = torch.cat(
            [queries.unsqueeze(1).expand(-1, len(classes), -1), classes.unsqueeze(0).expand(len(queries), -1, -1)],
            dim=2,
        )
        return self.layers(pairs).squeeze(2)


class RelationHead(nn.Module):
    def __init__(self, dim: int, hidden_size: int, aggregation: str, loss: str) -> None:
        super().__init__()
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation={aggregation!r} is not allowed; allowed: {', '.join(AGGREGATIONS)}")
        self.relation = RelationModule(dim, hidden_size)
        self.aggregation, self.loss = aggregation, relation_loss(loss)

    def fit(self, features: torch.Tensor, support: Batch) -> FittedHead:
        no_regression("relation", support=support)
        classes = class_representations(features, support.labels, len(support.classes), self.aggregation)
        return lambda queries: self.relation(queries, classes)


class Relation(MetricLearner):
    """`hidden_size` (even) is the relation module's hidden layer; `aggregation` mean | sum builds the class
    representations (mean by default: g starts as a distance between a query and a class representation,
    which a sum of K embeddings is not comparable to; the paper's sum equals the mean at K = 1);
    `loss` mse | cross_entropy."""

    def __init__(
        self,
        encoder: nn.Module,
        label_space: LabelSpace,
        hidden_size: int = 128,
        aggregation: str = "mean",
        loss: str = "mse",
    ) -> None:
        no_regression("relation", label_space)
        super().__init__(encoder, RelationHead(encoder.output_dim, hidden_size, aggregation, loss))
