"""The transfer baseline: supervised training on all meta-train classes, then a fresh linear head
fitted on each episode's support features (the encoder stays frozen at adaptation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metanlp_cli.algorithms.base import Algorithm, Classifier, LabelSpace
from metanlp_cli.sampling import Batch


class SupervisedLearner:
    """Training-time learner: the classifier over all meta-train classes, plus the support rows."""

    def __init__(self, model: Classifier, support: Batch) -> None:
        self.model, self.support = model, support

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)


class LinearProbe:
    """Evaluation-time learner: the frozen encoder followed by the head fitted on the support set."""

    def __init__(self, encoder: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.encoder, self.weight, self.bias = encoder, weight, bias

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.linear(self.encoder(inputs), self.weight, self.bias)


class FineTune(Algorithm):
    def __init__(
        self, encoder: nn.Module, label_space: LabelSpace, adapt_steps: int = 100, adapt_lr: float = 0.01
    ) -> None:
        super().__init__()
        self.model = Classifier(encoder, label_space.num_train_classes)
        self.adapt_steps, self.adapt_lr = adapt_steps, adapt_lr

    def adapt(self, support: Batch) -> SupervisedLearner | LinearProbe:
        if self.training:
            return SupervisedLearner(self.model, support)
        with torch.no_grad():
            features = self.model.encoder(support.inputs)
        n_way = len(support.classes)
        weight = features.new_zeros(n_way, features.shape[1], requires_grad=True)
        bias = features.new_zeros(n_way, requires_grad=True)
        optimizer = torch.optim.Adam([weight, bias], lr=self.adapt_lr)
        for _ in range(self.adapt_steps):
            optimizer.zero_grad()
            F.cross_entropy(F.linear(features, weight, bias), support.labels).backward()
            optimizer.step()
        return LinearProbe(self.model.encoder, weight.detach(), bias.detach())

    def meta_loss(self, learner: SupervisedLearner, query: Batch) -> torch.Tensor:
        """Cross-entropy over all meta-train classes on the whole episode (support and query)."""
        support = learner.support
        inputs = [support.inputs, query.inputs]
        width = max(x.shape[1] for x in inputs)
        inputs = torch.cat([F.pad(x, (0, width - x.shape[1])) for x in inputs])
        labels = torch.cat([support.classes[support.labels], query.classes[query.labels]])
        return F.cross_entropy(learner(inputs), labels)
