"""MAML (Finn et al. 2017) and its first-order approximation FOMAML, on the functional inner loop."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from metanlp_cli.algorithms.base import Algorithm, Classifier, LabelSpace
from metanlp_cli.algorithms.inner_loop import (
    FastWeights,
    gradient_steps,
    no_cudnn_for_double_backward,
    select_parameters,
)
from metanlp_cli.sampling import Batch


class MAML(Algorithm):
    """Learns an initialisation: `adapt` takes `inner_steps` SGD steps from it on the support set.

    `first_order=True` drops the second-order terms (FOMAML). At evaluation the steps are taken
    without a graph and `inner_steps_eval` of them.
    """

    def __init__(
        self,
        encoder: nn.Module,
        label_space: LabelSpace,
        inner_lr: float = 0.1,
        inner_steps: int = 5,
        inner_steps_eval: int = 10,
        first_order: bool = False,
        inner_params: str | Sequence[str] = "all",
        inner_frozen: Sequence[str] = ("encoder.embedding.*",),
    ) -> None:
        super().__init__()
        self.model = Classifier(encoder, label_space.n_way)
        self.inner_lr = inner_lr
        self.inner_steps, self.inner_steps_eval = inner_steps, inner_steps_eval
        self.first_order = first_order
        self.adapted = select_parameters(
            [n for n, p in self.model.named_parameters() if p.requires_grad], inner_params, inner_frozen
        )

    def adapt(self, support: Batch) -> FastWeights:
        create_graph = self.training and not self.first_order
        steps = self.inner_steps if self.training else self.inner_steps_eval
        with no_cudnn_for_double_backward(create_graph, support.inputs.device):
            parameters = gradient_steps(
                self.model,
                dict(self.model.named_parameters()),
                support,
                self.adapted,
                steps,
                self.inner_lr,
                create_graph,
            )
        return FastWeights(self.model, parameters)
