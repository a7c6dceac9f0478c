"""Shared fixtures: a synthetic separable text task, a tiny encoder, and config composition."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from metanlp_cli import CONFIG_DIR
from metanlp_cli.algorithms.meta_step import meta_batch_episodes, meta_step
from metanlp_cli.data.types import EncodedSplit
from metanlp_cli.sampling import EpisodeSampler

KEYWORDS = 24  # token ids 3..26 are keywords, 27..66 noise


def keyword_split(
    name: str, class_ids: range, examples_per_class: int = 30, length: int = 12, seed: int = 0
) -> EncodedSplit:
    """Class c is a fixed set of 3 keywords; every sentence has 2 of them among noise words.
    Train and test classes share the keyword pool (different combinations), so the task is
    separable for a model that learned the keywords."""
    rng = np.random.default_rng(seed)
    combos = np.random.default_rng(123).permutation(
        [(a, b, c) for a in range(KEYWORDS) for b in range(a + 1, KEYWORDS) for c in range(b + 1, KEYWORDS)]
    )
    rows, labels = [], []
    for label, class_id in enumerate(class_ids):
        keywords = combos[class_id] + 3
        for _ in range(examples_per_class):
            sentence = rng.integers(3 + KEYWORDS, 3 + KEYWORDS + 40, size=length)
            sentence[rng.choice(length, size=2, replace=False)] = rng.choice(keywords, size=2, replace=False)
            rows.append(sentence)
            labels.append(label)
    token_ids = torch.as_tensor(np.stack(rows), dtype=torch.long)
    return EncodedSplit.from_tensors(name, token_ids, labels, [f"class{c}" for c in class_ids])


VOCAB_SIZE = 3 + KEYWORDS + 40


@pytest.fixture
def keyword_task():
    """(train sampler, test split): 30 meta-train classes, 10 held-out classes."""
    train = keyword_split("train", range(0, 30), seed=1)
    test = keyword_split("test", range(30, 40), seed=2)
    return EpisodeSampler(train, n_way=5, k_shot=5, q_query=10, seed=0), test


class TinyEncoder(nn.Module):
    """Mean of embeddings through a tanh layer: small enough for finite differences in float64."""

    def __init__(self, vocab_size: int = 12, dim: int = 3) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.layer = nn.Linear(dim, dim)
        self.output_dim = dim

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        mask = (token_ids != 0).unsqueeze(-1).to(self.embedding.weight.dtype)
        pooled = (self.embedding(token_ids) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return torch.tanh(self.layer(pooled))


def meta_train(algo, sampler: EpisodeSampler, steps: int, lr: float = 3e-3, meta_batch_size: int = 2) -> None:
    """Meta-train an algorithm directly with the train recipe's own step (Adam, no clipping, one process)."""
    optimizer = torch.optim.Adam(algo.parameters(), lr=lr)
    for step in range(steps):
        episodes, seeds = meta_batch_episodes(sampler, step, meta_batch_size, torch.device("cpu"))
        meta_step(algo, optimizer, episodes, seeds, meta_batch_size)


@pytest.fixture
def compose_config():
    """compose_config("train", [overrides]) -> the composed DictConfig, as `metanlp` would see it."""

    def _compose(name: str, overrides: list[str] = ()):
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3", job_name=name):
            return compose(name, overrides=list(overrides))

    return _compose


def data_root() -> Path | None:
    root = os.environ.get("METANLP_DATA_ROOT")
    return Path(root) if root and Path(root).is_dir() else None


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: run with `make test-full` (pytest --run-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
