"""Prototypical Networks (Snell et al. 2017): classify by distance to class means of the support.

A regression episode has no classes to average: the query's predicted target is a kernel regression
on the same metric, sum_j softmax_j(similarity(x, s_j)) y_j over the support examples s_j with
targets y_j (a Nadaraya-Watson estimate; similarity is -||x - s_j||^2, or 10 cos(x, s_j)).
Both similarities are divided by a temperature (1 by default): lower sharpens the softmax.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from metanlp_cli.algorithms.base import Algorithm, LabelSpace
from metanlp_cli.sampling import Batch, Episode, concatenate_inputs


def class_means(features: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    sums = torch.zeros(n_way, features.shape[1], dtype=features.dtype, device=features.device)
    sums = sums.index_add(0, labels, features)
    counts = torch.bincount(labels, minlength=n_way).clamp(min=1).unsqueeze(1)
    return sums / counts


def similarities(
    features: torch.Tensor, references: torch.Tensor, distance: str, temperature: float = 1.0
) -> torch.Tensor:
    """[examples, references]: negative squared euclidean distance, or cosine similarity times 10, over the
    temperature."""
    if distance == "cosine":
        return 10.0 * F.normalize(features, dim=1) @ F.normalize(references, dim=1).T / temperature
    return -torch.cdist(features, references).pow(2) / temperature


class Prototypes:
    """A learner: logits are negative distances from encoded inputs to the class prototypes."""

    def __init__(self, encoder: nn.Module, prototypes: torch.Tensor, distance: str, temperature: float = 1.0) -> None:
        self.encoder, self.prototypes, self.distance, self.temperature = encoder, prototypes, distance, temperature

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return similarities(self.encoder(inputs), self.prototypes, self.distance, self.temperature)


class KernelRegression:
    """A learner for a regression episode: [examples, 1] targets predicted as the softmax-weighted
    mean of the support targets, weighted by similarity to each support example."""

    def __init__(
        self,
        encoder: nn.Module,
        support_features: torch.Tensor,
        targets: torch.Tensor,
        distance: str,
        temperature: float = 1.0,
    ):
        self.encoder, self.support_features, self.targets = encoder, support_features, targets
        self.distance, self.temperature = distance, temperature

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        scores = similarities(self.encoder(inputs), self.support_features, self.distance, self.temperature)
        weights = scores.softmax(dim=1)
        return (weights @ self.targets).unsqueeze(1)


class FeatureInputs(nn.Module):
    """The encoder of an algorithm whose inputs are already an encoder's features: the identity."""

    def __init__(self, output_dim: int) -> None:
        super().__init__()
        self.output_dim = output_dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features


class ProtoNet(Algorithm):
    """`batch_episodes=True` runs the encoder once per meta-batch, over the support and query rows of
    all its episodes (token ids padded to the widest), then splits the features per episode: the same
    meta-loss, faster where the encoder trains (a transformer's layers). Dropout masks then come from
    one torch stream per meta-batch (seeded by its first episode), not one per episode: an episode's
    masks depend on the other episodes of its batch and, under torchrun, on the number of processes
    (each batches its own share). Encoders whose output depends on the padding width (the word CNN's
    windows, the BiLSTM's backward pass) give slightly different features when batched.
    """

    def __init__(
        self,
        encoder: nn.Module,
        label_space: LabelSpace,
        distance: str = "euclidean",
        batch_episodes: bool = False,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"algo.distance={distance!r} is not allowed; allowed: euclidean, cosine")
        if not temperature > 0:
            raise ValueError(f"algo.temperature={temperature!r} must be positive")
        self.encoder = encoder
        self.label_space, self.distance, self.batch_episodes = label_space, distance, batch_episodes
        self.temperature = temperature

    def with_fixed_encoder(self) -> tuple[nn.Module, ProtoNet]:
        features = FeatureInputs(self.encoder.output_dim)
        return self.encoder, ProtoNet(features, self.label_space, self.distance, temperature=self.temperature)

    def adapt(self, support: Batch) -> Prototypes | KernelRegression:
        features = self.encoder(support.inputs)
        if support.is_regression:
            return KernelRegression(self.encoder, features, support.labels, self.distance, self.temperature)
        prototypes = class_means(features, support.labels, len(support.classes))
        return Prototypes(self.encoder, prototypes, self.distance, self.temperature)

    def meta_batch_losses(self, episodes: Sequence[Episode], seeds: Sequence[int]) -> Iterator[torch.Tensor]:
        if not self.batch_episodes or any(episode.support.is_regression for episode in episodes):
            yield from super().meta_batch_losses(episodes, seeds)
            return
        torch.manual_seed(seeds[0])
        batches = [batch for episode in episodes for batch in (episode.support, episode.query)]
        features = self.encoder(concatenate_inputs([batch.inputs for batch in batches]))
        features = features.split([len(batch) for batch in batches])
        losses = []
        for episode, support_features, query_features in zip(episodes, features[::2], features[1::2], strict=True):
            support, query = episode.support, episode.query
            prototypes = class_means(support_features, support.labels, len(support.classes))
            logits = similarities(query_features, prototypes, self.distance, self.temperature)
            losses.append(F.cross_entropy(logits, query.labels))
        yield torch.stack(losses).sum()
