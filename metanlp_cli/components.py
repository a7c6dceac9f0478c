"""Building the pieces both recipes need (device, dataset, tokenized splits, model) from a config."""

from __future__ import annotations

import logging
import time
from collections import Counter

import torch
from omegaconf import DictConfig
from torch import nn

from metanlp_cli.algorithms.base import Algorithm, LabelSpace
from metanlp_cli.config import build
from metanlp_cli.data.cache import TokenCache
from metanlp_cli.data.types import PHASE_SPLITS, ClassSplit, EncodedSplit, TaskCollection, Text
from metanlp_cli.errors import MetaNLPError

log = logging.getLogger(__name__)

Dataset = ClassSplit | TaskCollection


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MetaNLPError(f"trainer.device={name!r} but CUDA is not available here; allowed: auto, cpu")
    return torch.device(name)


def load_dataset(cfg: DictConfig) -> Dataset:
    """The dataset of `cfg.dataset`, timed, with its notes (e.g. files that were missing) logged."""
    start = time.perf_counter()
    dataset = build(cfg.dataset, "dataset")
    if not isinstance(dataset, (ClassSplit, TaskCollection)):
        raise MetaNLPError(f"dataset._target_={cfg.dataset._target_} returned neither a class split nor tasks")
    for note in getattr(dataset, "notes", []):
        log.warning(note)
    log.info("%s: loaded in %.2fs", dataset.name, time.perf_counter() - start)
    return dataset


def training_texts(dataset: Dataset) -> list[Text]:
    """The texts of the meta-train episodes: what a tokenizer's vocabulary is fitted on."""
    return [text for _, _, texts in dataset.episode_parts("train") for text in texts.texts]


def encode_splits(
    tokenizer, dataset: Dataset, names: tuple[str, ...], device: torch.device, cache_dir: str | None = None
) -> tuple[dict[str, EncodedSplit], float]:
    """Tokenize each phase's texts once (from `cache_dir` when done before); episodes index into these
    tensors. Returns the seconds taken too."""
    start = time.perf_counter()
    cache, encoded, cached, seen = TokenCache(tokenizer, cache_dir), {}, Counter(), {}
    for name in names:
        parts = dataset.episode_parts(name)
        if not parts:
            raise MetaNLPError(no_episodes_message(dataset, name))
        if isinstance(dataset, TaskCollection):
            log_phase_splits(name, parts)
        tensors = []
        for task, _, texts in parts:
            if id(texts) not in seen:  # tasks may share a split (LM-BFF and LEOPARD share the test set)
                inputs, from_cache = cache.encode(texts.texts)
                seen[id(texts)] = inputs
                cached[from_cache] += 1
            tensors.append((task, texts, seen[id(texts)]))
        fixed_tasks = isinstance(dataset, TaskCollection)
        metrics = {task.name: task.metrics[0] for task in getattr(dataset, "tasks", []) if task.regression}
        encoded[name] = EncodedSplit.from_parts(name, tensors, fixed_tasks, metrics).to(device)
    seconds = time.perf_counter() - start
    if cache_dir is not None:
        log.info(
            "tokenized in %.2fs: %d of %d splits from the cache in %s", seconds, cached[True], cached.total(), cache_dir
        )
    return encoded, seconds


def log_phase_splits(phase: str, parts: list[tuple[str, str, object]]) -> None:
    """Which split the tasks' episodes of a phase come from, e.g. `test episodes: dev split of 1 task`."""
    counts = Counter(split for _, split, _ in parts)
    described = ", ".join(f"{split} split of {count} task{'s' * (count > 1)}" for split, count in counts.items())
    log.info("%s episodes: %s", phase, described)


def no_episodes_message(dataset: Dataset, phase: str) -> str:
    """Why a phase has no episodes: none of its tasks (classification or regression) has the split it reads."""
    splits = " or ".join(PHASE_SPLITS[phase])
    names = [task.name for task in getattr(dataset, "phase_tasks", lambda _: [])(phase)]
    named = ", ".join(names[:2]) + (f" and {len(names) - 2} more" if len(names) > 2 else "")
    tasks = f" (tasks: {named})" if names else ""
    return f"dataset {dataset.name} has no task with a {splits} split for the {phase} episodes{tasks}"


def build_encoder(cfg: DictConfig, vocab_size: int) -> nn.Module:
    return build(cfg.backbone.encoder, "backbone.encoder", vocab_size=vocab_size)


def build_algorithm(cfg: DictConfig, encoder: nn.Module, label_space: LabelSpace) -> Algorithm:
    return build(cfg.algo, "algo", encoder=encoder, label_space=label_space)
