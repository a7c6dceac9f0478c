"""The two shapes every loader returns, and the tokenized form the samplers index into.

- `ClassSplit`: examples grouped by class, with disjoint meta-train / meta-val / meta-test class sets
  (N-way K-shot episodes on unseen classes).
- `TaskCollection`: named tasks, each with its own labels (or a regression target), single texts
  or sentence pairs, and train / dev / test splits (GLUE-style and fixed-task benchmarks).

Both answer `episode_parts(phase)`: the labelled texts the episodic sampler draws the `train`,
`val` and `test` episodes from, so the recipes treat them alike.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from metanlp_cli.metrics import METRICS, REGRESSION_METRICS

# A text is one sentence or a sentence pair.
Text = str | tuple[str, str]


# Which split of a task each episodic phase reads, in order of preference (see TaskCollection).
PHASE_SPLITS = {"train": ("train",), "val": ("dev", "train"), "test": ("test", "dev")}


@dataclass(frozen=True)
class LabeledTexts:
    """Examples of one split: `labels[i]` indexes `class_names`, or is a float target when
    `class_names` is empty (regression). `source` names the file(s) they came from."""

    texts: list[Text]
    labels: list[int] | list[float]
    class_names: list[str]
    source: str = ""

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

    def episode_parts(self, phase: str) -> list[tuple[str, str, LabeledTexts]]:
        """(task, split, texts) for a phase: here one part, the phase's own class split."""
        return [(self.name, phase, self.split(phase))]


@dataclass(frozen=True)
class Task:
    """One task of a collection. A split is None where the benchmark has none or hides its labels;
    `label_names` is empty for a regression target; `metrics` are those the benchmark reports, the main one
    first. The k-shot protocols report the tasks of one `group` together (mean and std over them)."""

    name: str
    train: LabeledTexts | None
    dev: LabeledTexts | None
    test: LabeledTexts | None
    label_names: list[str]
    is_pair: bool = False
    regression: bool = False
    metrics: list[str] = field(default_factory=lambda: ["accuracy"])
    group: str = ""  # the benchmark task this is one training set of (`sst2` for `sst2-seed13`); "": its name

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            allowed = ", ".join(METRICS)
            raise ValueError(f"task {self.name}: metrics {unknown or '[]'} are not known; allowed: {allowed}")
        fits = [(m in REGRESSION_METRICS) == self.regression for m in self.metrics]
        if not all(fits):
            kind = "a regression" if self.regression else "a classification"
            raise ValueError(f"task {self.name}: metrics {self.metrics} do not fit {kind} task")
        if self.regression and self.label_names:
            raise ValueError(f"task {self.name}: a regression task has no label names")
        if not self.regression and len(self.label_names) < 2:
            raise ValueError(f"task {self.name}: a classification task needs at least 2 labels")

    def split(self, name: str) -> LabeledTexts | None:
        return {"train": self.train, "dev": self.dev, "test": self.test}[name]


@dataclass(frozen=True)
class TaskCollection:
    """Named tasks with their own splits. `meta_train_tasks` and `target_tasks` are the benchmark's
    division where it defines one (ARSC); None means every task. `notes` are facts to report on
    loading (for example, missing files that were not fatal).

    Episodic phases (the minimal path every task collection can train with): `train` episodes come
    from the meta-train tasks' train splits; `val` episodes from the target tasks' dev splits (their
    train split where a task has no dev split, e.g. LEOPARD), as ARSC and the GLUE meta-learning
    setups select models on the target tasks' dev sets; `test` episodes from the target tasks' test
    splits (the dev split where test labels are hidden, as in GLUE, which reports dev scores).
    A regression task (STS-B) takes part like any other: its episodes have float targets (see
    EpisodeSampler).
    """

    name: str
    tasks: list[Task]
    meta_train_tasks: list[str] | None = None
    target_tasks: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [task.name for task in self.tasks]
        duplicates = sorted(name for name, count in Counter(names).items() if count > 1)
        if duplicates:
            raise ValueError(f"{self.name}: task names {duplicates} are not unique")
        for key in ("meta_train_tasks", "target_tasks"):
            unknown = sorted(set(getattr(self, key) or ()) - set(names))
            if unknown:
                raise ValueError(f"{self.name}: {key} {unknown} are not tasks of the collection")

    def task(self, name: str) -> Task:
        return next(task for task in self.tasks if task.name == name)

    def phase_tasks(self, phase: str) -> list[Task]:
        chosen = self.meta_train_tasks if phase == "train" else self.target_tasks
        return self.tasks if chosen is None else [self.task(name) for name in chosen]

    def episode_parts(self, phase: str) -> list[tuple[str, str, LabeledTexts]]:
        """(task, split, texts) of every task of a phase, with the split it reads."""
        parts = []
        for task in self.phase_tasks(phase):
            split_name = next((s for s in PHASE_SPLITS[phase] if task.split(s) is not None), None)
            if split_name is not None:
                parts.append((task.name, split_name, task.split(split_name)))
        return parts


