"""The transfer baseline: supervised training on all meta-train classes, then a fresh head (linear, or
the cosine head of baseline++) fitted on each episode's support features; the encoder stays frozen at
adaptation unless `encoder_finetuning` fine-tunes its top layers (or all of it) with the new head.

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

from metanlp_cli.algorithms.adaptation import (
    HEAD_ONLY,
    AdaptedEncoderLearner,
    EncoderFineTuning,
    adamw,
    adapted_encoder_names,
    encode,
    encoder_copy,
    seeded,
    support_seed,
)
from metanlp_cli.algorithms.base import Algorithm, Classifier, LabelSpace, task_loss
from metanlp_cli.algorithms.inner_loop import InnerLoop, inner_loop_mode, require_lr, support_subset
from metanlp_cli.backbones.heads import build_head, cosine_logits
from metanlp_cli.sampling import Batch, Episode, concatenate_inputs


class SupervisedLearner:
    """Training-time learner: the classifier over all meta-train classes, plus the support rows."""

    def __init__(self, model: Classifier, support: Batch) -> None:
        self.model, self.support = model, support

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)


def head_logits(
    features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, scale: float | None
) -> torch.Tensor:
    """A fitted head's logits: linear (`scale` None), or baseline++'s scaled cosine similarity (no bias)."""
    return F.linear(features, weight, bias) if scale is None else cosine_logits(features, weight, scale)


class LinearProbe:
    """Evaluation-time learner: the frozen encoder followed by the head fitted on the support set
    (linear, or cosine with the fixed `scale`)."""

    def __init__(
        self, encoder: nn.Module, weight: torch.Tensor, bias: torch.Tensor | None, scale: float | None = None
    ) -> None:
        self.encoder, self.weight, self.bias, self.scale = encoder, weight, bias, scale

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return head_logits(features, self.weight, self.bias, self.scale)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(inputs))


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


def fit_linear_probe(
    encoder: nn.Module, support: Batch, loop: InnerLoop, head: str = "linear", scale: float = 10.0
) -> LinearProbe:
    """A new head fitted by Adam (`loop.lr`, `loop.steps`) on frozen support features (computed in
    `loop.mode`): N-way for a classification episode; for a regression one (STS-B) 1 output whose bias
    starts at the mean support target, fitted with the MSE loss (`task_loss`). A linear head starts at
    zero; a cosine one (`head=cosine`, baseline++, classification only) at the class means of the
    support features, with its `scale` fixed (a zero row has no direction)."""
    with torch.no_grad(), inner_loop_mode(encoder, loop):
        features = encoder(support.inputs)
    cosine = head == "cosine" and not support.is_regression
    outputs = 1 if support.is_regression else len(support.classes)
    if cosine:
        rows = F.one_hot(support.labels, outputs).T.to(features.dtype)
        weight = (rows @ features / rows.sum(1, keepdim=True).clamp(min=1)).requires_grad_()
        bias, parameters = None, [weight]
    else:
        weight = features.new_zeros(outputs, features.shape[1], requires_grad=True)
        bias = features.new_zeros(outputs)
        if support.is_regression:
            bias = support.labels.mean().reshape(1).to(features.dtype)
        bias.requires_grad_()
        parameters = [weight, bias]
    scale = float(scale) if cosine else None
    optimizer = torch.optim.Adam(parameters, lr=loop.lr)
    examples = Batch(features, support.labels, support.classes)
    for _ in range(loop.steps):
        batch = support_subset(examples, loop.support_batch_size)
        optimizer.zero_grad()
        task_loss(head_logits(batch.inputs, weight, bias, scale), batch).backward()
        optimizer.step()
    return LinearProbe(encoder, weight.detach(), None if bias is None else bias.detach(), scale)


def fine_tune_encoder(
    encoder: nn.Module, probe: LinearProbe, support: Batch, config: EncoderFineTuning, key: str
) -> AdaptedEncoderLearner:
    """The encoder's top `config.layers` blocks and the head, starting from `probe` (the head fitted on
    frozen features, as LP-FT does), fine-tuned together on the support set by AdamW, in mini-batches,
    with dropout (`config.mode`). The encoder's own weights stay as they are (see `adaptation`)."""
    parameters = encoder_copy(encoder, adapted_encoder_names(encoder, config.layers, key))
    weight = probe.weight.clone().requires_grad_()
    bias = None if probe.bias is None else probe.bias.clone().requires_grad_()
    optimizer = adamw([*parameters.values(), weight, *([] if bias is None else [bias])], config)
    with inner_loop_mode(encoder, config):
        for _ in range(config.epochs):
            for rows in torch.randperm(len(support), device=support.labels.device).split(config.batch_size):
                batch = Batch(support.inputs[rows], support.labels[rows], support.classes)
                logits = head_logits(encode(encoder, parameters, batch.inputs), weight, bias, probe.scale)
                optimizer.zero_grad()
                task_loss(logits, batch).backward()
                optimizer.step()
    fitted = LinearProbe(encoder, weight.detach(), None if bias is None else bias.detach(), probe.scale)
    return AdaptedEncoderLearner(encoder, parameters, fitted.head)


