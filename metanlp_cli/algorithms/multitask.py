"""The multi-task baseline: a shared encoder with one head per training task, trained jointly on the
examples of the meta-training episodes, then adapted like the fine-tuning baseline (a new linear or
cosine head, and optionally the encoder fine-tuned with it: `encoder_finetuning`).

On a class-split dataset a "task" is a group of meta-train classes: classes are split by id into
`num_groups` contiguous groups, and an example is classified among the classes of its own group
only. The heads are stored as the row blocks of one linear layer over all meta-train classes, with
the other groups' logits masked out; that is the same as separate heads, computed in one matmul.
`num_groups=1` is exactly the fine-tuning baseline. Regression tasks share one more output after
the class logits, as in the fine-tuning baseline.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn

from metanlp_cli.algorithms.adaptation import HEAD_ONLY, AdaptedEncoderLearner, EncoderFineTuning
from metanlp_cli.algorithms.base import Algorithm, Classifier, LabelSpace, task_loss
from metanlp_cli.algorithms.finetune import (
    LinearProbe,
    SupervisedLearner,
    adapt_new_head,
    batched_episode_losses,
    episode_examples,
    head_scale,
    supervised_head,
    supervised_outputs,
)
from metanlp_cli.algorithms.inner_loop import InnerLoop, require_lr
from metanlp_cli.sampling import Batch, Episode


class MultiTask(Algorithm):
    """`batch_episodes=True`: the rows of all episodes of a meta-batch in one forward (see ProtoNet)."""

    def __init__(
        self,
        encoder: nn.Module,
        label_space: LabelSpace,
        num_groups: int = 3,
        inner_eval: InnerLoop = InnerLoop(steps=100, lr=0.01),
        batch_episodes: bool = False,
        head: str = "linear",
        scale: float = 10.0,
        learn_scale: bool = False,
        encoder_finetuning: EncoderFineTuning = HEAD_ONLY,
    ) -> None:
        super().__init__()
        classes = label_space.num_train_classes
        if classes and not 1 <= num_groups <= classes // 2:  # no classes: regression tasks only
            raise ValueError(
                f"num_groups={num_groups} is not allowed; each group needs 2 or more of the {classes} "
                f"meta-train classes: allowed 1..{classes // 2}"
            )
        require_lr(inner_eval, "inner_eval", learned=False)
        self.num_classes = classes
        head_module = supervised_head(encoder, label_space, head, scale, learn_scale)
        self.model = Classifier(encoder, classes + int(label_space.regression), head_module)
        self.inner_eval = inner_eval
        self.batch_episodes = batch_episodes
        self.head, self.scale, self.encoder_finetuning = head, scale, encoder_finetuning
        groups = torch.arange(classes) * num_groups // max(classes, 1)
        self.register_buffer("group_of_class", groups, persistent=False)

    def adapt(self, support: Batch) -> SupervisedLearner | LinearProbe | AdaptedEncoderLearner:
        if self.training:
            return SupervisedLearner(self.model, support)
        scale = head_scale(self.model, self.head, self.scale)
        return adapt_new_head(self.model.encoder, support, self.inner_eval, self.head, scale, self.encoder_finetuning)

    def adapt_regression(self, support: Batch) -> AdaptedEncoderLearner | None:
        """As `FineTune.adapt_regression`: the encoder fine-tuned with a 1-output MSE head, where it adapts."""
        return self.adapt(support) if self.encoder_finetuning.adapts_encoder else None

    def meta_loss(self, learner: SupervisedLearner, query: Batch) -> torch.Tensor:
        """Mean cross-entropy of every episode example over the classes of its own group (the MSE of
        the regression output for a regression episode)."""
        batch = episode_examples(learner.support, query, self.num_classes)
        outputs = supervised_outputs(learner(batch.inputs), batch, self.num_classes)
        if not batch.is_regression:
            outputs = self.own_group_logits(outputs, batch.labels)
        return task_loss(outputs, batch)

    def own_group_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Each row's logits with the classes outside its label's group at -inf."""
        other_group = self.group_of_class[None, :] != self.group_of_class[labels][:, None]
        return logits.masked_fill(other_group, float("-inf"))

    def meta_batch_losses(self, episodes: Sequence[Episode], seeds: Sequence[int]) -> Iterator[torch.Tensor]:
        if not self.batch_episodes or any(episode.support.is_regression for episode in episodes):
            yield from super().meta_batch_losses(episodes, seeds)
            return
        yield batched_episode_losses(self.model, episodes, seeds[0], self.num_classes, self.own_group_logits)
