"""Intent and question classification in JSON lines (BANKING77, CLINC150, TREC28), and the original
supervised files of BANKING77 (CSV) and CLINC150 (one JSON object)."""

from __future__ import annotations

from pathlib import Path

from metanlp_cli.data.read import (
    BadRows,
    clean_text,
    data_path,
    read_delimited,
    read_json,
    read_jsonl,
    read_lines,
    require_folder,
)
from metanlp_cli.data.types import ClassSplit, LabeledTexts, Task, TaskCollection
from metanlp_cli.errors import MetaNLPError

PROTAUGMENT_SPLITS = (("train", "labels.train.txt"), ("val", "labels.valid.txt"), ("test", "labels.test.txt"))


def read_jsonl_examples(
    path: Path, text_field: str, label_field: str, bad: BadRows, class_names: list[str] | None = None
) -> LabeledTexts:
    """Records `{text_field: str, label_field: str}`; labels outside `class_names` (when given) are bad rows.
    Without `class_names`, the classes are the labels found, sorted."""
    texts, labels = [], []
    allowed = set(class_names) if class_names is not None else None
    for number, record in read_jsonl(path, bad):
        where = f"line {number}"
        text = clean_text(record.get(text_field), path, where, text_field, bad)
        if text is None:
            continue
        label = record.get(label_field)
        if label is None or isinstance(label, (dict, list)):
            bad(path, where, f"no label in field {label_field!r}")
            continue
        label = str(label)
        if allowed is not None and label not in allowed:
            bad(path, where, f"label {label!r} is not one of the split's {len(allowed)} classes")
            continue
        texts.append(text)
        labels.append(label)
    names = class_names if class_names is not None else sorted(set(labels))
    index = {name: i for i, name in enumerate(names)}
    return LabeledTexts(texts, [index[label] for label in labels], list(names), str(path))


def read_class_list(path: Path, bad: BadRows) -> list[str]:
    """One class name per line (ProtAugment's labels.*.txt)."""
    names = [line.strip() for _, line in read_lines(path, bad)]
    if not names:
        raise MetaNLPError(f"{path}: no class names in the file")
    return names


def check_every_class_has_examples(texts: LabeledTexts, classes_file: Path) -> None:
    counts = texts.examples_per_class()
    empty = [name for name, count in counts.items() if count == 0]
    if empty:
        raise MetaNLPError(
            f"{classes_file}: class {empty[0]!r} (of {len(empty)} listed) has no examples in {texts.source}"
        )


def protaugment_class_split(
    data_root: str | None = None,
    dataset: str = "banking77",
    fold: int = 1,
    train_file: str = "train.jsonl",
    on_bad_rows: str = "error",
) -> ClassSplit:
    """ProtAugment's class splits `<dataset>/few_shot/<fold>/`: labels.{train,valid,test}.txt list each
    split's classes; `train_file` is `train.jsonl` (all examples) or `train.10samples.jsonl`."""
    folder = data_path(data_root, dataset, "few_shot", f"{fold:02d}")
    if not folder.is_dir():
        folds = sorted(p.name for p in folder.parent.glob("*") if p.is_dir()) if folder.parent.is_dir() else []
        allowed = f"; allowed: {', '.join(str(int(f)) for f in folds if f.isdigit())}" if folds else ""
        raise MetaNLPError(f"dataset.fold={fold}: folder {folder} not found{allowed}")
    bad = BadRows(on_bad_rows)
    files = {"train": train_file, "val": "valid.jsonl", "test": "test.jsonl"}
    splits = {}
    for split, classes_file in PROTAUGMENT_SPLITS:
        class_names = read_class_list(folder / classes_file, bad)
        splits[split] = read_jsonl_examples(folder / files[split], "sentence", "label", bad, class_names)
        check_every_class_has_examples(splits[split], folder / classes_file)
    bad.log_summary()
    return ClassSplit(f"{dataset}/few_shot/{fold:02d}", **splits)


def jsonl_class_split(
    data_root: str | None = None,
    folder: str = "trec28",
    train_file: str = "train.jsonl",
    val_file: str = "valid.jsonl",
    test_file: str = "test.jsonl",
    text_field: str = "sentence",
    label_field: str = "label",
    on_bad_rows: str = "error",
) -> ClassSplit:
    """Three JSON-lines files whose label sets are disjoint (TREC28, CLINC150's Reality-Check split);
    each split's classes are the labels found in its file."""
    root = require_folder(data_path(data_root, folder))
    bad = BadRows(on_bad_rows)
    splits = {
        split: read_jsonl_examples(root / name, text_field, label_field, bad)
        for split, name in (("train", train_file), ("val", val_file), ("test", test_file))
    }
    bad.log_summary()
    return ClassSplit(folder, **splits)


