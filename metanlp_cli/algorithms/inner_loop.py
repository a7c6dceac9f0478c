"""The functional core of the gradient-based learners: update steps on an explicit parameter dict.

No module is copied per task: fast weights are tensors computed from the meta-parameters, and a
`forward(parameters, inputs) -> logits` function (usually `torch.func.functional_call` of the
shared module) runs the model with them. With `create_graph=True` the steps stay differentiable
(second-order MAML); without, the gradients are constants and the meta-gradient is the
first-order approximation (FOMAML).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from metanlp_cli.algorithms.base import task_loss
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.sampling import Batch

Parameters = dict[str, torch.Tensor]
Forward = Callable[[Parameters, torch.Tensor], torch.Tensor]  # (parameters, inputs) -> logits

PARAMETER_ALIASES = {"all": ["*"], "head": ["head.*"]}
TOP_K = re.compile(r"top_(\d+)")
# The train/eval behaviour (dropout, ...) of the network while it adapts: `inherit` keeps the outer mode.
INNER_LOOP_MODES = ("inherit", "train", "eval")


@dataclass(frozen=True)
class InnerLoop:
    """How a learner adapts to a support set: `steps` updates at learning rate `lr`, each on
    `support_batch_size` support examples drawn at random (the whole support set when None).
    `lr` is None for algorithms that learn their update (Meta-SGD, the meta-LSTM).
    `mode` is the network's train/eval behaviour (dropout) while it adapts: `train`, `eval`, or
    `inherit` the outer mode (training while meta-training, eval at validation and test); see
    `inner_loop_mode`."""

    steps: int = 5
    lr: float | None = 0.1
    support_batch_size: int | None = None
    mode: str = "inherit"

    def __post_init__(self) -> None:
        if self.mode not in INNER_LOOP_MODES:
            raise ValueError(f"mode={self.mode!r} is not allowed; allowed: {', '.join(INNER_LOOP_MODES)}")
        if self.steps < 0:
            raise ValueError(f"steps={self.steps} must be >= 0")
        if self.lr is not None and self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be > 0 (or null where the algorithm learns its update)")
        if self.support_batch_size is not None and self.support_batch_size < 1:
            raise ValueError(f"support_batch_size={self.support_batch_size} must be >= 1 (or null: all)")


def require_lr(loop: InnerLoop, key: str, learned: bool) -> None:
    """Algorithms with a fixed rate need `lr`; those that learn their update must not be given one."""
    if learned and loop.lr is not None:
        raise ValueError(f"{key}.lr={loop.lr} must be null: this algorithm learns its inner update")
    if not learned and loop.lr is None:
        raise ValueError(f"{key}.lr is null but this algorithm needs an inner learning rate")


def encoder_blocks(encoder: nn.Module, prefix: str = "encoder.") -> list[list[str]] | None:
    """The encoder's parameter names grouped by block, input to output, from its `layer_names()`.

    `layer_names()` lists submodule names in forward order (the CNN: embedding, convolutions).
    A parameter under no listed name joins the block of the parameter registered before it (the
    first block if none is): the Transformer's position table joins the embedding, its final norm
    the last layer. None when the encoder does not list its blocks.
    """
    if not hasattr(encoder, "layer_names"):
        return None
    names = list(encoder.layer_names())
    blocks: list[list[str]] = [[] for _ in names]
    current = 0
    for name, _ in encoder.named_parameters():
        for index, block in enumerate(names):
            if name == block or name.startswith(block + "."):
                current = index
        blocks[current].append(prefix + name)
    return blocks


def _patterns(include: str | Sequence[str], blocks: list[list[str]] | None, key: str) -> list[str]:
    """Name patterns of an `inner_params` value: aliases (all, head), top_K, or fnmatch patterns."""
    patterns = []
    for entry in [include] if isinstance(include, str) else list(include):
        top = TOP_K.fullmatch(entry)
        if top is None:
            patterns += PARAMETER_ALIASES.get(entry, [entry])
            continue
        k = int(top.group(1))
        if blocks is None:
            raise MetaNLPError(f"{key}={entry!r}: this backbone does not list its layers; use all, head or patterns")
        if k > len(blocks):
            raise MetaNLPError(
                f"{key}={entry!r} but the backbone has {len(blocks)} blocks; allowed: top_0..top_{len(blocks)}"
            )
        patterns += ["head.*"] + [name for block in blocks[len(blocks) - k :] for name in block]
    return patterns


def select_parameters(
    names: Sequence[str],
    include: str | Sequence[str],
    exclude: Sequence[str],
    blocks: list[list[str]] | None = None,
    key: str = "algo.inner_params",
) -> list[str]:
    """Names matching `include` and no `exclude` pattern.

    `include` is `all`, `head`, `top_K` (the head and the encoder's last K blocks, see
    `encoder_blocks`), fnmatch patterns over parameter names, or a list mixing these.
    """
    patterns = _patterns(include, blocks, key)
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


def trainable_names(module: nn.Module) -> list[str]:
    """Names of the parameters the inner loop may adapt: frozen ones (requires_grad=False, e.g. a
    frozen pretrained encoder) have no gradient to step along."""
    return [name for name, parameter in module.named_parameters() if parameter.requires_grad]


def module_forward(model: nn.Module) -> Forward:
    """`forward(parameters, inputs)`: the shared module run with the given parameters."""
    return lambda parameters, inputs: functional_call(model, parameters, (inputs,))


class FastWeights:
    """A learner: a forward function evaluated with a task's adapted parameters."""

    def __init__(self, forward: Forward, parameters: Parameters) -> None:
        self.forward = forward
        self.parameters = parameters

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.forward(self.parameters, inputs)


