"""What the metric and head-generating learners share: an encoder, and a head that adapts on the encoder's
features of the support set alone (Matching, Relation and Induction Networks, the meta network, ridge).

Since adapting never changes the encoder, evaluation can encode every row of a split once
(`with_fixed_encoder`, as ProtoNet does) and run the same head on the cached features.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from metanlp_cli.algorithms.base import Algorithm, LabelSpace, task_loss
from metanlp_cli.algorithms.protonet import FeatureInputs
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.sampling import Batch

FittedHead = Callable[[torch.Tensor], torch.Tensor]  # query features -> logits (or [examples, 1] targets)


class EncodedLearner:
    """A learner: the encoder's features of the inputs through a head fitted on the support set."""

    def __init__(self, encoder: nn.Module, head: FittedHead) -> None:
        self.encoder, self.head = encoder, head

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(inputs))


class MetricLearner(Algorithm):
    """`encoder` and `head`: the head's `fit(support_features, support) -> FittedHead` adapts, and its
    `loss(outputs, query)` is the meta-loss (the shared `task_loss` unless the head has its own)."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def adapt(self, support: Batch) -> EncodedLearner:
        return EncodedLearner(self.encoder, self.head.fit(self.encoder(support.inputs), support))

    def meta_loss(self, learner: EncodedLearner, query: Batch) -> torch.Tensor:
        loss = getattr(self.head, "loss", task_loss)
        return loss(learner(query.inputs), query)

    def with_fixed_encoder(self) -> tuple[nn.Module, MetricLearner]:
        """The same head (shared, not copied) over inputs that are already the encoder's features."""
        return self.encoder, MetricLearner(FeatureInputs(self.encoder.output_dim), self.head)


def no_regression(algo: str, label_space: LabelSpace | None = None, support: Batch | None = None) -> None:
    """The one-line error of a method that has no regression path, at construction (meta-train has
    regression tasks) or at adaptation (a regression episode in validation or test)."""
    if (label_space is not None and label_space.regression) or (support is not None and support.is_regression):
        raise MetaNLPError(
            f"algo={algo} scores classes and has no regression path, but the dataset has regression tasks "
            "(e.g. STS-B); for those use algo=matching, ridge, protonet or a gradient-based algorithm"
        )


def one_hot(labels: torch.Tensor, n_way: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, n_way).to(dtype)


def relation_loss(kind: str) -> Callable[[torch.Tensor, Batch], torch.Tensor]:
    """The meta-loss of relation scores given as logits: `mse`, the squared error of their sigmoid against
    the one-hot labels summed over the classes and averaged over the queries (Sung et al. 2018; Geng et al.
    2019 sum it over both), or `cross_entropy` over the logits."""
    if kind not in ("mse", "cross_entropy"):
        raise ValueError(f"loss={kind!r} is not allowed; allowed: mse, cross_entropy")
    if kind == "cross_entropy":
        return task_loss

    def mse(logits: torch.Tensor, query: Batch) -> torch.Tensor:
        targets = one_hot(query.labels, logits.shape[1], logits.dtype)
        return (torch.sigmoid(logits) - targets).pow(2).sum(1).mean()

    return mse
