"""What the benchmarks share: fixed synthetic meta-training workloads built from the real configs, the
train recipe's step, timing it, and measuring its peak memory in a fresh process.

A workload is an algorithm (`configs/algo/NAME.yaml`) on a backbone (`configs/backbone/NAME.yaml`),
composed and built as `metanlp train` builds them, fed seeded random token ids.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from tqdm.auto import tqdm

from metanlp_cli import CONFIG_DIR
from metanlp_cli.algorithms.base import Algorithm, LabelSpace
from metanlp_cli.algorithms.meta_step import meta_step
from metanlp_cli.components import build_algorithm, build_encoder
from metanlp_cli.sampling import Batch, Episode, episode_seed
from metanlp_cli.train import outer_optimizer

REPOSITORY = Path(__file__).resolve().parent.parent
NUM_TRAIN_CLASSES = 64  # the head size of finetune / multitask; episodes draw their classes from these


@dataclasses.dataclass(frozen=True)
class Workload:
    """One meta-training workload: which configs, and the shape of its synthetic episodes."""

    algo: str
    backbone: str
    inner_steps: int | None = None  # None: the algo YAML's algo.inner_train.steps
    n_way: int = 5
    k_shot: int = 5
    q_query: int = 15
    meta_batch: int = 4
    vocab: int = 5000
    length: int = 32

    def shape(self) -> str:
        return (
            f"vocabulary {self.vocab:,}, {self.length} tokens per sentence (no padding), {self.n_way}-way "
            f"{self.k_shot}-shot {self.q_query}-query episodes, meta-batch {self.meta_batch}"
        )


@dataclasses.dataclass(frozen=True)
class Timing:
    """How a workload is timed: `warmup` steps untimed, then `repeats` timed windows of `steps` steps each."""

    warmup: int = 1
    repeats: int = 3
    steps: int = 1
    threads: int = 1  # torch threads of the process that `measure` starts

    def describe(self, step: str = "meta-training step") -> str:
        return f"{self.warmup} warm-up {step}(s) untimed, then {self.repeats} timed windows of {self.steps} {step}(s)"


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def compose_train_config(workload: Workload) -> DictConfig:
    """The config `metanlp train algo=... backbone=...` composes, with the workload's sampler shape."""
    overrides = [
        f"algo={workload.algo}",
        f"backbone={workload.backbone}",
        f"sampler.n_way={workload.n_way}",
        f"sampler.k_shot={workload.k_shot}",
        f"sampler.q_query={workload.q_query}",
        f"trainer.meta_batch_size={workload.meta_batch}",
        "trainer.device=cpu",
    ]
    if workload.inner_steps is not None:
        overrides.append(f"algo.inner_train.steps={workload.inner_steps}")
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3", job_name="benchmark"):
        return compose("train", overrides=overrides)


def synthetic_episodes(workload: Workload, count: int, seed: int = 0) -> list[Episode]:
    """`count` episodes of seeded random token ids (1..vocab-1) over classes drawn from the meta-train classes."""
    generator = torch.Generator().manual_seed(seed)

    def batch(per_class: int, classes: torch.Tensor) -> Batch:
        inputs = torch.randint(1, workload.vocab, (workload.n_way * per_class, workload.length), generator=generator)
        return Batch(inputs, torch.arange(workload.n_way).repeat_interleave(per_class), classes)

    episodes = []
    for _ in range(count):
        classes = torch.randperm(NUM_TRAIN_CLASSES, generator=generator)[: workload.n_way]
        names = tuple(str(int(c)) for c in classes)
        episodes.append(Episode(batch(workload.k_shot, classes), batch(workload.q_query, classes), names))
    return episodes


def build_workload(workload: Workload, seed: int = 0) -> tuple[Algorithm, torch.optim.Optimizer, list[list[Episode]]]:
    """(algorithm, outer optimizer, two meta-batches of episodes), built as the train recipe builds them."""
    cfg = compose_train_config(workload)
    torch.manual_seed(seed)
    encoder = build_encoder(cfg, workload.vocab)
    algo = build_algorithm(cfg, encoder, LabelSpace(workload.n_way, NUM_TRAIN_CLASSES))
    optimizer = outer_optimizer(algo, cfg, encoder)
    episodes = synthetic_episodes(workload, 2 * workload.meta_batch, seed)
    return algo, optimizer, [episodes[: workload.meta_batch], episodes[workload.meta_batch :]]


