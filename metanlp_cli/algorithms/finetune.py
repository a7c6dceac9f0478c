"""The transfer baseline: supervised training on all meta-train classes, then a fresh linear head
fitted on each episode's support features (the encoder stays frozen at adaptation)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from metanlp_cli.algorithms.base import Algorithm, Classifier, LabelSpace
from metanlp_cli.algorithms.inner_loop import InnerLoop, inner_loop_mode, require_lr, support_subset
from metanlp_cli.sampling import Batch, Episode, concatenate_inputs


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
    labels = torch.cat([support.classes[support.labels], query.classes[query.labels]])
    return concatenate_inputs([support.inputs, query.inputs]), labels


def batched_episode_losses(
    model: Classifier,
    episodes: Sequence[Episode],
    seed: int,
    row_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lambda logits, labels: logits,
) -> torch.Tensor:
    """The sum over episodes of each episode's mean cross-entropy over all meta-train classes, with the
    rows of all episodes through `model` in one forward (torch seeded with `seed` first: one dropout
    stream for the meta-batch). `row_logits(logits, labels)` may mask each row's logits (multi-task)."""
    examples = [episode_examples(episode.support, episode.query) for episode in episodes]
    torch.manual_seed(seed)
    inputs = concatenate_inputs([inputs for inputs, _ in examples])
    labels = torch.cat([labels for _, labels in examples])
    losses = F.cross_entropy(row_logits(model(inputs), labels), labels, reduction="none")
    return torch.stack([part.mean() for part in losses.split([len(labels) for _, labels in examples])]).sum()


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
    adaptation fits a new head on the support set (`inner_eval`, Adam). `batch_episodes=True` runs the
    rows of all episodes of a meta-batch through the model in one forward (as ProtoNet's, see there)."""

    def __init__(
        self,
        encoder: nn.Module,
        label_space: LabelSpace,
        inner_eval: InnerLoop = InnerLoop(steps=100, lr=0.01),
        batch_episodes: bool = False,
    ) -> None:
        super().__init__()
        require_lr(inner_eval, "inner_eval", learned=False)
        self.model = Classifier(encoder, label_space.num_train_classes)
        self.inner_eval = inner_eval
        self.batch_episodes = batch_episodes

    def adapt(self, support: Batch) -> SupervisedLearner | LinearProbe:
        if self.training:
            return SupervisedLearner(self.model, support)
        return fit_linear_probe(self.model.encoder, support, self.inner_eval)

    def meta_loss(self, learner: SupervisedLearner, query: Batch) -> torch.Tensor:
        """Cross-entropy over all meta-train classes on the whole episode (support and query)."""
        inputs, labels = episode_examples(learner.support, query)
        return F.cross_entropy(learner(inputs), labels)

    def meta_batch_losses(self, episodes: Sequence[Episode], seeds: Sequence[int]) -> Iterator[torch.Tensor]:
        if not self.batch_episodes:
            yield from super().meta_batch_losses(episodes, seeds)
            return
        yield batched_episode_losses(self.model, episodes, seeds[0])
