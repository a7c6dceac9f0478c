"""`metanlp data describe`: what a dataset holds, to check it before training.

`summary()` gives a plain dict (classes or tasks, split sizes, examples per class, text-length
percentiles in whitespace-separated words, a pair counting both texts); `to_markdown()` renders it.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
from omegaconf import DictConfig

from metanlp_cli.components import load_dataset
from metanlp_cli.data.types import PHASE_SPLITS, ClassSplit, LabeledTexts, TaskCollection, Text
from metanlp_cli.errors import MetaNLPError

PERCENTILES = (5, 50, 95)


def run(cfg: DictConfig) -> None:
    """Load `cfg.dataset` and print its summary as markdown or JSON (`format=`)."""
    if cfg.format not in ("markdown", "json"):
        raise MetaNLPError(f"format={cfg.format!r} is not allowed; allowed: markdown, json")
    described = summary(load_dataset(cfg))
    print(json.dumps(described, indent=2) if cfg.format == "json" else to_markdown(described), end="")


def word_count(text: Text) -> int:
    return sum(len(sentence.split()) for sentence in ((text,) if isinstance(text, str) else text))


def split_summary(texts: LabeledTexts, regression: bool = False) -> dict:
    lengths = np.array([word_count(text) for text in texts.texts]) if len(texts) else np.zeros(1)
    summary = {
        "examples": len(texts),
        "words": {f"p{p}": int(np.percentile(lengths, p)) for p in PERCENTILES} | {"max": int(lengths.max())},
        "source": texts.source,
    }
    if regression:
        targets = np.array(texts.labels, dtype=float) if len(texts) else np.zeros(1)
        summary["targets"] = {"min": float(targets.min()), "mean": float(targets.mean()), "max": float(targets.max())}
    else:
        summary["classes"] = len(texts.class_names)
        summary["per_class"] = texts.examples_per_class()
    return summary


def summary(dataset: ClassSplit | TaskCollection) -> dict:
    if isinstance(dataset, ClassSplit):
        return {
            "name": dataset.name,
            "shape": "class split",
            "splits": {name: split_summary(dataset.split(name)) for name in ("train", "val", "test")},
        }
    roles = {}
    for task in dataset.tasks:
        meta_train = dataset.meta_train_tasks is None or task.name in dataset.meta_train_tasks
        target = dataset.target_tasks is None or task.name in dataset.target_tasks
        roles[task.name] = (
            "meta-train and target" if meta_train and target else "meta-train" if meta_train else "target"
        )
    episodes = {}
    for phase in PHASE_SPLITS:
        counts = Counter(split for _, split, _ in dataset.episode_parts(phase))
        episodes[phase] = {split: count for split, count in counts.items()}
    return {
        "name": dataset.name,
        "shape": "task collection",
        "tasks": [
            {
                "name": task.name,
                "role": roles[task.name],
                "kind": "regression" if task.regression else f"{len(task.label_names)} classes",
                "pair": task.is_pair,
                "metrics": task.metrics,
                "splits": {
                    name: None if task.split(name) is None else split_summary(task.split(name), task.regression)
                    for name in ("train", "dev", "test")
                },
            }
            for task in dataset.tasks
        ],
        "episodes": episodes,
        "notes": list(dataset.notes),
    }


def _words(split: dict) -> str:
    words = split["words"]
    return " / ".join(str(words[key]) for key in (*(f"p{p}" for p in PERCENTILES), "max"))


def _per_class(split: dict) -> str:
    counts = split["per_class"]
    values = list(counts.values())
    return f"{min(values):,} / {int(np.median(values)):,} / {max(values):,}" if values else "-"


def _class_list(counts: dict[str, int]) -> str:
    return ", ".join(f"{name}: {count:,}" for name, count in counts.items())


def _wrap(items: list[str], first: str, width: int = 100) -> list[str]:
    """Items joined by ", " in lines of at most `width` characters, breaking between items only."""
    lines, line = [], first
    for item in items:
        if line not in (first, "  ") and len(line) + len(item) + 2 > width:
            lines.append(line + ",")
            line = "  "
        line += item if line in (first, "  ") else f", {item}"
    return lines + [line]


def to_markdown(described: dict) -> str:
    if described["shape"] == "class split":
        return _class_split_markdown(described)
    return _task_collection_markdown(described)


def _class_split_markdown(described: dict) -> str:
    splits = described["splits"]
    total = sum(split["examples"] for split in splits.values())
    lines = [
        f"# {described['name']}: class split, {total:,} examples",
        "",
        "| split | classes | examples | per class (min / median / max) | words (p5 / p50 / p95 / max) | file |",
        "|---|---|---|---|---|---|",
    ]
    for name, split in splits.items():
        lines.append(
            f"| {name} | {split['classes']} | {split['examples']:,} | {_per_class(split)} | {_words(split)} "
            f"| {split['source']} |"
        )
    lines += ["", "Examples per class:"]
    for name, split in splits.items():
        lines += _wrap([f"{c}: {n:,}" for c, n in split["per_class"].items()], f"- {name}: ")
    return "\n".join(lines) + "\n"


def _task_collection_markdown(described: dict) -> str:
    tasks = described["tasks"]
    lines = [
        f"# {described['name']}: task collection, {len(tasks)} task{'s' * (len(tasks) > 1)}",
        "",
        "| task | role | kind | input | metrics | train | dev | test |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for task in tasks:
        sizes = [f"{s['examples']:,}" if s else "-" for s in task["splits"].values()]
        lines.append(
            f"| {task['name']} | {task['role']} | {task['kind']} | {'pair' if task['pair'] else 'single'} "
            f"| {', '.join(task['metrics'])} | {' | '.join(sizes)} |"
        )
    lines += [
        "",
        "| task | split | examples per class (or target min / mean / max) | words (p5 / p50 / p95 / max) | file |",
        "|---|---|---|---|---|",
    ]
    for task in tasks:
        for name, split in task["splits"].items():
            if split is None:
                continue
            if "targets" in split:
                targets = split["targets"]
                detail = f"{targets['min']:.2f} / {targets['mean']:.2f} / {targets['max']:.2f}"
            else:
                detail = _class_list(split["per_class"])
            lines.append(f"| {task['name']} | {name} | {detail} | {_words(split)} | {split['source']} |")
    lines += ["", "Episodes (the minimal episodic path; a regression task's episodes have float targets):"]
    for phase, counts in described["episodes"].items():
        used = ", ".join(f"{split} split of {n} task{'s' * (n > 1)}" for split, n in counts.items()) or "none"
        lines.append(f"- {phase}: {used}")
    if described["notes"]:
        lines += ["", "Notes:", *(f"- {note}" for note in described["notes"])]
    return "\n".join(lines) + "\n"
