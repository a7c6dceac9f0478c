"""The one interface every algorithm implements, and the classifier the gradient-based ones adapt.

learner = algo.adapt(episode.support)       # fast weights, prototypes, a fitted head ...
loss = algo.meta_loss(learner, episode.query)  # backward() fills the meta-gradients
logits = learner(episode.query.inputs)      # evaluation
for loss in algo.meta_batch_losses(episodes, seeds): ...  # meta-training: the two above, or batched
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from metanlp_cli.errors import MetaNLPError
from metanlp_cli.sampling import Batch, Episode

Learner = Callable[[torch.Tensor], torch.Tensor]  # inputs -> logits, or [examples, 1] predicted targets


@dataclass(frozen=True)
class LabelSpace:
    """What heads are sized by: the most classes an episode has, the classes of the meta-train split,
    and whether meta-train has regression tasks (the supervised baselines' extra regression output)."""

    n_way: int
    num_train_classes: int
    regression: bool = False


def task_loss(outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The loss of a learner's outputs on a batch, for every algorithm, inner loop and meta-loss alike:
    cross-entropy over the episode's classes, or for a regression batch (float targets) the mean squared
    error of the single output ([examples, 1])."""
    if batch.is_regression:
        return F.mse_loss(outputs.squeeze(-1), batch.labels)
    return F.cross_entropy(outputs, batch.labels)


class Classifier(nn.Module):
    """An encoder and a head, linear unless one is given (the cosine head of baseline++): token ids ->
    logits. Parameter names: `encoder.*`, `head.*`."""

    def __init__(self, encoder: nn.Module, num_classes: int, head: nn.Module | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.output_dim, num_classes) if head is None else head

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(inputs))


def episode_outputs(support: Batch, head_rows: int) -> int:
    """The head rows an episode uses: its number of classes (checked against the rows of a fixed-size
    head), or 1 for a regression episode, whose prediction is the first row's output."""
    if support.is_regression:
        return 1
    n_way = len(support.classes)
    if n_way > head_rows:
        raise MetaNLPError(
            f"an episode has {n_way} classes but the head was built for at most {head_rows} "
            f"(sampler.n_way at training); allowed: protocol.n_way <= {head_rows}"
        )
    return n_way


def first_head_rows(parameters: Mapping[str, torch.Tensor], n_way: int) -> dict[str, torch.Tensor]:
    """The parameters of an N-way episode of a fixed-size head: its first N rows.

    Why rows of one head sized for the largest episode (`LabelSpace.n_way`): episode labels are a
    random order of the sampled classes, so every row learns the same kind of class-agnostic start.
    When every episode is N-way this is exactly the head of MAML (and Reptile, Meta-SGD); a 2-way
    episode next to a 5-way one uses and adapts rows 0-1 only, and the other rows get no gradient
    from it. Zero-initialised heads would also fit any N, but change the algorithm for fixed N.
    Works on any dict keyed by parameter name (Meta-SGD slices its learning rates the same way).

    A regression episode uses row 0 alone (its output is the predicted target), adapted with the MSE
    loss: row 0 is a class-agnostic start like every other, so no dedicated row (which would change
    the head, its initialisation and old checkpoints of classification runs) is needed.
    """
    sliced = dict(parameters)
    for name in ("head.weight", "head.bias"):
        if name in sliced and sliced[name].shape[0] > n_way:  # no view node in the graph when all rows are used
            sliced[name] = sliced[name][:n_way]
    return sliced


class Algorithm(nn.Module):
    """Base class: holds every meta-learned tensor, so `state_dict()` is the whole learned state."""

    def adapt(self, support: Batch) -> Learner:
        raise NotImplementedError

    def meta_loss(self, learner: Learner, query: Batch) -> torch.Tensor:
        return task_loss(learner(query.inputs), query)

    def adapt_regression(self, support: Batch) -> Learner | None:
        """A task protocol's learner for a regression task (STS-B's float targets), where the algorithm
        fits one itself; None (the default) leaves it to the protocol, which fits its 1-output
        `regression_head` on the encoder's features."""
        return None

    def with_fixed_encoder(self) -> tuple[nn.Module, Algorithm] | None:
        """Where adapting leaves the encoder as it is and only its features are used (ProtoNet): the
        encoder, and a copy of this algorithm that takes the encoder's features as its inputs. Evaluation
        then encodes every row of a split once instead of once per episode (`protocols.fixed_encoder_view`).
        None (the default) where adaptation changes the encoder or reads more than its features."""
        return None

    def meta_batch_losses(self, episodes: Sequence[Episode], seeds: Sequence[int]) -> Iterator[torch.Tensor]:
        """A meta-batch's meta-loss in parts, each the sum of the meta-losses of the episodes it covers;
        the caller backpropagates each part before asking for the next.

        Here one part per episode, torch seeded with the episode's seed first (its dropout masks are a
        function of the episode alone): one episode's graph is in memory at a time. An algorithm that
        can run the encoder once over the support and query rows of all episodes overrides this.
        """
        for episode, seed in zip(episodes, seeds, strict=True):
            torch.manual_seed(seed)
            yield self.meta_loss(self.adapt(episode.support), episode.query)
