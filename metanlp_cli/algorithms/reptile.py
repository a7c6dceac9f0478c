"""Reptile (Nichol et al. 2018) as a loss: k SGD steps give phi, then 0.5 * ||theta - phi||^2.

The gradient of that loss is theta - phi, so an outer SGD step with learning rate epsilon is exactly
Reptile's update theta <- theta + epsilon * (phi - theta) (averaged over the meta-batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from metanlp_cli.algorithms.base import Algorithm, Classifier, LabelSpace, episode_outputs, first_head_rows
from metanlp_cli.algorithms.inner_loop import (
    FastWeights,
    InnerLoop,
    encoder_blocks,
    gradient_steps,
    inner_loop_mode,
    module_forward,
    require_lr,
    select_parameters,
    trainable_names,
)
from metanlp_cli.sampling import Batch


class Reptile(Algorithm):
    """An N-way episode adapts (and moves) the head's first N rows only."""

    def __init__(
        self,
        encoder: nn.Module,
        label_space: LabelSpace,
        inner_params: str | Sequence[str] = "all",
        inner_frozen: Sequence[str] = (),
        inner_train: InnerLoop = InnerLoop(steps=5, lr=0.1),
        inner_eval: InnerLoop = InnerLoop(steps=10, lr=0.1),
    ) -> None:
        super().__init__()
        require_lr(inner_train, "inner_train", learned=False)
        require_lr(inner_eval, "inner_eval", learned=False)
        self.model = Classifier(encoder, label_space.n_way)
        self.inner_train, self.inner_eval = inner_train, inner_eval
        self.adapted = select_parameters(
            trainable_names(self.model), inner_params, inner_frozen, encoder_blocks(encoder)
        )

    def adapt(self, support: Batch) -> FastWeights:
        outputs = episode_outputs(support, self.model.head.out_features)
        start = {name: p.detach().requires_grad_(name in self.adapted) for name, p in self.model.named_parameters()}
        loop = self.inner_train if self.training else self.inner_eval
        forward = module_forward(self.model)
        with inner_loop_mode(self.model, loop):
            adapted = gradient_steps(forward, first_head_rows(start, outputs), support, self.adapted, loop, False)
        return FastWeights(forward, {name: p.detach() for name, p in adapted.items()})

    def meta_loss(self, learner: FastWeights, query: Batch) -> torch.Tensor:
        outputs = learner.parameters["head.weight"].shape[0]
        theta = first_head_rows(dict(self.model.named_parameters()), outputs)
        return 0.5 * sum((theta[n] - learner.parameters[n]).pow(2).sum() for n in self.adapted)
