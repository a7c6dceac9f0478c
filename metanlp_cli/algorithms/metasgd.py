"""Meta-SGD (Li et al. 2017): MAML that also meta-learns a learning rate for every adapted coordinate."""

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
    no_cudnn_for_double_backward,
    require_lr,
    select_parameters,
    trainable_names,
)
from metanlp_cli.sampling import Batch


def rate_key(name: str) -> str:
    """Module attribute names cannot contain dots: `encoder.layer.weight` -> `encoder/layer/weight`."""
    return name.replace(".", "/")


class MetaSGD(Algorithm):
    """The inner step is p <- p - alpha (.) grad, with alpha the same shape as p, learned by the outer
    loop alongside the initialisation and used at evaluation too (so `inner_*.lr` must be null).
    `init_lr` is alpha's starting value. An N-way episode uses the head's (and alpha's) first N rows.
    """

    def __init__(
        self,
        encoder: nn.Module,
        label_space: LabelSpace,
        init_lr: float = 0.1,
        first_order: bool = False,
        inner_params: str | Sequence[str] = "all",
        inner_frozen: Sequence[str] = ("encoder.embedding.*",),
        inner_train: InnerLoop = InnerLoop(steps=5, lr=None),
        inner_eval: InnerLoop = InnerLoop(steps=10, lr=None),
    ) -> None:
        super().__init__()
        require_lr(inner_train, "inner_train", learned=True)
        require_lr(inner_eval, "inner_eval", learned=True)
        self.model = Classifier(encoder, label_space.n_way)
        self.first_order = first_order
        self.inner_train, self.inner_eval = inner_train, inner_eval
        parameters = dict(self.model.named_parameters())
        self.adapted = select_parameters(
            trainable_names(self.model), inner_params, inner_frozen, encoder_blocks(encoder)
        )
        self.learning_rates = nn.ParameterDict(
            {rate_key(n): nn.Parameter(torch.full_like(parameters[n], init_lr)) for n in self.adapted}
        )

    def adapt(self, support: Batch) -> FastWeights:
        create_graph = self.training and not self.first_order
        outputs = episode_outputs(support, self.model.head.out_features)
        parameters = first_head_rows(dict(self.model.named_parameters()), outputs)
        rates = first_head_rows({n: self.learning_rates[rate_key(n)] for n in self.adapted}, outputs)
        forward = module_forward(self.model)
        loop = self.inner_train if self.training else self.inner_eval
        with no_cudnn_for_double_backward(create_graph, support.inputs.device), inner_loop_mode(self.model, loop):
            parameters = gradient_steps(forward, parameters, support, self.adapted, loop, create_graph, rates)
        return FastWeights(forward, parameters)
