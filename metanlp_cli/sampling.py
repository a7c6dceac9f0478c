"""N-way K-shot Q-query episodes. Episode `i` of a sampler is a pure function of `(seed, i)`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from metanlp_cli.data.types import EncodedSplit, TaskClasses
from metanlp_cli.errors import MetaNLPError


@dataclass(frozen=True)
class Batch:
    """Token ids and episode-local labels (0..N-1); `classes` are the split-level class ids.
    A regression batch (STS-B) has float targets as its labels and no classes."""

    inputs: torch.Tensor
    labels: torch.Tensor
    classes: torch.Tensor

    def __len__(self) -> int:
        return self.labels.shape[0]

    @property
    def is_regression(self) -> bool:
        return self.labels.is_floating_point()

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.inputs.to(device), self.labels.to(device), self.classes.to(device))


@dataclass(frozen=True)
class Episode:
    """A task: a support set to adapt on and a disjoint query set to score, by `metric` (accuracy,
    or a regression task's first metric). A regression episode has no class names."""

    support: Batch
    query: Batch
    class_names: tuple[str, ...]
    metric: str = "accuracy"

    @property
    def n_way(self) -> int:
        return len(self.class_names)

    def to(self, device: torch.device | str) -> Episode:
        return Episode(self.support.to(device), self.query.to(device), self.class_names, self.metric)


def concatenate_inputs(inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """The rows of several batches as one encoder input. Token ids of different widths are padded on
    the right with 0 (padding) to the widest; so are cached hidden states [rows, length, hidden + 1],
    whose last channel, the attention mask, is then 0 too. Pooled features [rows, dim] concatenate as they are."""
    if inputs[0].is_floating_point() and inputs[0].dim() == 2:
        return torch.cat(list(inputs))
    width = max(x.shape[1] for x in inputs)
    padding = [(0, 0) * (x.dim() - 2) + (0, width - x.shape[1]) for x in inputs]
    return torch.cat([F.pad(x, pad) for x, pad in zip(inputs, padding, strict=True)])


# The task weightings an episode's task is drawn by, as the exponent of the task's size.
TASK_WEIGHTS = ("uniform", "proportional", "mixture")


def task_size(split: EncodedSplit, task: TaskClasses) -> int:
    """The number of examples of a task in `split`."""
    if task.regression:
        return len(task.target_rows)
    return sum(len(split.rows_by_class[c]) for c in task.class_ids)


def task_probabilities(split: EncodedSplit, task_weights: str, task_alpha: float) -> np.ndarray:
    """The probability of each task of `split` being an episode's: size ** alpha, normalised, where
    size is the task's number of examples and alpha is 0 (uniform), 1 (proportional) or `task_alpha`."""
    alpha = {"uniform": 0.0, "proportional": 1.0, "mixture": task_alpha}[task_weights]
    sizes = np.array([task_size(split, task) for task in split.tasks], float)
    weights = sizes**alpha
    return weights / weights.sum()


def _trim(token_ids: torch.Tensor) -> torch.Tensor:
    """Drop padding columns that no row of this batch uses (keeps at least 5 for the CNN).
    Float inputs (cached features) are returned as they are."""
    if token_ids.is_floating_point():
        return token_ids
    used = int((token_ids != 0).any(dim=0).nonzero().max().item()) + 1 if token_ids.any() else 1
    return token_ids[:, : max(used, min(5, token_ids.shape[1]))]


CLASS_ORDERS = ("shuffled", "declared")
QUERY_DISTRIBUTIONS = ("balanced", "natural")


class EpisodeSampler:
    """Samples N classes, then K support and Q query examples of each, without overlap.

    On a split with several tasks (a task collection's), an episode first picks a task by
    `task_weights` (Dou et al. 2019): `uniform` (every task alike), `proportional` (to its number of
    examples in the split) or `mixture` (to size ** `task_alpha`, normalised: alpha 0 is uniform,
    1 proportional); N is `n_way` or that task's label count if smaller. A task collection's classes keep the
    benchmark's sizes, which may be below K + Q (LM-BFF and LEOPARD give 16 examples per class):
    such a task's query sets hold what is left after the support set, the same number for every
    class, recorded in `capped_query_sizes`. A class split instead refuses K + Q above its
    smallest class, since there a class is one of many to sample.

    A regression task's episode has as many examples as an N-way one (so meta-batches are alike):
    `n_way * k_shot` support and `n_way * q_query` query rows drawn from the task's rows without
    overlap, float targets as labels and no classes (`Batch.is_regression`); a small task's query
    is capped as above, in the same units (`n_way` examples per unit of `q_query`).

    `class_order` and `query` say what an episode may teach about a task's labels. `shuffled` (the
    default) gives the N sampled classes the local labels 0..N-1 in a random order, so a label's position
    means nothing across episodes; `declared` keeps each task's classes in the order the task declares
    them, so that where the tasks share their label semantics (ARSC's negative / positive) the position is
    that label, as it is at test time, and a learner can carry a bias for it. `balanced` queries hold the
    same number of each class; `natural` ones are `n_way * q_query` rows drawn from the chosen classes'
    rows left after the support set, so they follow the task's own label distribution (ARSC's test files
    are 57-94% positive) while the support set stays K per class.
    """

    def __init__(
        self,
        split: EncodedSplit,
        n_way: int = 5,
        k_shot: int = 5,
        q_query: int = 15,
        seed: int = 0,
        task_weights: str = "uniform",
        task_alpha: float = 0.5,
        class_order: str = "shuffled",
        query: str = "balanced",
        key: str = "sampler",
    ) -> None:
        if class_order not in CLASS_ORDERS:
            raise MetaNLPError(f"{key}.class_order={class_order!r}; allowed: {', '.join(CLASS_ORDERS)}")
        if query not in QUERY_DISTRIBUTIONS:
            raise MetaNLPError(f"{key}.query={query!r}; allowed: {', '.join(QUERY_DISTRIBUTIONS)}")
        if task_weights not in TASK_WEIGHTS:
            raise MetaNLPError(f"{key}.task_weights={task_weights!r}; allowed: {', '.join(TASK_WEIGHTS)}")
        if task_alpha < 0:
            raise MetaNLPError(f"{key}.task_alpha={task_alpha}; allowed: a number >= 0")
        if n_way < 2 or k_shot < 1 or q_query < 1:
            raise MetaNLPError(f"{key}: need n_way >= 2, k_shot >= 1, q_query >= 1 (got {n_way}, {k_shot}, {q_query})")
        if not split.fixed_tasks and n_way > len(split.class_names):
            raise MetaNLPError(
                f"{key}.n_way={n_way} but the {split.name} split has only {len(split.class_names)} classes; "
                f"allowed: n_way <= {len(split.class_names)}"
            )
        self.split = split
        self.n_way, self.k_shot, self.q_query, self.seed = n_way, k_shot, q_query, seed
        self.class_order, self.query = class_order, query
        self.query_sizes = [self._query_size(task, key) for task in split.tasks]
        self.capped_query_sizes = {
            task.name: size for task, size in zip(split.tasks, self.query_sizes, strict=True) if size < q_query
        }
        self.task_weights = task_weights
        self.task_probabilities = task_probabilities(split, task_weights, task_alpha)

    def _query_size(self, task: TaskClasses, key: str) -> int:
        where = f"of the {self.split.name} split" + (f" ({task.source})" if task.source else "")
        if task.regression:
            return self._regression_query_size(task, key, where)
        if len(task.class_ids) < 2:
            raise MetaNLPError(f"{key}: task {task.name!r} {where} has {len(task.class_ids)} class; episodes need 2")
        sizes = np.array([len(self.split.rows_by_class[c]) for c in task.class_ids])
        smallest = int(sizes.argmin())
        count, name = int(sizes[smallest]), self.split.class_names[task.class_ids[smallest]]
        if count >= self.k_shot + self.q_query:
            return self.q_query
        if self.split.fixed_tasks and count > self.k_shot:
            return count - self.k_shot
        if self.split.fixed_tasks:
            raise MetaNLPError(
                f"{key}: k_shot = {self.k_shot} but class {name!r} {where} has only {count} examples, "
                f"and each class needs a query example too; allowed: k_shot <= {count - 1}"
            )
        raise MetaNLPError(
            f"{key}: k_shot + q_query = {self.k_shot + self.q_query} but class {name!r} {where} has only "
            f"{count} examples; allowed: k_shot + q_query <= {count}"
        )

    def _regression_query_size(self, task: TaskClasses, key: str, where: str) -> int:
        """q_query, or (fixed tasks) what the rows left after the support set hold, per way."""
        count, support = len(task.target_rows), self.n_way * self.k_shot
        if count >= self.n_way * (self.k_shot + self.q_query):
            return self.q_query
        if self.split.fixed_tasks and count >= support + self.n_way:
            return (count - support) // self.n_way
        needs = "n_way * (k_shot + 1)" if self.split.fixed_tasks else "n_way * (k_shot + q_query)"
        needed = self.n_way * (self.k_shot + (1 if self.split.fixed_tasks else self.q_query))
        raise MetaNLPError(
            f"{key}: regression task {task.name!r} {where} has only {count} examples, but an episode needs "
            f"{needs} = {needed}; allowed: {needs} <= {count}"
        )

    def episode(self, index: int) -> Episode:
        rng = np.random.default_rng([self.seed, index])
        if len(self.split.tasks) == 1:
            task = 0
        elif self.task_weights == "uniform":  # kept as it was, so earlier runs' episodes stay the same
            task = int(rng.integers(len(self.split.tasks)))
        else:
            task = int(rng.choice(len(self.split.tasks), p=self.task_probabilities))
        if self.split.tasks[task].regression:
            return self._regression_episode(self.split.tasks[task], self.query_sizes[task], rng)
        task_classes, q_query = self.split.tasks[task].class_ids, self.query_sizes[task]
        n_way = min(self.n_way, len(task_classes))
        classes = task_classes[rng.choice(len(task_classes), size=n_way, replace=False)]
        if self.class_order == "declared":
            classes = np.sort(classes)  # a task's class ids follow its declared label order
        if self.query == "natural":
            return self._natural_episode(classes, n_way * q_query, rng)
        support_rows, query_rows = [], []
        for class_id in classes:
            rows = self.split.rows_by_class[class_id]
            chosen = rows[rng.choice(len(rows), size=self.k_shot + q_query, replace=False)]
            support_rows.append(chosen[: self.k_shot])
            query_rows.append(chosen[self.k_shot :])
        return Episode(
            support=self._batch(np.concatenate(support_rows), classes, self.k_shot),
            query=self._batch(np.concatenate(query_rows), classes, q_query),
            class_names=tuple(self.split.class_names[c] for c in classes),
        )

    def _natural_episode(self, classes: np.ndarray, query_size: int, rng: np.random.Generator) -> Episode:
        """K support rows per class, then `query_size` query rows drawn from all the classes' other rows."""
        support_rows, rest, rest_labels = [], [], []
        for local, class_id in enumerate(classes):
            rows = self.split.rows_by_class[class_id]
            order = rng.permutation(len(rows))
            support_rows.append(rows[order[: self.k_shot]])
            rest.append(rows[order[self.k_shot :]])
            rest_labels.append(np.full(len(rows) - self.k_shot, local))
        rest_rows, rest_local = np.concatenate(rest), np.concatenate(rest_labels)
        picked = rng.choice(len(rest_rows), size=min(query_size, len(rest_rows)), replace=False)
        return Episode(
            support=self._batch(np.concatenate(support_rows), classes, self.k_shot),
            query=self._batch(rest_rows[picked], classes, labels=rest_local[picked]),
            class_names=tuple(self.split.class_names[c] for c in classes),
        )

    def _regression_episode(self, task: TaskClasses, q_query: int, rng: np.random.Generator) -> Episode:
        support = self.n_way * self.k_shot
        chosen = task.target_rows[rng.choice(len(task.target_rows), size=support + self.n_way * q_query, replace=False)]
        return Episode(
            support=self._regression_batch(chosen[:support]),
            query=self._regression_batch(chosen[support:]),
            class_names=(),
            metric=task.metric,
        )

    def _regression_batch(self, rows: np.ndarray) -> Batch:
        index = torch.from_numpy(rows).to(self.split.inputs.device)
        return Batch(
            inputs=_trim(self.split.inputs[index]),
            labels=self.split.targets[index],
            classes=torch.zeros(0, dtype=torch.int64, device=index.device),
        )

    def _batch(
        self, rows: np.ndarray, classes: np.ndarray, per_class: int = 0, labels: np.ndarray | None = None
    ) -> Batch:
        """The rows as a batch: `per_class` rows of each class in turn, or each row's local label in `labels`."""
        index = torch.from_numpy(rows).to(self.split.inputs.device)
        local = torch.arange(len(classes)).repeat_interleave(per_class) if labels is None else torch.from_numpy(labels)
        return Batch(
            inputs=_trim(self.split.inputs[index]),
            labels=local.to(index.device),
            classes=torch.from_numpy(classes).to(index.device),
        )

    def meta_batch(self, step: int, size: int) -> list[Episode]:
        return [self.episode(step * size + j) for j in range(size)]

    def episodes(self, count: int) -> list[Episode]:
        return [self.episode(i) for i in range(count)]


def episode_seed(seed: int, index: int) -> int:
    """The torch seed for episode `index`'s own randomness (dropout masks), so that they too depend on
    (seed, index) only: not on how many episodes came before in this process or on another rank."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])