def support_subset(support: Batch, size: int | None) -> Batch:
    """`size` support examples drawn without replacement (torch's generator), or all of them."""
    if size is None or size >= len(support):
        return support
    rows = torch.randperm(len(support), device=support.labels.device)[:size]
    return Batch(support.inputs[rows], support.labels[rows], support.classes)


def support_gradients(
    forward: Forward, parameters: Parameters, support: Batch, adapted: Sequence[str], create_graph: bool
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The support loss at `parameters` and its gradients with respect to the `adapted` entries."""
    loss = task_loss(forward(parameters, support.inputs), support)
    gradients = torch.autograd.grad(loss, [parameters[name] for name in adapted], create_graph=create_graph)
    return loss, gradients


def gradient_steps(
    forward: Forward,
    parameters: Parameters,
    support: Batch,
    adapted: Sequence[str],
    loop: InnerLoop,
    create_graph: bool,
    learning_rates: Mapping[str, torch.Tensor] | None = None,
) -> Parameters:
    """`loop.steps` of p <- p - lr * dL_support/dp on the `adapted` entries of `parameters`.

    `learning_rates` (one tensor per adapted name, broadcastable to it) replace `loop.lr`: Meta-SGD.
    """
    parameters = dict(parameters)
    for _ in range(loop.steps):
        batch = support_subset(support, loop.support_batch_size)
        _, gradients = support_gradients(forward, parameters, batch, adapted, create_graph)
        for name, gradient in zip(adapted, gradients, strict=True):
            # One fused op per update (fewer graph nodes for the second-order backward than p - lr * g).
            if learning_rates is None:
                parameters[name] = torch.add(parameters[name], gradient, alpha=-loop.lr)
            else:
                parameters[name] = torch.addcmul(parameters[name], learning_rates[name], gradient, value=-1.0)
    return parameters


@contextmanager
def inner_loop_mode(network: nn.Module, loop: InnerLoop) -> Iterator[None]:
    """Run the adaptation (support forwards and inner steps) with `network` in `loop.mode`, then put
    every submodule back in the mode it had, also when the adaptation raises. The query forward of
    the meta-loss, after `adapt` returns, runs in the outer mode (`algo.train()` / `algo.eval()`).

    Every submodule's flag is restored as it was, not re-derived: modules that keep their own mode
    (a pretrained encoder's frozen layers always run in eval) stay as they were.
    """
    if loop.mode == "inherit":
        yield
        return
    saved = [(module, module.training) for module in network.modules()]
    network.train(loop.mode == "train")
    try:
        yield
    finally:
        for module, training in saved:
            module.training = training


def no_cudnn_for_double_backward(create_graph: bool, device: torch.device):
    """cuDNN's RNN kernels have no double backward: second-order steps on CUDA use the native ones."""
    return torch.backends.cudnn.flags(enabled=not (create_graph and device.type == "cuda"))
