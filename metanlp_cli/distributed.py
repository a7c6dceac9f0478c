"""Multi-process meta-training with torch.distributed, launched by `torchrun` (`trainer.distributed=true`).

Each rank takes a contiguous share of every meta-batch's episode indices, computes its meta-gradient,
and the gradients are summed across ranks with one all-reduce (no DDP module wrapper: functional inner
loops call the module with other parameters, which DDP's hooks do not expect). Since every episode is
a pure function of (seed, index) and every local loss is divided by the global meta-batch size, the
summed gradient is the single-process gradient over the same episodes. Only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.distributed as dist

from metanlp_cli.errors import MetaNLPError


@dataclass(frozen=True)
class Ranks:
    """This process's place among the training processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def episode_indices(self, step: int, meta_batch_size: int) -> range:
        """This rank's share of episodes step*B .. step*B+B-1: the same episodes for any number of ranks."""
        share = meta_batch_size // self.world_size
        start = step * meta_batch_size + self.rank * share
        return range(start, start + share)

    def sum_gradients(self, parameters: Iterable[torch.nn.Parameter], meta_loss: float) -> float:
        """All-reduce (sum) the gradients and the meta-loss; every rank ends with the whole meta-batch's."""
        if self.world_size == 1:
            return meta_loss
        parameters = [p for p in parameters if p.requires_grad]
        # A parameter with no gradient on every rank keeps none (the optimizer then skips it, as it would
        # in one process); one with a gradient on some rank gets zeros elsewhere before the sum.
        present = torch.tensor(
            [p.grad is not None for p in parameters] + [meta_loss], dtype=torch.float64, device=self.device
        )
        dist.all_reduce(present)  # NCCL reduces CUDA tensors only: everything lives on the rank's device
        gradients = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in gradients])
        dist.all_reduce(flat)
        offset = 0
        for parameter, had_gradient in zip(parameters, present[:-1].tolist(), strict=True):
            size = parameter.numel()
            if had_gradient:
                parameter.grad = flat[offset : offset + size].view_as(parameter).clone()
            offset += size
        return float(present[-1].item())

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on some rank (so that all ranks stop at the same step)."""
        if self.world_size == 1:
            return flag
        value = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(value)
        return bool(value.item() > 0)

    def broadcast_state(self, module: torch.nn.Module) -> None:
        """Start every rank from rank 0's parameters and buffers."""
        if self.world_size == 1:
            return
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)

    def close(self) -> None:
        if self.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def launched_world_size() -> int:
    """How many processes `torchrun` started (1 without it)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def start(enabled: bool, device: torch.device, meta_batch_size: int) -> Ranks:
    """Join the process group `torchrun` set up (gloo on CPU, NCCL on CUDA), or run alone."""
    world_size = launched_world_size()
    if not enabled:
        if world_size > 1:
            raise MetaNLPError(
                f"launched by torchrun with WORLD_SIZE={world_size} but trainer.distributed=false; "
                "set trainer.distributed=true (or run without torchrun)"
            )
        return Ranks(device=device)
    if meta_batch_size % world_size:
        raise MetaNLPError(
            f"trainer.meta_batch_size={meta_batch_size} cannot be shared by {world_size} processes; "
            f"allowed: a multiple of {world_size}"
        )
    if world_size == 1:
        return Ranks(device=device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Ranks(rank=rank, world_size=world_size, device=device)