def adapt_new_head(
    encoder: nn.Module,
    support: Batch,
    inner_eval: InnerLoop,
    head: str,
    scale: float,
    encoder_finetuning: EncoderFineTuning,
) -> LinearProbe | AdaptedEncoderLearner:
    """The fine-tune and multi-task baselines' adaptation: a new head fitted on the support features,
    then, where `encoder_finetuning` adapts encoder layers, those layers and the head fine-tuned together
    (every random draw seeded by the support set, see `adaptation.support_seed`)."""
    if not encoder_finetuning.adapts_encoder:
        return fit_linear_probe(encoder, support, inner_eval, head, scale)
    with seeded(support_seed(support, encoder_finetuning.seed), support.labels.device):
        probe = fit_linear_probe(encoder, support, inner_eval, head, scale)
        return fine_tune_encoder(encoder, probe, support, encoder_finetuning, "algo.encoder_finetuning.layers")


def supervised_head(
    encoder: nn.Module, label_space: LabelSpace, head: str, scale: float, learn_scale: bool
) -> nn.Module:
    """The meta-training head over all meta-train classes (and the regression output, linear only)."""
    if head == "cosine" and label_space.regression:
        raise ValueError(
            "head=cosine has no regression output but meta-train has regression tasks (STS-B); use head=linear"
        )
    outputs = label_space.num_train_classes + int(label_space.regression)
    return build_head(head, encoder.output_dim, outputs, scale, learn_scale)


def head_scale(model: Classifier, head: str, scale: float) -> float:
    """The cosine scale a new head uses at adaptation: the meta-trained one (learned or fixed)."""
    return float(model.head.scale.detach()) if head == "cosine" else scale


class FineTune(Algorithm):
    """Meta-training is supervised learning over all meta-train classes (an episode is just a batch);
    adaptation fits a new head on the support set (`inner_eval`, Adam) and, with `encoder_finetuning`,
    fine-tunes it with the encoder's top layers (LM-BFF's fine-tuning baseline; docs/adaptation.md).
    `head`: linear, or cosine (baseline++, Chen et al. 2019: `scale` times the cosine similarity, the
    scale learned where `learn_scale`), in meta-training and at adaptation alike.
    `batch_episodes=True` runs the rows of all episodes of a meta-batch through the model in one forward
    (as ProtoNet's, see there)."""

    def __init__(
        self,
        encoder: nn.Module,
        label_space: LabelSpace,
        inner_eval: InnerLoop = InnerLoop(steps=100, lr=0.01),
        batch_episodes: bool = False,
        head: str = "linear",
        scale: float = 10.0,
        learn_scale: bool = False,
        encoder_finetuning: EncoderFineTuning = HEAD_ONLY,
    ) -> None:
        super().__init__()
        require_lr(inner_eval, "inner_eval", learned=False)
        self.num_classes = label_space.num_train_classes
        outputs = self.num_classes + int(label_space.regression)
        self.model = Classifier(encoder, outputs, supervised_head(encoder, label_space, head, scale, learn_scale))
        self.inner_eval = inner_eval
        self.batch_episodes = batch_episodes
        self.head, self.scale, self.encoder_finetuning = head, scale, encoder_finetuning

    def adapt(self, support: Batch) -> SupervisedLearner | LinearProbe | AdaptedEncoderLearner:
        if self.training:
            return SupervisedLearner(self.model, support)
        scale = head_scale(self.model, self.head, self.scale)
        return adapt_new_head(self.model.encoder, support, self.inner_eval, self.head, scale, self.encoder_finetuning)

    def adapt_regression(self, support: Batch) -> AdaptedEncoderLearner | None:
        """Where `encoder_finetuning` adapts encoder layers, a regression task fine-tunes them too, with a
        1-output head (its bias started at the mean target) and the MSE loss; a head alone is left to the
        protocol's `regression_head`, as before."""
        return self.adapt(support) if self.encoder_finetuning.adapts_encoder else None

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
