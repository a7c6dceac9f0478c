"""Prototypical Networks (Snell et al. 2017): classify by distance to class means of the support."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metanlp_cli.algorithms.base import Algorithm, LabelSpace
from metanlp_cli.sampling import Batch


def class_means(features: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    sums = torch.zeros(n_way, features.shape[1], dtype=features.dtype, device=features.device)
    sums = sums.index_add(0, labels, features)
    counts = torch.bincount(labels, minlength=n_way).clamp(min=1).unsqueeze(1)
    return sums / counts


class Prototypes:
    """A learner: logits are negative distances from encoded inputs to the class prototypes."""

    def __init__(self, encoder: nn.Module, prototypes: torch.Tensor, distance: str) -> None:
        self.encoder, self.prototypes, self.distance = encoder, prototypes, distance

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        features = self.encoder(inputs)
        if self.distance == "cosine":
            return 10.0 * F.normalize(features, dim=1) @ F.normalize(self.prototypes, dim=1).T
        return -torch.cdist(features, self.prototypes).pow(2)


class ProtoNet(Algorithm):
    def __init__(self, encoder: nn.Module, label_space: LabelSpace, distance: str = "euclidean") -> None:
        super().__init__()
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"algo.distance={distance!r} is not allowed; allowed: euclidean, cosine")
        self.encoder = encoder
        self.distance = distance

    def adapt(self, support: Batch) -> Prototypes:
        n_way = len(support.classes)
        return Prototypes(self.encoder, class_means(self.encoder(support.inputs), support.labels, n_way), self.distance)
