"""Induction Networks (Geng et al. 2019): dynamic routing induces one vector per class from its support
embeddings, and a neural tensor layer scores each (query, class vector) pair.

Induction (their Algorithm 1): e_hat_ij = squash(W_s e_ij + b_s) for the support embeddings e_ij of
class i; coupling logits b_ij = 0; then `routing_iterations` times: d_i = softmax_j(b_i),
c_i = squash(sum_j d_ij e_hat_ij), b_ij += e_hat_ij . c_i. Here squash(x) = ||x||^2 / (1 + ||x||^2) x / ||x||.
Relation: v_h(c_i, e_q) = relu(c_i^T M_h e_q) for the `relation_slices` matrices M_h, and the score
r_iq = sigmoid(w_r . v(c_i, e_q) + b_r), trained by the mean squared error against the one-hot labels
(`loss=cross_entropy` takes cross-entropy over the logits w_r . v + b_r instead).

Initialisation (the paper does not give one): W_s = I, b_s = 0, M_h = I + noise and w_r = 1/h, b_r = 0,
so that the first logits are about the similarity c_i . e_q of the (centred) embeddings.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from metanlp_cli.algorithms.base import LabelSpace
from metanlp_cli.algorithms.metric_learner import FittedHead, MetricLearner, no_regression, one_hot, relation_loss
from metanlp_cli.sampling import Batch


def squash(vectors: torch.Tensor) -> torch.Tensor:
    """The capsule non-linearity along the last dimension: the direction kept, the norm mapped into [0, 1).
    As x ||x|| / (1 + ||x||^2), with ||x||^2 clamped inside the root only (its gradient at 0 is infinite)."""
    squared = vectors.pow(2).sum(-1, keepdim=True)
    return vectors * squared.clamp(min=1e-24).sqrt() / (1 + squared)


def dynamic_routing(predictions: torch.Tensor, labels: torch.Tensor, n_way: int, iterations: int) -> torch.Tensor:
    """[classes, dim] class vectors from the transformed support embeddings e_hat ([examples, dim]).

    The coupling softmax runs over each class's own examples (a -inf mask for the others), so classes
    may have different numbers of support examples.
    """
    mask = one_hot(labels, n_way, predictions.dtype).T.log()  # [classes, examples]: 0 or -inf
    logits = predictions.new_zeros(len(labels))
    for _ in range(iterations):
        coupling = (logits.unsqueeze(0) + mask).softmax(dim=1)
        classes = squash(coupling @ predictions)
        logits = logits + (predictions * classes[labels]).sum(1)
    return classes


class NeuralTensorRelation(nn.Module):
    """[queries, classes] relation logits w_r . relu(c^T M_[1:h] q) + b_r.

    The slices are stored as one [dim, slices, dim] tensor (M_h = tensor[:, h]), so that contracting the
    class vectors with it is one matrix product on a view, with no copy of the tensor either way.
    """

    def __init__(self, dim: int, slices: int) -> None:
        super().__init__()
        # Each slice starts near the identity and the output at their mean, so the first logits are about
        # c . q: with random slices and output the MSE loss is at its plateau (every score 1/N) before
        # the layer learns a similarity.
        self.tensor = nn.Parameter(torch.eye(dim).unsqueeze(1) + torch.randn(dim, slices, dim) / math.sqrt(dim))
        self.output = nn.Linear(slices, 1)
        nn.init.constant_(self.output.weight, 1.0 / slices)
        nn.init.zeros_(self.output.bias)

    def forward(self, queries: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        dim, slices, _ = self.tensor.shape
        # Contract the classes first: classes x slices x dim, fewer rows than queries x slices x dim.
        projected = (classes @ self.tensor.reshape(dim, slices * dim)).view(len(classes), slices, dim)
        interactions = torch.einsum("che,qe->qch", projected, queries).relu()
        return self.output(interactions).squeeze(2)


class InductionHead(nn.Module):
    def __init__(
        self, dim: int, routing_iterations: int, relation_slices: int, loss: str, center_embeddings: bool
    ) -> None:
        super().__init__()
        if routing_iterations < 1:
            raise ValueError(f"routing_iterations={routing_iterations} must be >= 1")
        self.transform = nn.Linear(dim, dim)  # W_s, b_s: shared by every class; starts as the identity
        nn.init.eye_(self.transform.weight)
        nn.init.zeros_(self.transform.bias)
        self.relation = NeuralTensorRelation(dim, relation_slices)
        self.routing_iterations, self.loss = routing_iterations, relation_loss(loss)
        self.center_embeddings = center_embeddings

    def fit(self, features: torch.Tensor, support: Batch) -> FittedHead:
        no_regression("induction", support=support)
        center = features.mean(0) if self.center_embeddings else features.new_zeros(features.shape[1])
        predictions = squash(self.transform(features - center))
        classes = dynamic_routing(predictions, support.labels, len(support.classes), self.routing_iterations)
        return lambda queries: self.relation(queries - center, classes)


class Induction(MetricLearner):
    """`routing_iterations` of dynamic routing, `relation_slices` matrices in the neural tensor layer
    (the paper's 3 and 100), `loss` mse | cross_entropy. `center_embeddings` subtracts the support set's
    mean embedding from the support and query embeddings first (not in the paper): features with a large
    common component (ReLU CNN features, pretrained sentence embeddings) otherwise give bilinear scores
    c^T M q that rank the classes almost the same for every query, and the MSE loss stalls at its
    plateau (every score 1/N)."""

    def __init__(
        self,
        encoder: nn.Module,
        label_space: LabelSpace,
        routing_iterations: int = 3,
        relation_slices: int = 100,
        loss: str = "mse",
        center_embeddings: bool = True,
    ) -> None:
        no_regression("induction", label_space)
        head = InductionHead(encoder.output_dim, routing_iterations, relation_slices, loss, center_embeddings)
        super().__init__(encoder, head)
