"""The transfer baseline: supervised training on all meta-train classes, then a fresh linear head
fitted on each episode's support features (the encoder stays frozen at adaptation).

Regression tasks among the meta-train tasks (STS-B) share one extra output after the class logits,
trained with the MSE loss on their episodes' targets: one output, not one per regression task, since
the collections here have one regression target (GLUE's STS-B; LM-BFF's STS-B seeds are one task).
At adaptation a regression episode gets a fresh 1-output head like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from metanlp_cli.algorithms.base import Algorithm, Classifier, LabelSpace, task_loss
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


def episode_examples(support: Batch, query: Batch, num_classes: int) -> Batch:
    """Support and query rows of an episode as one supervised batch over the meta-train label space:
    labels are split-level class ids (of `num_classes`), or the float targets of a regression episode."""
    inputs = concatenate_inputs([support.inputs, query.inputs])
    if support.is_regression:
        return Batch(inputs, torch.cat([support.labels, query.labels]), support.classes)
    labels = torch.cat([support.classes[support.labels], query.classes[query.labels]])
    return Batch(inputs, labels, torch.arange(num_classes, device=labels.device))


def supervised_outputs(logits: torch.Tensor, batch: Batch, num_classes: int) -> torch.Tensor:
    """The supervised head's columns a batch is scored on: the class logits, or the regression output."""
    return logits[:, num_classes:] if batch.is_regression else logits[:, :num_classes]


def batched_episode_losses(
    model: Classifier,
    episodes: Sequence[Episode],
    seed: int,
    num_classes: int,
    row_logits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = lambda logits, labels: logits,
) -> torch.Tensor:
    """The sum over (classification) episodes of each episode's mean cross-entropy over all meta-train
    classes, with the rows of all episodes through `model` in one forward (torch seeded with `seed`
    first: one dropout stream for the meta-batch). `row_logits(logits, labels)` may mask each row's
    logits (multi-task)."""
    examples = [episode_examples(episode.support, episode.query, num_classes) for episode in episodes]
    torch.manual_seed(seed)
    inputs = concatenate_inputs([batch.inputs for batch in examples])
    labels = torch.cat([batch.labels for batch in examples])
    logits = model(inputs)[:, :num_classes]
    losses = F.cross_entropy(row_logits(logits, labels), labels, reduction="none")
    return torch.stack([part.mean() for part in losses.split([len(batch) for batch in examples])]).sum()


def fit_linear_probe(encoder: nn.Module, support: Batch, loop: InnerLoop) -> LinearProbe:
    """A zero-initialised head fitted by Adam (`loop.lr`, `loop.steps`) on frozen support features
    (computed in `loop.mode`): N-way for a classification episode; for a regression one (STS-B) 1 output
    whose bias starts at the mean support target, fitted with the MSE loss (`task_loss`)."""
    with torch.no_grad(), inner_loop_mode(encoder, loop):
        features = encoder(support.inputs)
    outputs = 1 if support.is_regression else len(support.classes)
    weight = features.new_zeros(outputs, features.shape[1], requires_grad=True)
    bias = features.new_zeros(outputs)
    if support.is_regression:
        bias = support.labels.mean().reshape(1).to(features.dtype)
    bias.requires_grad_()
    optimizer = torch.optim.Adam([weight, bias], lr=loop.lr)
    examples = Batch(features, support.labels, support.classes)
    for _ in range(loop.steps):
        batch = support_subset(examples, loop.support_batch_size)
        optimizer.zero_grad()
        task_loss(F.linear(batch.inputs, weight, bias), batch).backward()
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
        self.num_classes = label_space.num_train_classes
        self.model = Classifier(encoder, self.num_classes + int(label_space.regression))
        self.inner_eval = inner_eval
        self.batch_episodes = batch_episodes

    def adapt(self, support: Batch) -> SupervisedLearner | LinearProbe:
        if self.training:
            return SupervisedLearner(self.model, support)
        return fit_linear_probe(self.model.encoder, support, self.inner_eval)

    def meta_loss(self, learner: SupervisedLearner, query: Batch) -> torch.Tensor:
        """Cross-entropy over all meta-train classes on the whole episode (support and query); the MSE
        of the regression output for a regression episode."""
        batch = episode_examples(learner.support, query, self.num_classes)
        return task_loss(supervised_outputs(learner(batch.inputs), batch, self.num_classes), batch)

    def meta_batch_losses(self, episodes: Sequence[Episode], seeds: Sequence[int]) -> Iterator[torch.Tensor]:
        if not self.batch_episodes or any(episode.support.is_regression for episode in episodes):
            yield from super().meta_batch_losses(episodes, seeds)
            return
        yield batched_episode_losses(self.model, episodes, seeds[0], self.num_classes)