@dataclass(frozen=True)
class TaskClasses:
    """The classes of one task inside an encoded split, and the file(s) its examples came from.

    A regression task has no classes: `target_rows` are its rows (their targets are in
    `EncodedSplit.targets`), and `metric` is what its query sets are scored with, the task's first
    declared metric (Pearson for STS-B). A classification task's episodes are scored by accuracy."""

    name: str
    class_ids: np.ndarray
    source: str = ""
    target_rows: np.ndarray | None = None
    metric: str = "accuracy"

    @property
    def regression(self) -> bool:
        return self.target_rows is not None


@dataclass(frozen=True)
class EncodedSplit:
    """A split ready for the model: one input row per example (token ids padded with 0, or cached
    features), the labels, the row indices of each class, and which classes make up each task
    (a class split is one task of all its classes). `fixed_tasks` marks a task collection's split,
    whose class sizes are the benchmark's own (see EpisodeSampler). The rows of a regression task
    have label -1 and their float target in `targets` (None when the split has no regression task)."""

    name: str
    inputs: torch.Tensor  # [examples, ...]: int64 token ids (0 = padding) or float features
    labels: torch.Tensor  # [examples], int64
    class_names: list[str]
    rows_by_class: list[np.ndarray] = field(repr=False)
    tasks: list[TaskClasses] = field(default_factory=list, repr=False)
    fixed_tasks: bool = False
    targets: torch.Tensor | None = field(default=None, repr=False)  # [examples], float32; NaN: a class label

    def __post_init__(self) -> None:
        if not self.tasks:
            object.__setattr__(self, "tasks", [TaskClasses(self.name, np.arange(len(self.class_names)))])

    @classmethod
    def from_tensors(cls, name: str, inputs: torch.Tensor, labels: list[int], class_names: list[str]) -> EncodedSplit:
        label_array = np.asarray(labels, dtype=np.int64)
        rows = [np.flatnonzero(label_array == c) for c in range(len(class_names))]
        return cls(name, inputs, torch.as_tensor(label_array), class_names, rows)

    @classmethod
    def from_parts(
        cls,
        name: str,
        parts: list[tuple[str, LabeledTexts, torch.Tensor]],
        fixed_tasks: bool = False,
        regression_metrics: Mapping[str, str] | None = None,
    ) -> EncodedSplit:
        """One split from several tasks' (name, texts, inputs): classes are numbered task after task,
        named `task/label` when there is more than one task, and token rows padded to one width.
        Texts without class names are a regression task's, scored with `regression_metrics[task]`
        (default Pearson)."""
        width = max(inputs.shape[1] for _, _, inputs in parts)
        qualify = len(parts) > 1
        all_inputs, labels, targets, class_names, tasks = [], [], [], [], []
        row = 0
        for task_name, texts, inputs in parts:
            offset = len(class_names)
            token_ids = not inputs.is_floating_point()
            all_inputs.append(F.pad(inputs, (0, width - inputs.shape[1])) if token_ids else inputs)
            if texts.class_names:
                labels.append(np.asarray(texts.labels, dtype=np.int64) + offset)
                targets.append(np.full(len(texts), np.nan, dtype=np.float32))
                class_names += [f"{task_name}/{c}" if qualify else c for c in texts.class_names]
                tasks.append(TaskClasses(task_name, np.arange(offset, len(class_names)), texts.source))
            else:
                labels.append(np.full(len(texts), -1, dtype=np.int64))
                targets.append(np.asarray(texts.labels, dtype=np.float32))
                metric = (regression_metrics or {}).get(task_name, "pearson")
                rows = np.arange(row, row + len(texts))
                tasks.append(TaskClasses(task_name, np.arange(0), texts.source, rows, metric))
            row += len(texts)
        label_array = np.concatenate(labels)
        rows = [np.flatnonzero(label_array == c) for c in range(len(class_names))]
        target_tensor = torch.from_numpy(np.concatenate(targets)) if any(t.regression for t in tasks) else None
        return cls(
            name,
            torch.cat(all_inputs),
            torch.as_tensor(label_array),
            class_names,
            rows,
            tasks,
            fixed_tasks,
            target_tensor,
        )

    def to(self, device: torch.device | str) -> EncodedSplit:
        return EncodedSplit(
            self.name,
            self.inputs.to(device),
            self.labels.to(device),
            self.class_names,
            self.rows_by_class,
            self.tasks,
            self.fixed_tasks,
            None if self.targets is None else self.targets.to(device),
        )
