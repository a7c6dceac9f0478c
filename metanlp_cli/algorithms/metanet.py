"""A meta network that predicts the head (Munkhdalai & Yu 2017; Qiao et al. 2018, predicting parameters
from activations): a small generator maps each class's support embeddings to that class's row of a
linear head, W_c, b_c = generator(z_c), meta-trained end to end through the query loss.

z_c is the mean support embedding of class c, and with `use_gradients` also the gradient of the support
loss with respect to row c of a zero head: at W = 0, b = 0 the softmax is uniform, so
dL/dW_c = (1/n) sum_i (1/N - [y_i = c]) x_i and dL/db_c = (1/n) sum_i (1/N - [y_i = c]) (the meta
network's loss-gradient meta information, in closed form). The generator is a residual MLP of
`generator_layers` linear layers: W_c = mean_c + its first outputs, b_c = its last, with its last layer
initialised to zero, so the first head is the nearest-mean (dot product) classifier.

The generated head can then take MAML-style steps on the support features (`inner_train`,
`inner_eval`; 0 steps = the generated head as it is), second order unless `first_order`.
"""

from __future__ import annotations

import torch
from torch import nn

from metanlp_cli.algorithms.anil import HEAD, linear_head
from metanlp_cli.algorithms.base import LabelSpace
from metanlp_cli.algorithms.inner_loop import InnerLoop, Parameters, gradient_steps, require_lr
from metanlp_cli.algorithms.metric_learner import FittedHead, MetricLearner, no_regression, one_hot
from metanlp_cli.algorithms.protonet import class_means
from metanlp_cli.sampling import Batch


def zero_head_gradients(features: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """[classes, dim + 1]: the cross-entropy's gradient with respect to each row (weight, bias) of a zero
    linear head on these features, in closed form (softmax(0) = 1/N)."""
    residuals = 1.0 / n_way - one_hot(labels, n_way, features.dtype)  # [examples, classes]
    inputs = torch.cat([features, torch.ones_like(features[:, :1])], dim=1)
    return residuals.T @ inputs / len(labels)


class WeightGenerator(nn.Module):
    """z_c -> (W_c, b_c) for every class: `layers` linear layers with ReLUs between, as wide as z."""

    def __init__(self, dim: int, layers: int, use_gradients: bool) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"generator_layers={layers} must be >= 1")
        width = 2 * dim + 1 if use_gradients else dim
        blocks: list[nn.Module] = []
        for _ in range(layers - 1):
            blocks += [nn.Linear(width, width), nn.ReLU()]
        blocks.append(nn.Linear(width, dim + 1))
        nn.init.zeros_(blocks[-1].weight)
        nn.init.zeros_(blocks[-1].bias)
        self.layers = nn.Sequential(*blocks)
        self.dim, self.use_gradients = dim, use_gradients

    def forward(self, features: torch.Tensor, labels: torch.Tensor, n_way: int) -> Parameters:
        means = class_means(features, labels, n_way)
        inputs = torch.cat([means, zero_head_gradients(features, labels, n_way)], 1) if self.use_gradients else means
        outputs = self.layers(inputs)
        return {"head.weight": means + outputs[:, : self.dim], "head.bias": outputs[:, self.dim]}


class MetaNetHead(nn.Module):
    def __init__(
        self,
        dim: int,
        layers: int,
        use_gradients: bool,
        first_order: bool,
        inner_train: InnerLoop,
        inner_eval: InnerLoop,
    ) -> None:
        super().__init__()
        for loop, key in ((inner_train, "inner_train"), (inner_eval, "inner_eval")):
            require_lr(loop, key, learned=False)
            if loop.mode != "inherit":  # the support set is encoded once, in the outer mode
                raise ValueError(f"{key}.mode={loop.mode!r}: metanet adapts the head only; allowed: inherit")
        self.generator = WeightGenerator(dim, layers, use_gradients)
        self.first_order, self.inner_train, self.inner_eval = first_order, inner_train, inner_eval

    def fit(self, features: torch.Tensor, support: Batch) -> FittedHead:
        no_regression("metanet", support=support)
        head = self.generator(features, support.labels, len(support.classes))
        loop = self.inner_train if self.training else self.inner_eval
        if loop.steps:
            create_graph = self.training and not self.first_order
            head = gradient_steps(
                linear_head, head, Batch(features, support.labels, support.classes), HEAD, loop, create_graph
            )
        return lambda queries: linear_head(head, queries)


class MetaNet(MetricLearner):
    """`generator_layers` (>= 1) and `use_gradients` shape the generator; `inner_train` / `inner_eval`
    are the head's MAML-style steps after generation (steps may be 0)."""

    def __init__(
        self,
        encoder: nn.Module,
        label_space: LabelSpace,
        generator_layers: int = 2,
        use_gradients: bool = True,
        first_order: bool = False,
        inner_train: InnerLoop = InnerLoop(steps=0, lr=0.1),
        inner_eval: InnerLoop = InnerLoop(steps=0, lr=0.1),
    ) -> None:
        no_regression("metanet", label_space)
        head = MetaNetHead(encoder.output_dim, generator_layers, use_gradients, first_order, inner_train, inner_eval)
        super().__init__(encoder, head)
