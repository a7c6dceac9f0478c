"""ANIL (Raghu et al. 2020): MAML whose inner loop adapts the head only.

Since the encoder does not change within a task, the support set is encoded once per task and the
inner steps run on a linear head over those features: the same steps as MAML with
`inner_params=head`, without re-running the encoder at every step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metanlp_cli.algorithms.base import Algorithm, Classifier, LabelSpace, episode_outputs, first_head_rows
from metanlp_cli.algorithms.inner_loop import (
    FastWeights,
    InnerLoop,
    Parameters,
    gradient_steps,
    inner_loop_mode,
    require_lr,
)
from metanlp_cli.sampling import Batch

HEAD = ["head.weight", "head.bias"]


def linear_head(parameters: Parameters, features: torch.Tensor) -> torch.Tensor:
    return F.linear(features, parameters["head.weight"], parameters["head.bias"])


class ANIL(Algorithm):
    """`first_order=True` treats the head's inner gradients as constants; the encoder is then trained
    through the query features only. An N-way episode uses the head's first N rows."""

    def __init__(
        self,
        encoder: nn.Module,
        label_space: LabelSpace,
        first_order: bool = False,
        inner_train: InnerLoop = InnerLoop(steps=5, lr=0.1),
        inner_eval: InnerLoop = InnerLoop(steps=100, lr=0.1),
    ) -> None:
        super().__init__()
        require_lr(inner_train, "inner_train", learned=False)
        require_lr(inner_eval, "inner_eval", learned=False)
        self.model = Classifier(encoder, label_space.n_way)
        self.first_order = first_order
        self.inner_train, self.inner_eval = inner_train, inner_eval

    def adapt(self, support: Batch) -> FastWeights:
        create_graph = self.training and not self.first_order
        outputs = episode_outputs(support, self.model.head.out_features)
        loop = self.inner_train if self.training else self.inner_eval
        head = first_head_rows(dict(self.model.head.named_parameters(prefix="head")), outputs)
        with inner_loop_mode(self.model, loop):
            # Without second-order terms the support features reach the meta-gradient only through constants.
            with torch.set_grad_enabled(create_graph):
                features = self.model.encoder(support.inputs)
            head = gradient_steps(
                linear_head, head, Batch(features, support.labels, support.classes), HEAD, loop, create_graph
            )
        return FastWeights(lambda parameters, inputs: linear_head(parameters, self.model.encoder(inputs)), head)
