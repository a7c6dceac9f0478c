"""Building the pieces both recipes need (device, dataset, tokenized splits, model) from a config."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import Counter, defaultdict

import torch
from omegaconf import DictConfig
from torch import nn

from metanlp_cli.algorithms.base import Algorithm, LabelSpace
from metanlp_cli.config import build
from metanlp_cli.data.cache import TokenCache
from metanlp_cli.data.types import PHASE_SPLITS, ClassSplit, EncodedSplit, TaskCollection, Text
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.protocols import KShotTask
from metanlp_cli.sampling import Batch

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


def frozen_features_of(encoder: nn.Module, token_ids: torch.Tensor, progress: bool = True) -> torch.Tensor | None:
    """The output of the encoder's frozen layers for these rows, or None where it has none."""
    frozen_features = getattr(encoder, "frozen_features", None)
    return frozen_features(token_ids, progress) if frozen_features else None


def cache_frozen_features(
    encoder: nn.Module, splits: dict[str, EncodedSplit], progress: bool = True
) -> tuple[dict[str, EncodedSplit], float]:
    """Where the encoder is frozen, put its features in place of each split's token ids, computed once:
    every episode, in training and evaluation, reuses them. Returns the seconds taken too.

    An encoder opts in with `frozen_features(token_ids, progress) -> features | None` (None: it trains).
    """
    start = time.perf_counter()
    cached = {}
    for name, split in splits.items():
        features = frozen_features_of(encoder, split.inputs, progress)
        if features is None:
            return splits, 0.0
        cached[name] = dataclasses.replace(split, inputs=features)
    return cached, time.perf_counter() - start


# Which split of a task the k-shot protocol scores, in order of preference (GLUE hides its test labels).
KSHOT_EVALUATION_SPLITS = {"test": ("test", "dev"), "val": ("dev",)}


def kshot_tasks(
    tokenizer,
    dataset: Dataset,
    split: str,
    encoder: nn.Module,
    device: torch.device,
    cache_dir: str | None = None,
    progress: bool = True,
) -> list[KShotTask]:
    """Each task of a collection as a k-shot training set: its train split as one support set, and
    the evaluation split `split` asks for. Shared evaluation splits are tokenized (and, for a frozen encoder,
    embedded) once; the tasks sharing one make up a group, named after the collection where there is one."""
    if not isinstance(dataset, TaskCollection):
        raise MetaNLPError(
            f"protocol=kshot needs a task collection (e.g. dataset=lmbff/sst2); {dataset.name} is a class split"
        )
    if split not in KSHOT_EVALUATION_SPLITS:
        raise MetaNLPError(
            f"split={split!r} with protocol=kshot; allowed: test, val (the train split is the support set)"
        )
    cache, inputs_of, chosen = TokenCache(tokenizer, cache_dir), {}, []
    for task in dataset.phase_tasks("test"):
        evaluation_split = next((s for s in KSHOT_EVALUATION_SPLITS[split] if task.split(s) is not None), None)
        if task.train is None or evaluation_split is None:
            wanted = " or ".join(KSHOT_EVALUATION_SPLITS[split])
            raise MetaNLPError(
                f"task {task.name} of {dataset.name} needs a train split and a {wanted} split for protocol=kshot"
            )
        for texts in (task.train, task.split(evaluation_split)):
            if id(texts) not in inputs_of:  # the training sets of a task share its evaluation split
                inputs_of[id(texts)] = cache.encode(texts.texts)[0].to(device)
        chosen.append((task, evaluation_split))
    start = time.perf_counter()
    for key, inputs in inputs_of.items():
        features = frozen_features_of(encoder, inputs, progress)
        if features is None:
            break
        inputs_of[key] = features
    else:
        log.info("frozen layers: their output for every example computed once, in %.2fs", time.perf_counter() - start)

    sharing = defaultdict(list)  # evaluation split -> the names of the tasks scored on it
    for task, name in chosen:
        sharing[id(task.split(name))].append(task.name)
    tasks = []
    for task, evaluation_split in chosen:
        evaluation, names = task.split(evaluation_split), sharing[id(task.split(evaluation_split))]
        group = dataset.name.rsplit("/", 1)[-1] if len(sharing) == 1 else os.path.commonprefix(names).rstrip("-_")
        label_type = torch.float32 if task.regression else torch.int64
        support = Batch(
            inputs_of[id(task.train)],
            torch.tensor(task.train.labels, dtype=label_type, device=device),
            torch.arange(len(task.label_names), device=device),
        )
        evaluation_labels = torch.tensor(evaluation.labels, dtype=label_type, device=device)
        tasks.append(
            KShotTask(
                task.name,
                group,
                support,
                inputs_of[id(evaluation)],
                evaluation_labels,
                evaluation_split,
                task.metrics,
                task.regression,
            )
        )
    return tasks
