"""Building the pieces both recipes need (device, dataset, tokenized splits, model) from a config."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from metanlp_cli.algorithms.base import Algorithm, LabelSpace
from metanlp_cli.config import build
from metanlp_cli.data.cache import FeatureCache, TokenCache
from metanlp_cli.data.duplicates import dataset_node, handle_duplicates
from metanlp_cli.data.types import PHASE_SPLITS, ClassSplit, EncodedSplit, TaskCollection, Text
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.protocols import KShotProtocol, KShotTask
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
    node, dedupe = dataset_node(cfg.dataset)  # `dataset.dedupe` is no loader's: repeated texts are handled here
    dataset = build(node, "dataset")
    if not isinstance(dataset, (ClassSplit, TaskCollection)):
        raise MetaNLPError(f"dataset._target_={cfg.dataset._target_} returned neither a class split nor tasks")
    dataset = handle_duplicates(dataset, dedupe)
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


def frozen_features_of(
    encoder: nn.Module, token_ids: torch.Tensor, progress: bool, cache: FeatureCache
) -> tuple[torch.Tensor | None, bool]:
    """The output of the encoder's frozen layers for these rows (None where it has none), and whether
    it was read from `cache`."""
    frozen_features = getattr(encoder, "frozen_features", None)
    if frozen_features is None:
        return None, False
    return cache.features(token_ids, lambda rows: frozen_features(rows, progress))


def cache_frozen_features(
    encoder: nn.Module, splits: dict[str, EncodedSplit], progress: bool = True, cache_dir: str | None = None
) -> tuple[dict[str, EncodedSplit], float]:
    """Where the encoder is frozen, put its features in place of each split's token ids, computed once:
    every episode, in training and evaluation, reuses them. With `cache_dir` they are also kept on disk
    for the next run (see `FeatureCache`). Returns the seconds taken too.

    An encoder opts in with `frozen_features(token_ids, progress) -> features | None` (None: it trains),
    and to the disk cache with `feature_fingerprint() -> str`.
    """
    start = time.perf_counter()
    cache, cached, from_cache = FeatureCache(encoder, cache_dir), {}, 0
    for name, split in splits.items():
        features, hit = frozen_features_of(encoder, split.inputs, progress, cache)
        if features is None:
            return splits, 0.0
        cached[name] = dataclasses.replace(split, inputs=features)
        from_cache += hit
    if cache.cache_dir is not None:
        log.info("features from cache: %d of %d splits, in %s", from_cache, len(splits), cache.cache_dir)
    return cached, time.perf_counter() - start


def kshot_tasks(
    tokenizer,
    dataset: Dataset,
    split: str,
    encoder: nn.Module,
    device: torch.device,
    protocol: KShotProtocol,
    cache_dir: str | None = None,
    progress: bool = True,
) -> list[KShotTask]:
    """Each target task of a collection as the protocol's training sets (rows of its train split, each one
    support set) and the evaluation split that `split` asks for. Every split (or the rows of it that the
    training sets use) is tokenized, and for a frozen encoder embedded, once: LM-BFF's seeds share their
    test set. The training sets of a task are reported together, under its `group` (or its name)."""
    named = f"protocol={protocol.name}"
    if not isinstance(dataset, TaskCollection):
        raise MetaNLPError(
            f"{named} needs a task collection (e.g. dataset=lmbff/sst2); {dataset.name} is a class split"
        )
    if split not in protocol.evaluation_splits:
        allowed = ", ".join(protocol.evaluation_splits)
        raise MetaNLPError(f"split={split!r} with {named}; allowed: {allowed} (the train split is the support set)")
    wanted = protocol.evaluation_splits[split]
    cache, inputs_of, chosen = TokenCache(tokenizer, cache_dir), {}, []
    for task in dataset.phase_tasks("test"):
        evaluation_split = next((s for s in wanted if task.split(s) is not None), None)
        if task.train is None or evaluation_split is None:
            raise MetaNLPError(
                f"task {task.name} of {dataset.name} needs a train split and a {' or '.join(wanted)} split for {named}"
            )
        training_sets = protocol.training_sets(task)
        used = [rows for _, rows in training_sets]
        train_rows = None if any(rows is None for rows in used) else np.unique(np.concatenate(used))
        evaluation = task.split(evaluation_split)
        # Keyed by the texts' identity and the rows taken: the training sets of a task share its evaluation split.
        train_key = (id(task.train), None if train_rows is None else train_rows.tobytes())
        for key, texts, rows in ((train_key, task.train, train_rows), ((id(evaluation), None), evaluation, None)):
            if key not in inputs_of:
                inputs_of[key] = cache.encode(texts.texts if rows is None else [texts.texts[i] for i in rows])[0]
                inputs_of[key] = inputs_of[key].to(device)
        chosen.append((task, evaluation_split, training_sets, train_rows, train_key))
    start, features_cache, from_cache = time.perf_counter(), FeatureCache(encoder, cache_dir), 0
    for key, inputs in inputs_of.items():
        features, hit = frozen_features_of(encoder, inputs, progress, features_cache)
        if features is None:
            break
        inputs_of[key] = features
        from_cache += hit
    else:
        log.info("frozen layers: their output for every example computed once, in %.2fs", time.perf_counter() - start)
        if features_cache.cache_dir is not None:
            log.info("features from cache: %d of %d splits, in %s", from_cache, len(inputs_of), cache_dir)

    tasks = []
    for task, evaluation_split, training_sets, train_rows, train_key in chosen:
        evaluation, train_inputs = task.split(evaluation_split), inputs_of[train_key]
        label_type = torch.float32 if task.regression else torch.int64
        train_labels = torch.tensor(task.train.labels, dtype=label_type, device=device)
        for name, rows in training_sets:
            if rows is None:
                support_inputs, support_labels = train_inputs, train_labels
            else:  # the encoded rows are `train_rows`: find these among them
                positions = torch.as_tensor(np.searchsorted(train_rows, rows), device=device)
                support_inputs = train_inputs[positions]
                support_labels = train_labels[torch.as_tensor(rows, device=device)]
            support = Batch(support_inputs, support_labels, torch.arange(len(task.label_names), device=device))
            tasks.append(
                KShotTask(
                    name,
                    task.group or task.name,
                    support,
                    inputs_of[(id(evaluation), None)],
                    torch.tensor(evaluation.labels, dtype=label_type, device=device),
                    evaluation_split,
                    task.metrics,
                    task.regression,
                )
            )
    return tasks
