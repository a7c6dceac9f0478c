"""The LEOPARD few-shot tasks (Bansal, Jha & McCallum, COLING 2020): for each task, 10 sampled
training sets per k in {4, 8, 16} (`<prefix>_train_<i>_<k>.json`, k examples of every label) and
one evaluation file (`<prefix>_eval.json`). Each file is a JSON array of
`{"sentence1", ["sentence2",] "label", ...}`.

One task per training set (`airline-k16-0`, ...), all sharing the evaluation file as their test
split, so a protocol can report the mean and standard deviation over the training sets as the
paper does. LEOPARD has no validation split. An empty training file (the source's
`disaster_train_0_16.json`) is left out and reported in the collection's notes.
"""

from __future__ import annotations

from pathlib import Path

from metanlp_cli.data.read import BadRows, clean_text, data_path, read_json, require_folder
from metanlp_cli.data.types import LabeledTexts, Task, TaskCollection, Text
from metanlp_cli.errors import MetaNLPError


def read_records(path: Path, text_fields: list[str], label_names: list[str], bad: BadRows) -> LabeledTexts:
    document = read_json(path)
    if not isinstance(document, list):
        raise MetaNLPError(f"{path}: expected a JSON array of records")
    index = {name: i for i, name in enumerate(label_names)}
    texts: list[Text] = []
    labels = []
    for number, record in enumerate(document):
        where = f"record {number}"
        if not isinstance(record, dict):
            bad(path, where, "expected an object")
            continue
        parts = [clean_text(record.get(field), path, where, field, bad) for field in text_fields]
        if None in parts:
            continue
        label = record.get("label")
        if label not in index:
            bad(path, where, f"label {label!r} is not one of {', '.join(label_names)}")
            continue
        texts.append(parts[0] if len(parts) == 1 else (parts[0], parts[1]))
        labels.append(index[label])
    return LabeledTexts(texts, labels, list(label_names), str(path))


def leopard_tasks(
    data_root: str | None = None,
    task: str = "airline",
    file_prefix: str = "airline",
    k: int = 16,
    train_sets: list[int] = tuple(range(10)),
    text_fields: list[str] = ("sentence1",),
    label_names: list[str] = ("negative", "neutral", "positive"),
    on_bad_rows: str = "error",
) -> TaskCollection:
    root = require_folder(data_path(data_root, "leopard", task))
    if len(text_fields) not in (1, 2):
        raise MetaNLPError(f"dataset.text_fields={list(text_fields)} must name 1 field or 2 (a pair)")
    bad = BadRows(on_bad_rows)
    test = read_records(root / f"{file_prefix}_eval.json", list(text_fields), list(label_names), bad)
    tasks, notes = [], []
    for train_set in train_sets:
        path = root / f"{file_prefix}_train_{train_set}_{k}.json"
        if not path.is_file():
            found = sorted({int(p.stem.rsplit("_", 1)[1]) for p in root.glob(f"{file_prefix}_train_*_*.json")})
            raise MetaNLPError(f"dataset: file {path} not found; allowed: k in {found}, train_sets in 0..9")
        train = read_records(path, list(text_fields), list(label_names), bad)
        if not len(train):
            notes.append(f"leopard/{task}: {path.name} has no examples (a known problem of the source); left out")
            continue
        tasks.append(
            Task(
                f"{task}-k{k}-{train_set}",
                train,
                None,
                test,
                label_names=list(label_names),
                is_pair=len(text_fields) == 2,
                metrics=["accuracy"],
                group=task,
            )
        )
    bad.log_summary()
    if not tasks:
        raise MetaNLPError(f"dataset: none of the training sets {list(train_sets)} of leopard/{task} has examples")
    return TaskCollection(f"leopard/{task}", tasks, notes=notes)
