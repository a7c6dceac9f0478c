"""MAML (Finn et al. 2017) and its first-order approximation FOMAML, on the functional inner loop."""

from __future__ import annotations

from collections.abc import Sequence

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


class MAML(Algorithm):
    """Learns an initialisation: `adapt` takes SGD steps from it on the support set.

    `inner_train` sets the steps while meta-training, `inner_eval` at validation and test (taken
    without a graph). `first_order=True` drops the second-order terms (FOMAML). `inner_params`
    chooses what the inner loop adapts (all, head, top_K, name patterns) less `inner_frozen`;
    the outer loop trains every parameter. An N-way episode uses the head's first N rows.
    """

    def __init__(
        self,
        encoder: nn.Module,
        label_space: LabelSpace,
        first_order: bool = False,
        inner_params: str | Sequence[str] = "all",
        inner_frozen: Sequence[str] = ("encoder.embedding.*",),
        inner_train: InnerLoop = InnerLoop(steps=5, lr=0.1),
        inner_eval: InnerLoop = InnerLoop(steps=10, lr=0.1),
    ) -> None:
        super().__init__()
        require_lr(inner_train, "inner_train", learned=False)
        require_lr(inner_eval, "inner_eval", learned=False)
        self.model = Classifier(encoder, label_space.n_way)
        self.first_order = first_order
        self.inner_train, self.inner_eval = inner_train, inner_eval
        self.adapted = select_parameters(
            trainable_names(self.model), inner_params, inner_frozen, encoder_blocks(encoder)
        )

    def adapt(self, support: Batch) -> FastWeights:
        create_graph = self.training and not self.first_order
        outputs = episode_outputs(support, self.model.head.out_features)
        parameters = first_head_rows(dict(self.model.named_parameters()), outputs)
        forward = module_forward(self.model)
        loop = self.inner_train if self.training else self.inner_eval
        with no_cudnn_for_double_backward(create_graph, support.inputs.device), inner_loop_mode(self.model, loop):
            parameters = gradient_steps(forward, parameters, support, self.adapted, loop, create_graph)
        return FastWeights(forward, parameters)
