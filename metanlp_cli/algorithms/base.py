"""The one interface every algorithm implements, and the classifier the gradient-based ones adapt.

learner = algo.adapt(episode.support)       # fast weights, prototypes, a fitted head ...
loss = algo.meta_loss(learner, episode.query)  # backward() fills the meta-gradients
logits = learner(episode.query.inputs)      # evaluation
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metanlp_cli.sampling import Batch

Learner = Callable[[torch.Tensor], torch.Tensor]  # inputs -> logits


@dataclass(frozen=True)
class LabelSpace:
    """What heads are sized by: classes per episode, and classes in the meta-train split."""

    n_way: int
    num_train_classes: int


class Classifier(nn.Module):
    """An encoder and a linear head: token ids -> logits. Parameter names: `encoder.*`, `head.*`."""

    def __init__(self, encoder: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.output_dim, num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(inputs))


class Algorithm(nn.Module):
    """Base class: holds every meta-learned tensor, so `state_dict()` is the whole learned state."""

    def adapt(self, support: Batch) -> Learner:
        raise NotImplementedError

    def meta_loss(self, learner: Learner, query: Batch) -> torch.Tensor:
        return F.cross_entropy(learner(query.inputs), query.labels)
