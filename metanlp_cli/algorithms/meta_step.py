"""One meta-training step, the only one: what `metanlp train`, the tests and the benchmarks all run."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from metanlp_cli.algorithms.base import Algorithm
from metanlp_cli.distributed import Ranks
from metanlp_cli.sampling import Episode, EpisodeSampler, episode_seed


@dataclass(frozen=True)
class MetaStep:
    """What one step measured: the meta-batch's meta-loss and the gradient norm before clipping."""

    meta_loss: float
    gradient_norm: float

    @property
    def finite(self) -> bool:
        return math.isfinite(self.meta_loss) and math.isfinite(self.gradient_norm)


def meta_batch_episodes(
    sampler: EpisodeSampler, step: int, meta_batch_size: int, device: torch.device, ranks: Ranks = Ranks()
) -> tuple[list[Episode], list[int]]:
    """This process's episodes of meta-batch `step` and their seeds (dropout masks follow the episode, so a
    run is the same for any number of processes and after a resume)."""
    indices = ranks.episode_indices(step, meta_batch_size)  # all of them in one process
    return [sampler.episode(index).to(device) for index in indices], [episode_seed(sampler.seed, i) for i in indices]


def meta_step(
    algo: Algorithm,
    optimizer: torch.optim.Optimizer,
    episodes: Sequence[Episode],
    seeds: Sequence[int],
    meta_batch_size: int,
    grad_clip: float | None = None,
    ranks: Ranks = Ranks(),
) -> MetaStep:
    """Adapt on each support set and backpropagate the meta-loss on its query set (one loss per episode, or
    one for the whole meta-batch where the algorithm batches them), each divided by `meta_batch_size` (the
    meta-batch over all processes); sum the gradients over the processes; clip their norm to `grad_clip`;
    take the outer optimizer's step. A non-finite meta-loss or gradient skips the optimizer step, so the
    model keeps its last good weights; the caller decides what to do (`MetaStep.finite`)."""
    algo.train()
    optimizer.zero_grad()
    meta_loss = 0.0
    for loss in algo.meta_batch_losses(episodes, seeds):
        loss = loss / meta_batch_size
        loss.backward()
        meta_loss += loss.item()
    meta_loss = ranks.sum_gradients(algo.parameters(), meta_loss)
    gradient_norm = torch.nn.utils.clip_grad_norm_(algo.parameters(), grad_clip or math.inf)
    step = MetaStep(meta_loss, float(gradient_norm))
    if step.finite:
        optimizer.step()
    return step
