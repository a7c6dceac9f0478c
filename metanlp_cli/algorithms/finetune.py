"""The transfer baseline: supervised training on all meta-train classes, then a fresh linear head
fitted on each episode's support features (the encoder stays frozen at adaptation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metanlp_cli.algorithms.base import Algorithm, Classifier, LabelSpace
from metanlp_cli.algorithms.inner_loop import InnerLoop, inner_loop_mode, require_lr, support_subset
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


def episode_examples(support: Batch, query: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Support and query rows of an episode as one supervised batch, with split-level class ids."""
    inputs = [support.inputs, query.inputs]
    if not inputs[0].is_floating_point():  # token ids: pad to the longer of the two
        width = max(x.shape[1] for x in inputs)
        inputs = [F.pad(x, (0, width - x.shape[1])) for x in inputs]
    labels = torch.cat([support.classes[support.labels], query.classes[query.labels]])
    return torch.cat(inputs), labels


def fit_linear_probe(encoder: nn.Module, support: Batch, loop: InnerLoop) -> LinearProbe:
    """A zero-initialised N-way head fitted by Adam (`loop.lr`, `loop.steps`) on frozen support features
    (computed in `loop.mode`)."""
    with torch.no_grad(), inner_loop_mode(encoder, loop):
        features = encoder(support.inputs)
    n_way = len(support.classes)
    weight = features.new_zeros(n_way, features.shape[1], requires_grad=True)
    bias = features.new_zeros(n_way, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=loop.lr)
    examples = Batch(features, support.labels, support.classes)
    for _ in range(loop.steps):
        batch = support_subset(examples, loop.support_batch_size)
        optimizer.zero_grad()
        F.cross_entropy(F.linear(batch.inputs, weight, bias), batch.labels).backward()
        optimizer.step()
    return LinearProbe(encoder, weight.detach(), bias.detach())


def fit_regression_probe(
    encoder: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loop: InnerLoop
) -> LinearProbe:
    """A zero-initialised 1-output head (bias starting at the mean target) fitted by Adam with the MSE
    loss on frozen features: the regression head of an STS-B-like task. Its learner outputs [examples, 1]."""
    with torch.no_grad(), inner_loop_mode(encoder, loop):
        features = encoder(inputs)
    weight = features.new_zeros(1, features.shape[1], requires_grad=True)
    bias = targets.mean().reshape(1).to(features.dtype).requires_grad_()
    optimizer = torch.optim.Adam([weight, bias], lr=loop.lr)
    for _ in range(loop.steps):
        rows = torch.randperm(len(targets), device=targets.device)[: loop.support_batch_size or len(targets)]
        optimizer.zero_grad()
        F.mse_loss(F.linear(features[rows], weight, bias).squeeze(-1), targets[rows]).backward()
        optimizer.step()
    return LinearProbe(encoder, weight.detach(), bias.detach())


class FineTune(Algorithm):
    """Meta-training is supervised learning over all meta-train classes (an episode is just a batch);
    adaptation fits a new head on the support set (`inner_eval`, Adam)."""

    def __init__(
        self,
        encoder: nn.Module,
        label_space: LabelSpace,
        inner_eval: InnerLoop = InnerLoop(steps=100, lr=0.01),
    ) -> None:
        super().__init__()
        require_lr(inner_eval, "inner_eval", learned=False)
        self.model = Classifier(encoder, label_space.num_train_classes)
        self.inner_eval = inner_eval

    def adapt(self, support: Batch) -> SupervisedLearner | LinearProbe:
        if self.training:
            return SupervisedLearner(self.model, support)
        return fit_linear_probe(self.model.encoder, support, self.inner_eval)

    def meta_loss(self, learner: SupervisedLearner, query: Batch) -> torch.Tensor:
        """Cross-entropy over all meta-train classes on the whole episode (support and query)."""
        inputs, labels = episode_examples(learner.support, query)
        return F.cross_entropy(learner(inputs), labels)
