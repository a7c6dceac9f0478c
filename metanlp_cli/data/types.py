"""The two things every loader returns and the tokenized form the samplers index into."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

# A text is one sentence or a sentence pair.
Text = str | tuple[str, str]


@dataclass(frozen=True)
class LabeledTexts:
    """Examples of one split: `labels[i]` indexes `class_names`."""

    texts: list[Text]
    labels: list[int]
    class_names: list[str]

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise ValueError(f"{len(self.texts)} texts but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.texts)

    def examples_per_class(self) -> dict[str, int]:
        counts = Counter(self.labels)
        return {name: counts.get(i, 0) for i, name in enumerate(self.class_names)}


@dataclass(frozen=True)
class ClassSplit:
    """A class-split dataset: meta-train / meta-val / meta-test with disjoint class sets."""

    name: str
    train: LabeledTexts
    val: LabeledTexts
    test: LabeledTexts

    def __post_init__(self) -> None:
        splits = {"train": self.train, "val": self.val, "test": self.test}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = set(splits[a].class_names) & set(splits[b].class_names)
            if shared:
                raise ValueError(f"{self.name}: classes {sorted(shared)[:5]} are in both {a} and {b}")

    def split(self, name: str) -> LabeledTexts:
        return {"train": self.train, "val": self.val, "test": self.test}[name]


@dataclass(frozen=True)
class EncodedSplit:
    """A split ready for the model: one input row per example (token ids padded with 0, or cached
    features), the labels, and the row indices of each class."""

    name: str
    inputs: torch.Tensor  # [examples, ...]: int64 token ids (0 = padding) or float features
    labels: torch.Tensor  # [examples], int64
    class_names: list[str]
    rows_by_class: list[np.ndarray] = field(repr=False)

    @classmethod
    def from_tensors(cls, name: str, inputs: torch.Tensor, labels: list[int], class_names: list[str]) -> EncodedSplit:
        label_array = np.asarray(labels, dtype=np.int64)
        rows = [np.flatnonzero(label_array == c) for c in range(len(class_names))]
        return cls(name, inputs, torch.as_tensor(label_array), class_names, rows)

    def to(self, device: torch.device | str) -> EncodedSplit:
        return EncodedSplit(
            self.name, self.inputs.to(device), self.labels.to(device), self.class_names, self.rows_by_class
        )
