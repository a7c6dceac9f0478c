"""Reptile (Nichol et al. 2018) as a loss: k SGD steps give phi, then 0.5 * ||theta - phi||^2.

The gradient of that loss is theta - phi, so an outer SGD step with learning rate epsilon is exactly
Reptile's update theta <- theta + epsilon * (phi - theta) (averaged over the meta-batch).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from metanlp_cli.algorithms.base import Algorithm, Classifier, LabelSpace
from metanlp_cli.algorithms.inner_loop import FastWeights, gradient_steps, select_parameters
from metanlp_cli.sampling import Batch


class Reptile(Algorithm):
    def __init__(
        self,
        encoder: nn.Module,
        label_space: LabelSpace,
        inner_lr: float = 0.1,
        inner_steps: int = 5,
        inner_steps_eval: int = 10,
        inner_params: str | Sequence[str] = "all",
        inner_frozen: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.model = Classifier(encoder, label_space.n_way)
        self.inner_lr = inner_lr
        self.inner_steps, self.inner_steps_eval = inner_steps, inner_steps_eval
        self.adapted = select_parameters(
            [n for n, p in self.model.named_parameters() if p.requires_grad], inner_params, inner_frozen
        )

    def adapt(self, support: Batch) -> FastWeights:
        start = {name: p.detach().requires_grad_(name in self.adapted) for name, p in self.model.named_parameters()}
        steps = self.inner_steps if self.training else self.inner_steps_eval
        adapted = gradient_steps(self.model, start, support, self.adapted, steps, self.inner_lr, create_graph=False)
        return FastWeights(self.model, {name: p.detach() for name, p in adapted.items()})

    def meta_loss(self, learner: FastWeights, query: Batch) -> torch.Tensor:
        parameters = dict(self.model.named_parameters())
        return 0.5 * sum((parameters[n] - learner.parameters[n]).pow(2).sum() for n in self.adapted)
