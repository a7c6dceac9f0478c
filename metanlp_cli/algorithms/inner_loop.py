"""The functional core of the gradient-based learners: SGD steps on an explicit parameter dict.

No module is copied per task: fast weights are tensors computed from the meta-parameters, and
`torch.func.functional_call` runs the shared module with them. With `create_graph=True` the
steps stay differentiable (second-order MAML); without, the gradients are constants and the
meta-gradient is the first-order approximation (FOMAML).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metanlp_cli.errors import MetaNLPError
from metanlp_cli.sampling import Batch

Parameters = dict[str, torch.Tensor]

PARAMETER_ALIASES = {"all": ["*"], "head": ["head.*"]}


def select_parameters(
    names: Sequence[str], include: str | Sequence[str], exclude: Sequence[str], key: str = "algo.inner_params"
) -> list[str]:
    """Names matching any `include` pattern (or alias: all, head) and no `exclude` pattern."""
    patterns = PARAMETER_ALIASES.get(include, [include]) if isinstance(include, str) else list(include)
    chosen = [
        name
        for name in names
        if any(fnmatch.fnmatchcase(name, p) for p in patterns)
        and not any(fnmatch.fnmatchcase(name, p) for p in exclude)
    ]
    if not chosen:
        raise MetaNLPError(
            f"{key}={include!r} (excluding {list(exclude)}) selects no parameter; parameters are: {', '.join(names)}"
        )
    return chosen


class FastWeights:
    """A learner: the shared module evaluated with a task's adapted parameters."""

    def __init__(self, model: nn.Module, parameters: Parameters) -> None:
        self.model = model
        self.parameters = parameters

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return functional_call(self.model, self.parameters, (inputs,))


def gradient_steps(
    model: nn.Module,
    parameters: Parameters,
    support: Batch,
    adapted: Sequence[str],
    steps: int,
    learning_rates: float | Mapping[str, torch.Tensor],
    create_graph: bool,
) -> Parameters:
    """`steps` of p <- p - lr * dL_support/dp on the `adapted` entries of `parameters`."""
    parameters = dict(parameters)
    for _ in range(steps):
        loss = F.cross_entropy(functional_call(model, parameters, (support.inputs,)), support.labels)
        gradients = torch.autograd.grad(loss, [parameters[name] for name in adapted], create_graph=create_graph)
        for name, gradient in zip(adapted, gradients, strict=True):
            rate = learning_rates if isinstance(learning_rates, float) else learning_rates[name]
            parameters[name] = parameters[name] - rate * gradient
    return parameters


def no_cudnn_for_double_backward(create_graph: bool, device: torch.device):
    """cuDNN's RNN kernels have no double backward: second-order steps on CUDA use the native ones."""
    return torch.backends.cudnn.flags(enabled=not (create_graph and device.type == "cuda"))