def banking77_original(data_root: str | None = None, on_bad_rows: str = "error") -> TaskCollection:
    """The official supervised BANKING77 split: `original/{train,test}.csv` (header `text,category`) and
    the 77 categories of `categories.json`. One task, no dev split."""
    folder = require_folder(data_path(data_root, "banking77", "original"))
    categories = read_json(folder / "categories.json")
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        raise MetaNLPError(f"{folder / 'categories.json'}: expected a JSON list of category names")
    bad = BadRows(on_bad_rows)
    train, test = (_read_text_category_csv(folder / name, categories, bad) for name in ("train.csv", "test.csv"))
    bad.log_summary()
    task = Task("banking77", train, None, test, list(categories), metrics=["accuracy"])
    return TaskCollection("banking77/original", [task])


def _read_text_category_csv(path: Path, categories: list[str], bad: BadRows) -> LabeledTexts:
    index = {name: i for i, name in enumerate(categories)}
    rows = read_delimited(path, "csv", bad)
    _, header = next(rows, (0, []))
    if header[:2] != ["text", "category"]:
        raise MetaNLPError(f"{path}: line 1: expected the header text,category, found {','.join(header)!r}")
    texts, labels = [], []
    for number, fields in rows:
        if len(fields) != 2:
            bad(path, f"line {number}", f"{len(fields)} fields, expected 2 (text,category)")
            continue
        text = clean_text(fields[0], path, f"line {number}", "text", bad)
        if text is None:
            continue
        if fields[1] not in index:
            bad(path, f"line {number}", f"category {fields[1]!r} is not in categories.json")
            continue
        texts.append(text)
        labels.append(index[fields[1]])
    return LabeledTexts(texts, labels, list(categories), str(path))


def clinc150_original(
    data_root: str | None = None, variant: str = "full", include_oos: bool = False, on_bad_rows: str = "error"
) -> TaskCollection:
    """CLINC150's `original/data_<variant>.json` (full, small, imbalanced, oos_plus): train / val / test
    lists of [text, intent]. With `include_oos`, the out-of-scope queries join as a 151st label `oos`."""
    variants = ("full", "small", "imbalanced", "oos_plus")
    if variant not in variants:
        raise MetaNLPError(f"dataset.variant={variant!r} is not allowed; allowed: {', '.join(variants)}")
    path = data_path(data_root, "clinc150", "original", f"data_{variant}.json")
    document = read_json(path)
    missing = [key for key in ("train", "val", "test", "oos_train", "oos_val", "oos_test") if key not in document]
    if missing:
        raise MetaNLPError(f"{path}: no key {missing[0]!r}; expected train, val, test and oos_* lists")
    bad = BadRows(on_bad_rows)
    intents = sorted({pair[1] for pair in document["train"] if isinstance(pair, list) and len(pair) == 2})
    label_names = intents + (["oos"] if include_oos else [])
    splits = {}
    for split in ("train", "val", "test"):
        pairs = document[split] + (document[f"oos_{split}"] if include_oos else [])
        splits[split] = _read_pairs(path, split, pairs, label_names, bad)
    bad.log_summary()
    task = Task("clinc150", splits["train"], splits["val"], splits["test"], label_names, metrics=["accuracy"])
    return TaskCollection(f"clinc150/original/{variant}", [task])


def _read_pairs(path: Path, split: str, pairs: list, label_names: list[str], bad: BadRows) -> LabeledTexts:
    index = {name: i for i, name in enumerate(label_names)}
    texts, labels = [], []
    for number, pair in enumerate(pairs):
        where = f"{split}[{number}]"
        if not (isinstance(pair, list) and len(pair) == 2):
            bad(path, where, "expected a [text, intent] pair")
            continue
        text = clean_text(pair[0], path, where, "text", bad)
        if text is None:
            continue
        if pair[1] not in index:
            bad(path, where, f"intent {pair[1]!r} does not occur in the train list")
            continue
        texts.append(text)
        labels.append(index[pair[1]])
    return LabeledTexts(texts, labels, list(label_names), f"{path} [{split}]")
