"""The built-in dataset: English topics of the chatterbot-corpus package, split by topic."""

from __future__ import annotations

import importlib.resources

import numpy as np
import yaml

from metanlp_cli.data.types import ClassSplit, LabeledTexts
from metanlp_cli.errors import MetaNLPError


def _topic_lines(language: str) -> dict[str, list[str]]:
    """Unique lines of every conversation file, one topic per YAML file, in file-name order."""
    folder = importlib.resources.files("chatterbot_corpus") / "data" / language
    if not folder.is_dir():
        raise MetaNLPError(f"dataset.language={language!r}: chatterbot-corpus has no such language folder")
    topics: dict[str, list[str]] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".yml"):
            continue
        document = yaml.safe_load(entry.read_text(encoding="utf-8")) or {}
        lines: dict[str, None] = {}
        for conversation in document.get("conversations", []):
            for line in conversation:
                if isinstance(line, str) and line.strip():
                    lines.setdefault(" ".join(line.split()), None)
        topics[entry.name.removesuffix(".yml")] = list(lines)
    return topics


def _labeled(topics: dict[str, list[str]], names: list[str], language: str) -> LabeledTexts:
    texts, labels = [], []
    for index, name in enumerate(names):
        texts += topics[name]
        labels += [index] * len(topics[name])
    return LabeledTexts(texts, labels, names, f"chatterbot_corpus/data/{language}")


def chatterbot_topics(
    language: str = "english",
    min_examples: int = 20,
    val_classes: int = 5,
    test_classes: int = 5,
    split_seed: int = 0,
) -> ClassSplit:
    """Topics with at least `min_examples` unique lines, shuffled by `split_seed` into disjoint splits."""
    topics = {name: lines for name, lines in _topic_lines(language).items() if len(lines) >= min_examples}
    names = sorted(topics)
    if len(names) < val_classes + test_classes + 1:
        raise MetaNLPError(
            f"dataset: only {len(names)} topics have >= {min_examples} lines; "
            f"cannot hold out {val_classes} + {test_classes}"
        )
    order = [names[i] for i in np.random.default_rng(split_seed).permutation(len(names))]
    test, val, train = (
        order[:test_classes],
        order[test_classes : test_classes + val_classes],
        order[test_classes + val_classes :],
    )
    return ClassSplit(
        f"chatterbot-{language}",
        train=_labeled(topics, sorted(train), language),
        val=_labeled(topics, sorted(val), language),
        test=_labeled(topics, sorted(test), language),
    )
