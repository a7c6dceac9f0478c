"""Texts that occur more than once in a split: the sampler could put one text in both an episode's
support and its query set, which scores memory instead of learning. Found after loading, reported with
a count and an example, and dropped with `dataset.dedupe=true` (the first occurrence stays)."""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections import Counter

from omegaconf import DictConfig, open_dict

from metanlp_cli.data.types import ClassSplit, LabeledTexts, TaskCollection
from metanlp_cli.errors import MetaNLPError

log = logging.getLogger(__name__)

Dataset = ClassSplit | TaskCollection


def dataset_node(node: DictConfig) -> tuple[DictConfig, bool]:
    """A dataset config without its `dedupe` key (which no loader takes), and that key's value."""
    dedupe = node.get("dedupe", False)
    if not isinstance(dedupe, bool):
        raise MetaNLPError(f"dataset.dedupe={dedupe!r} is not allowed; allowed: true, false")
    if "dedupe" not in node:
        return node, dedupe
    node = copy.deepcopy(node)  # keeps its parent, so that `${paths.data_root}` still resolves
    with open_dict(node):
        node.pop("dedupe")
    return node, dedupe


def without_duplicates(texts: LabeledTexts) -> tuple[LabeledTexts, int, str | None]:
    """The split with each text's first occurrence only; how many rows were dropped, and one of them."""
    seen, keep, example = set(), [], None
    for index, text in enumerate(texts.texts):
        if text in seen:
            example = example or text
            continue
        seen.add(text)
        keep.append(index)
    dropped = len(texts.texts) - len(keep)
    if not dropped:
        return texts, 0, None
    kept = dataclasses.replace(texts, texts=[texts.texts[i] for i in keep], labels=[texts.labels[i] for i in keep])
    return kept, dropped, example


def named_splits(dataset: Dataset) -> list[tuple[str, object, str]]:
    """(description, owner, attribute) of every split of the dataset."""
    if isinstance(dataset, ClassSplit):
        return [(name, dataset, name) for name in ("train", "val", "test")]
    return [
        (f"{task.name} {name}", task, name)
        for task in dataset.tasks
        for name in ("train", "dev", "test")
        if getattr(task, name) is not None
    ]


def handle_duplicates(dataset: Dataset, dedupe: bool) -> Dataset:
    """Warn about repeated texts in any split (count and an example); with `dedupe`, drop the repeats."""
    replaced: dict[int, dict[str, LabeledTexts]] = {}
    found = Counter()
    example = None
    for description, owner, attribute in named_splits(dataset):
        kept, dropped, first = without_duplicates(getattr(owner, attribute))
        if dropped:
            found[description] = dropped
            example = example or first
            replaced.setdefault(id(owner), {})[attribute] = kept
    if not found:
        return dataset
    where = ", ".join(f"{count} in {name}" for name, count in found.items())
    shown = example if isinstance(example, str) else " / ".join(example)
    if not dedupe:
        log.warning(
            "%s: %d repeated texts (%s), e.g. %r: one text can be both support and query of an episode; "
            "dataset.dedupe=true drops the repeats",
            dataset.name, found.total(), where, shown[:80],
        )  # fmt: skip
        return dataset
    log.warning("%s: dropped %d repeated texts (%s), e.g. %r", dataset.name, found.total(), where, shown[:80])
    if isinstance(dataset, ClassSplit):
        return dataclasses.replace(dataset, **replaced[id(dataset)])
    tasks = [dataclasses.replace(task, **replaced.get(id(task), {})) for task in dataset.tasks]
    return dataclasses.replace(dataset, tasks=tasks)
