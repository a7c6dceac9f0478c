"""Users' own data: CSV / TSV / JSON lines / JSON / parquet files read through the `datasets` library,
with a column mapping (`text_column`, optional `text_pair_column`, `label_column`).

Two shapes, chosen by `split`:
- `classes`: a class split for N-way K-shot episodes on unseen classes. Either one file whose classes
  are divided by `val_classes` / `test_classes` (the rest are meta-train) or, without lists, by
  `val_fraction` / `test_fraction` of the classes shuffled by `split_seed`; or three files with
  disjoint label sets.
- `examples`: one task with the same labels in its train / dev (`val_file`) / test files
  (float labels with `regression: true`).

`hub.py` reads Hugging Face hub datasets into the same shapes through `tables_to_dataset`.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from metanlp_cli.data.read import BadRows, clean_text
from metanlp_cli.data.types import ClassSplit, LabeledTexts, Task, TaskCollection, Text
from metanlp_cli.errors import MetaNLPError

log = logging.getLogger(__name__)

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
SPLIT_KINDS = ("classes", "examples")


def check_utf8(path: Path) -> None:
    """`datasets` reports a non-UTF-8 byte without its place; name the line here first."""
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise MetaNLPError(
            f"{path}: line {line}: not valid UTF-8 (byte 0x{raw[error.start]:02x}); save the file as UTF-8"
        ) from None


def check_json_lines(path: Path) -> None:
    """`datasets` reports a broken JSON line three times, with a 0-based row; name its line here once.
    A file that is one JSON document (an array or object) is left to `datasets`."""
    text = path.read_text(encoding="utf-8-sig")
    try:
        json.loads(text)
        return
    except json.JSONDecodeError:
        pass
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except json.JSONDecodeError as error:
            raise MetaNLPError(
                f"{path}: line {number}: not valid JSON ({error.msg} at column {error.colno}); "
                "each line of a JSON-lines file must be one JSON object"
            ) from None


def load_table(path_text: str, file_format: str | None, key: str):
    """One file as a `datasets.Dataset`; the format comes from the extension unless given."""
    import datasets

    path = Path(path_text).expanduser()
    if not path.is_file():
        raise MetaNLPError(f"dataset.{key}={path_text!r}: file not found")
    kind = file_format or FORMATS.get(path.suffix.lower())
    if kind not in set(FORMATS.values()):
        raise MetaNLPError(
            f"dataset.file_format={kind!r} for {path} is not allowed; allowed: csv, tsv, json, parquet "
            "(json covers JSON lines)"
        )
    if kind != "parquet":
        check_utf8(path)
    if kind == "json":
        check_json_lines(path)
    options = {
        "csv": {"encoding": "utf-8-sig"},
        "tsv": {"encoding": "utf-8-sig", "sep": "\t", "quoting": 3},  # QUOTE_NONE: quotes are text
        "json": {},
        "parquet": {},
    }[kind]
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(
            "csv" if kind == "tsv" else kind, data_files=str(path.resolve()), split="train", **options
        )
    except Exception as error:
        cause = error.__cause__ or error.__context__ or error
        reason = " ".join(str(cause).split())[:300]
        raise MetaNLPError(f"{path}: cannot be read as {kind} ({type(cause).__name__}: {reason})") from None


def label_names_of(table, label_column: str) -> list[str] | None:
    """The names of a `ClassLabel` column (hub datasets store labels as ids), else None."""
    feature = table.features.get(label_column)
    return list(feature.names) if hasattr(feature, "names") else None


def read_table(
    table, source: str, text_column: str, text_pair_column: str | None, label_column: str, bad: BadRows
) -> tuple[list[Text], list[str]]:
    """Texts and raw label strings of a table; empty texts and missing labels are bad rows."""
    for column in (text_column, text_pair_column, label_column):
        if column is not None and column not in table.column_names:
            raise MetaNLPError(
                f"{source}: no column {column!r}; the columns are {', '.join(table.column_names)} "
                "(set dataset.text_column / text_pair_column / label_column)"
            )
    names = label_names_of(table, label_column)
    firsts = table[text_column]
    seconds = table[text_pair_column] if text_pair_column else [None] * len(firsts)
    texts: list[Text] = []
    labels: list[str] = []
    for row, (first, second, label) in enumerate(zip(firsts, seconds, table[label_column], strict=True), 1):
        where = f"row {row}"
        first = clean_text(first, Path(source), where, text_column, bad)
        if first is None:
            continue
        if text_pair_column:
            second = clean_text(second, Path(source), where, text_pair_column, bad)
            if second is None:
                continue
        if label is None or (isinstance(label, float) and math.isnan(label)) or str(label).strip() == "":
            bad(Path(source), where, f"no label in column {label_column!r}")
            continue
        texts.append((first, second) if text_pair_column else first)
        labels.append(names[label] if names is not None and isinstance(label, int) else str(label).strip())
    return texts, labels


def _labeled(texts: list[Text], labels: list[str], class_names: list[str], source: str) -> LabeledTexts:
    index = {name: i for i, name in enumerate(class_names)}
    return LabeledTexts(texts, [index[label] for label in labels], class_names, source)


def _divide_classes(
    classes: list[str], val_classes, test_classes, val_fraction: float, test_fraction: float, seed: int, source: str
) -> tuple[list[str], list[str], list[str]]:
    if val_classes is not None or test_classes is not None:
        val, test = [str(c) for c in val_classes or []], [str(c) for c in test_classes or []]
        if not val or not test:
            raise MetaNLPError("give both dataset.val_classes and dataset.test_classes, or neither (fractions)")
        for key, chosen in (("val_classes", val), ("test_classes", test)):
            unknown = [c for c in chosen if c not in classes]
            if unknown:
                raise MetaNLPError(f"dataset.{key}: class {unknown[0]!r} is not a label of {source}")
        return [c for c in classes if c not in val and c not in test], val, test
    if not (0 < val_fraction < 1 and 0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise MetaNLPError("dataset.val_fraction and test_fraction must be in (0, 1) with a sum below 1")
    order = [classes[i] for i in np.random.default_rng(seed).permutation(len(classes))]
    n_test, n_val = round(test_fraction * len(order)), round(val_fraction * len(order))
    if min(n_test, n_val) < 1 or n_test + n_val >= len(order):
        raise MetaNLPError(
            f"{source} has {len(order)} classes: too few to hold out val_fraction={val_fraction} and "
            f"test_fraction={test_fraction} of them and keep meta-train classes"
        )
    return sorted(order[n_test + n_val :]), sorted(order[n_test : n_test + n_val]), sorted(order[:n_test])


def tables_to_dataset(
    name: str,
    tables: dict[str, tuple[object, str]],
    *,
    split: str,
    text_column: str,
    text_pair_column: str | None,
    label_column: str,
    val_classes: list[str] | None,
    test_classes: list[str] | None,
    val_fraction: float,
    test_fraction: float,
    split_seed: int,
    regression: bool,
    metrics: list[str],
    on_bad_rows: str,
) -> ClassSplit | TaskCollection:
    """`tables` maps train / val / test to (datasets.Dataset, where it came from); val and test may be absent."""
    if split not in SPLIT_KINDS:
        raise MetaNLPError(f"dataset.split={split!r} is not allowed; allowed: {', '.join(SPLIT_KINDS)}")
    if regression and split == "classes":
        raise MetaNLPError("dataset.regression=true needs dataset.split=examples (a class split needs class labels)")
    bad = BadRows(on_bad_rows)
    rows = {
        part: (*read_table(table, source, text_column, text_pair_column, label_column, bad), source)
        for part, (table, source) in tables.items()
    }
    bad.log_summary()
    if split == "classes":
        return _class_split(name, rows, val_classes, test_classes, val_fraction, test_fraction, split_seed)
    return _task(name, rows, text_pair_column is not None, regression, metrics, bad)


def _class_split(name, rows, val_classes, test_classes, val_fraction, test_fraction, seed) -> ClassSplit:
    texts, labels, source = rows["train"]
    if set(rows) == {"train"}:
        train, val, test = _divide_classes(
            sorted(set(labels)), val_classes, test_classes, val_fraction, test_fraction, seed, source
        )
        splits = {}
        for part, names in (("train", train), ("val", val), ("test", test)):
            chosen = set(names)
            kept = [(text, label) for text, label in zip(texts, labels, strict=True) if label in chosen]
            splits[part] = _labeled([t for t, _ in kept], [label for _, label in kept], names, source)
        return ClassSplit(name, **splits)
    if set(rows) != {"train", "val", "test"}:
        raise MetaNLPError("dataset: a class split from files needs train_file alone, or train, val and test files")
    splits = {part: _labeled(t, lab, sorted(set(lab)), src) for part, (t, lab, src) in rows.items()}
    shared = sorted(set(splits["train"].class_names) & set(splits["val"].class_names + splits["test"].class_names))
    if shared:
        raise MetaNLPError(
            f"dataset: labels {shared[:3]} of {rows['train'][2]} are also in the val or test file, but a class "
            "split needs disjoint classes; set dataset.split=examples for one task with shared labels"
        )
    return ClassSplit(name, **splits)


def _task(name, rows, is_pair: bool, regression: bool, metrics: list[str], bad: BadRows) -> TaskCollection:
    label_names = [] if regression else sorted(set(rows["train"][1]))
    splits = {}
    for part, (texts, labels, source) in rows.items():
        if regression:
            kept_texts, targets = [], []
            for row, (text, label) in enumerate(zip(texts, labels, strict=True), 1):
                target = _float(label)
                if target is None:
                    bad(Path(source), f"row {row}", f"label {label!r} is not a number (this is a regression task)")
                    continue
                kept_texts.append(text)
                targets.append(target)
            splits[part] = LabeledTexts(kept_texts, targets, [], source)
            continue
        unknown = sorted(set(labels) - set(label_names))
        if unknown:
            raise MetaNLPError(f"{source}: label {unknown[0]!r} does not occur in the train file")
        splits[part] = _labeled(texts, labels, label_names, source)
    task = Task(
        name,
        splits["train"],
        splits.get("val"),
        splits.get("test"),
        label_names,
        is_pair=is_pair,
        regression=regression,
        metrics=list(metrics),
    )
    return TaskCollection(name, [task])


def _float(value: str) -> float | None:
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def user_files(
    train_file: str | None = None,
    val_file: str | None = None,
    test_file: str | None = None,
    file_format: str | None = None,
    split: str = "classes",
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    val_classes: list[str] | None = None,
    test_classes: list[str] | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    split_seed: int = 0,
    regression: bool = False,
    metrics: list[str] = ("accuracy",),
    name: str = "files",
    on_bad_rows: str = "error",
) -> ClassSplit | TaskCollection:
    if train_file is None:
        raise MetaNLPError(
            "dataset.train_file is not set; give dataset.train_file=PATH (csv, tsv, jsonl, json, parquet)"
        )
    files = {"train": train_file, "val": val_file, "test": test_file}
    tables = {
        part: (load_table(path, file_format, f"{part}_file"), str(Path(path).expanduser()))
        for part, path in files.items()
        if path is not None
    }
    return tables_to_dataset(
        name,
        tables,
        split=split,
        text_column=text_column,
        text_pair_column=text_pair_column,
        label_column=label_column,
        val_classes=val_classes,
        test_classes=test_classes,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        split_seed=split_seed,
        regression=regression,
        metrics=list(metrics),
        on_bad_rows=on_bad_rows,
    )