def meta_train_step(algo: Algorithm, optimizer: torch.optim.Optimizer, episodes: list[Episode], step: int = 0) -> float:
    """Meta-batch `step` through the train recipe's own step (`meta_step`, one process, no clipping), with
    the episode seeds the recipe would give them. Returns the meta-loss."""
    seeds = [episode_seed(0, step * len(episodes) + index) for index in range(len(episodes))]
    return meta_step(algo, optimizer, episodes, seeds, len(episodes)).meta_loss


def window_seconds(step: Callable[[int], object], timing: Timing) -> list[float]:
    """Seconds per call of `step(index)` in each timed window, after the untimed warm-up calls."""
    for index in range(timing.warmup):
        step(index)
    windows = []
    for repeat in range(timing.repeats):
        started = time.perf_counter()
        for index in range(timing.steps):
            step(timing.warmup + repeat * timing.steps + index)
        windows.append((time.perf_counter() - started) / timing.steps)
    return windows


def median_seconds(step: Callable[[int], object], timing: Timing) -> float:
    """Median seconds per call of `step(index)`, warm-up excluded."""
    return statistics.median(window_seconds(step, timing))


def memory_kib(field: str) -> int | None:
    """A `Vm*` line of /proc/self/status in KiB (VmRSS: resident now, VmHWM: its peak); None off Linux."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith(f"{field}:"))
    except (OSError, StopIteration):
        return None


def reset_peak_memory() -> bool:
    """Set the peak resident size (VmHWM) to the current one (Linux >= 4.0); whether it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


def measure_here(workload: Workload, timing: Timing) -> dict[str, float | None]:
    """Time the workload's meta-training steps in this process and its peak memory above the built state."""
    torch.set_num_threads(timing.threads)
    algo, optimizer, meta_batches = build_workload(workload)
    resident = memory_kib("VmRSS") if reset_peak_memory() else None
    seconds = median_seconds(lambda i: meta_train_step(algo, optimizer, meta_batches[i % 2], i), timing)
    peak = memory_kib("VmHWM") if resident is not None else None
    return {
        "episodes_per_s": workload.meta_batch / seconds,
        "seconds_per_episode": seconds / workload.meta_batch,
        "resident_mib": resident / 1024 if resident is not None else None,
        "peak_training_mib": (peak - resident) / 1024 if peak is not None else None,
    }


def measure(workload: Workload, timing: Timing) -> dict[str, float | None]:
    """`measure_here` in a fresh process, so that no earlier workload's memory is reused. The process is
    forked from a server that imported this module (torch, metanlp) once: a new interpreter would spend
    seconds on imports per workload."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # no effect once the server runs
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(measure_here, workload, timing).result()


def measure_all(workloads: list[Workload], timing: Timing, label: str) -> dict[Workload, dict[str, float | None]]:
    """`measure` for each distinct workload, one fresh process each, with a progress bar."""
    results = {}
    for workload in tqdm(list(dict.fromkeys(workloads)), desc=label, dynamic_ncols=True):
        results[workload] = measure(workload, timing)
        tqdm.write(
            f"   {workload.algo}/{workload.backbone} inner_steps={workload.inner_steps} K={workload.k_shot}: "
            f"{results[workload]['episodes_per_s']:.2f} episodes/s, "
            f"{format_mib(results[workload]['peak_training_mib'])} MiB"
        )
    return results


MEMORY_METHOD = (
    "Peak memory: each workload runs in a fresh process (forked from one that has only imported torch and "
    "metanlp); after the model, optimizer and episodes are "
    "built its peak resident size is reset (`/proc/self/clear_refs`), and the figure is the peak resident "
    "size (`VmHWM`) over warm-up and timed steps minus the resident size right after building: the "
    "training's own peak (activations, the autograd graph, gradients, optimizer state), in MiB."
)


def format_mib(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"
