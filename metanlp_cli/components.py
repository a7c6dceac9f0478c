"""Building the pieces both recipes need (device, dataset, tokenized splits, model) from a config."""

from __future__ import annotations

import dataclasses
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
        encoded[name] = EncodedSplit.from_parts(name, tensors, fixed_tasks).to(device)
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
    regression = [task.name for task in getattr(dataset, "tasks", []) if task.regression]
    named = ", ".join(regression[:2]) + (f" and {len(regression) - 2} more" if len(regression) > 2 else "")
    has = "has" if len(regression) == 1 else "have"
    reason = f" ({named} {has} regression targets; episodes need class labels)" if regression else ""
    splits = " or ".join(PHASE_SPLITS[phase])
    return f"dataset {dataset.name} has no classification task with a {splits} split for the {phase} episodes{reason}"


def build_encoder(cfg: DictConfig, vocab_size: int) -> nn.Module:
    return build(cfg.backbone.encoder, "backbone.encoder", vocab_size=vocab_size)


def build_algorithm(cfg: DictConfig, encoder: nn.Module, label_space: LabelSpace) -> Algorithm:
    return build(cfg.algo, "algo", encoder=encoder, label_space=label_space)


def cache_frozen_features(
    encoder: nn.Module, splits: dict[str, EncodedSplit], progress: bool = True
) -> tuple[dict[str, EncodedSplit], float]:
    """Where the encoder is frozen, put its features in place of each split's token ids, computed once:
    every episode, in training and evaluation, reuses them. Returns the seconds taken too.

    An encoder opts in with `frozen_features(token_ids, progress) -> features | None` (None: it trains).
    """
    frozen_features = getattr(encoder, "frozen_features", None)
    start = time.perf_counter()
    cached = {}
    for name, split in splits.items():
        features = frozen_features(split.inputs, progress) if frozen_features else None
        if features is None:
            return splits, 0.0
        cached[name] = dataclasses.replace(split, inputs=features)
    return cached, time.perf_counter() - start
