"""Adapting the encoder itself at test time, on a support set: fine-tuning (with the new head) and SetFit.

The meta-learned encoder is never changed: the adapted layers are detached copies of its parameters,
run with `torch.func.functional_call`, and the learner holds those copies. Every random draw of an
adaptation (mini-batch order, dropout, pair sampling) comes from a generator seeded with `seed` and the
support set itself (`support_seed`), so adapting on a training set gives the same learner whatever was
adapted before it, and a rerun reproduces it.

Layers frozen in the backbone (`backbone.encoder.trainable_layers`) are computed once per split and
cached (`data.cache.cache_frozen_features`, `KShotProtocol.prepare`): their input is gone by the time a
support set arrives, so only layers the backbone trains can adapt. To fine-tune the whole encoder, the
backbone trains all of its layers (`backbone.encoder.trainable_layers=all`, what `experiment=finetune_encoder`
sets).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from metanlp_cli.algorithms.inner_loop import INNER_LOOP_MODES, Parameters, encoder_blocks
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.sampling import Batch


@dataclass(frozen=True)
class EncoderFineTuning:
    """How the encoder adapts to a support set: AdamW (`lr`, `weight_decay`, not on biases and norms)
    for `epochs` passes over the support set in shuffled mini-batches of `batch_size` examples.

    `layers`: how many top blocks of the encoder adapt (its `layer_names()`, input to output: a
    pretrained encoder's embeddings, its layers, then its projection), `all`, or 0 (none: the head
    alone, on frozen features). `mode` is the network's dropout while adapting (train = on).
    `seed` with the support set seeds every random draw of the adaptation (see `support_seed`)."""

    layers: int | str = 0
    lr: float = 5e-5
    epochs: int = 10
    batch_size: int = 8
    weight_decay: float = 0.01
    mode: str = "train"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.layers != "all" and not (isinstance(self.layers, int) and self.layers >= 0):
            raise ValueError(f"layers={self.layers!r} is not allowed; allowed: all, or an integer >= 0")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr} must be > 0")
        if self.epochs < 0:
            raise ValueError(f"epochs={self.epochs} must be >= 0")
        if self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size} must be >= 1")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay} must be >= 0")
        if self.mode not in INNER_LOOP_MODES:
            raise ValueError(f"mode={self.mode!r} is not allowed; allowed: {', '.join(INNER_LOOP_MODES)}")

    @property
    def adapts_encoder(self) -> bool:
        return self.layers != 0 and self.epochs > 0


HEAD_ONLY = EncoderFineTuning()  # the default: no encoder layer adapts (a frozen dataclass, safe as a default)


def adapted_encoder_names(encoder: nn.Module, layers: int | str, key: str) -> list[str]:
    """The encoder's parameter names that `layers` (all, or the top k blocks) adapts. Each must be one the
    backbone trains: a frozen one's input is not there to run it on (its output is cached)."""
    names = [name for name, _ in encoder.named_parameters()]
    if layers == 0:
        return []
    if layers == "all":
        chosen = names
    else:
        blocks = encoder_blocks(encoder, prefix="")
        if blocks is None:
            raise MetaNLPError(f"{key}={layers}: this backbone does not list its layers; allowed: all, 0")
        if layers > len(blocks):
            allowed = f"0..{len(blocks)}, all"
            raise MetaNLPError(f"{key}={layers} but the backbone has {len(blocks)} blocks; allowed: {allowed}")
        chosen = [name for block in blocks[len(blocks) - layers :] for name in block]
    frozen = [name for name in chosen if not encoder.get_parameter(name).requires_grad]
    if frozen:
        raise MetaNLPError(
            f"{key}={layers!r} adapts {len(frozen)} parameters the backbone freezes (e.g. {frozen[0]}); "
            "frozen layers are computed once and cached, so they cannot adapt: set "
            "backbone.encoder.trainable_layers=all (or at least as many layers), or use experiment=finetune_encoder"
        )
    return chosen


def encoder_copy(encoder: nn.Module, adapted: list[str]) -> Parameters:
    """The encoder's parameters for `functional_call`: fresh leaf copies of the `adapted` ones, detached
    views of the rest (so no gradient reaches the meta-learned weights)."""
    chosen = set(adapted)
    return {
        name: parameter.detach().clone().requires_grad_() if name in chosen else parameter.detach()
        for name, parameter in encoder.named_parameters()
    }


def without_padding_columns(inputs: torch.Tensor) -> torch.Tensor:
    """Token ids less the padding columns no row uses (a mini-batch of a split padded to its longest
    row), keeping 5 for the CNN's widest filter as the samplers do; cached float features as they are."""
    if inputs.is_floating_point() or not inputs.any():
        return inputs
    used = int((inputs != 0).any(dim=0).nonzero().max()) + 1
    return inputs[:, : max(used, min(5, inputs.shape[1]))]


def encode(encoder: nn.Module, parameters: Parameters, inputs: torch.Tensor) -> torch.Tensor:
    """The encoder's features of `inputs` with `parameters` in place of its own."""
    return functional_call(encoder, parameters, (without_padding_columns(inputs),))


def adamw(tensors: list[torch.Tensor], config: EncoderFineTuning) -> torch.optim.AdamW:
    """AdamW over the tensors that adapt; weight decay on matrices only (not biases, norms or the scale)."""
    trained = [tensor for tensor in tensors if tensor.requires_grad]
    groups = [
        {"params": [t for t in trained if t.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [t for t in trained if t.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([group for group in groups if group["params"]], lr=config.lr)


def support_seed(support: Batch, seed: int) -> int:
    """A seed that is a function of `seed` and the support set's inputs and labels alone."""
    digest = hashlib.sha256(str(seed).encode())
    for tensor in (support.inputs, support.labels):
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return int.from_bytes(digest.digest()[:8], "little") >> 1


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """torch's generators seeded with `seed` inside, restored to their state outside."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


class AdaptedEncoderLearner:
    """A learner: the encoder run with its adapted parameters, then a head over its features."""

    def __init__(
        self, encoder: nn.Module, parameters: Parameters, head: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        self.encoder, self.head = encoder, head
        self.parameters = {name: tensor.detach() for name, tensor in parameters.items()}

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        return encode(self.encoder, self.parameters, inputs)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(inputs))
