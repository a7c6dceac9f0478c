"""Building the pieces both recipes need (device, tokenized splits, model) from a config."""

from __future__ import annotations

import dataclasses
import time

import torch
from omegaconf import DictConfig
from torch import nn

from metanlp_cli.algorithms.base import Algorithm, LabelSpace
from metanlp_cli.config import build
from metanlp_cli.data.types import ClassSplit, EncodedSplit
from metanlp_cli.errors import MetaNLPError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MetaNLPError(f"trainer.device={name!r} but CUDA is not available here; allowed: auto, cpu")
    return torch.device(name)


def load_dataset(cfg: DictConfig) -> ClassSplit:
    dataset = build(cfg.dataset, "dataset")
    if not isinstance(dataset, ClassSplit):
        raise MetaNLPError(
            f"dataset={cfg.dataset._target_} is not a class-split dataset; the episodic sampler needs one"
        )
    return dataset


def encode_splits(
    tokenizer, dataset: ClassSplit, names: tuple[str, ...], device: torch.device
) -> tuple[dict[str, EncodedSplit], float]:
    """Tokenize each split once; episodes index into these tensors. Returns the seconds taken too."""
    start = time.perf_counter()
    encoded = {}
    for name in names:
        split = dataset.split(name)
        encoded[name] = EncodedSplit.from_tensors(
            name, tokenizer.encode(split.texts), split.labels, split.class_names
        ).to(device)
    return encoded, time.perf_counter() - start


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
