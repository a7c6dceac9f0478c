"""Proto-MAML (Triantafillou et al. 2020; used by LEOPARD, Bansal et al. 2020): MAML whose linear
head starts, in every episode, from the class prototypes of the support set.

With prototypes c_k, the head W_k = 2 c_k, b_k = -||c_k||^2 gives logits 2 c_k.x - ||c_k||^2, which
differ from ProtoNet's -||x - c_k||^2 only by ||x||^2, the same for every class: before any step
the softmax and the predictions are exactly ProtoNet's. The head init stays in the graph, so the
meta-gradient reaches the encoder through the prototypes as well as through the adapted weights.

A regression episode has no prototypes: its 1-output head starts at weight 0 and bias = the mean
support target (the best constant prediction under the MSE loss), then takes the same MAML steps.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metanlp_cli.algorithms.base import Algorithm, LabelSpace
from metanlp_cli.algorithms.inner_loop import (
    FastWeights,
    InnerLoop,
    Parameters,
    encoder_blocks,
    gradient_steps,
    inner_loop_mode,
    no_cudnn_for_double_backward,
    require_lr,
    select_parameters,
    trainable_names,
)
from metanlp_cli.algorithms.protonet import class_means
from metanlp_cli.sampling import Batch


def prototype_head(prototypes: torch.Tensor) -> Parameters:
    return {"head.weight": 2 * prototypes, "head.bias": -prototypes.pow(2).sum(1)}


def mean_target_head(features: torch.Tensor, targets: torch.Tensor) -> Parameters:
    """The 1-output head of a regression episode: weight 0, bias the mean support target (new leaves
    that the inner loop differentiates; no meta-gradient flows through this start)."""
    weight = features.new_zeros(1, features.shape[1], requires_grad=True)
    return {"head.weight": weight, "head.bias": targets.mean().reshape(1).to(features.dtype).requires_grad_()}


class ProtoMAML(Algorithm):
    """Parameter names as in MAML (`encoder.*`, `head.*`), so `inner_params` patterns mean the same."""

    def __init__(
        self,
        encoder: nn.Module,
        label_space: LabelSpace,
        first_order: bool = True,
        inner_params: str | Sequence[str] = "all",
        inner_frozen: Sequence[str] = ("encoder.embedding.*",),
        inner_train: InnerLoop = InnerLoop(steps=5, lr=0.1),
        inner_eval: InnerLoop = InnerLoop(steps=10, lr=0.1),
    ) -> None:
        super().__init__()
        require_lr(inner_train, "inner_train", learned=False)
        require_lr(inner_eval, "inner_eval", learned=False)
        self.encoder = encoder
        self.first_order = first_order
        self.inner_train, self.inner_eval = inner_train, inner_eval
        names = trainable_names(self) + ["head.weight", "head.bias"]
        self.adapted = select_parameters(names, inner_params, inner_frozen, encoder_blocks(encoder))

    def logits(self, parameters: Parameters, inputs: torch.Tensor) -> torch.Tensor:
        encoder = {name.removeprefix("encoder."): p for name, p in parameters.items() if name.startswith("encoder.")}
        features = functional_call(self.encoder, encoder, (inputs,))
        return F.linear(features, parameters["head.weight"], parameters["head.bias"])

    def initial_parameters(self, support: Batch) -> Parameters:
        """The encoder's parameters and the head built from this support set's prototypes.

        The inner loop sees the encoder through views, not the parameters themselves: its gradient
        for the encoder must treat the head as a free variable, not sum in the path through the
        prototypes (which the meta-gradient does take, through the views' base).
        """
        features = self.encoder(support.inputs)
        if support.is_regression:
            head = mean_target_head(features, support.labels)
        else:
            head = prototype_head(class_means(features, support.labels, len(support.classes)))
        encoder = {name: p.view_as(p) for name, p in self.named_parameters()}
        return {**encoder, **head}

    def adapt(self, support: Batch) -> FastWeights:
        create_graph = self.training and not self.first_order
        loop = self.inner_train if self.training else self.inner_eval
        with inner_loop_mode(self.encoder, loop):  # the support prototypes are part of the adaptation
            parameters = self.initial_parameters(support)
            with no_cudnn_for_double_backward(create_graph, support.inputs.device):
                parameters = gradient_steps(self.logits, parameters, support, self.adapted, loop, create_graph)
        return FastWeights(self.logits, parameters)
