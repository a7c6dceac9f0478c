"""GLUE tasks as `download_glue_data.py` lays them out (TSV, with or without a header), and the
`glue_subsets` JSON samples (`{"0": {"text_a", "text_b", "label"}, ...}`).

Which columns hold the text(s) and the label, the label names, and the task's metrics are declared
in each `configs/dataset/glue/<task>.yaml`; this module only reads what the config names. Columns
are header names or 0-based positions (negative ones count from the end of the row, for SNLI's
variable number of annotator columns).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from metanlp_cli.data.read import BadRows, clean_text, data_path, read_delimited, read_json
from metanlp_cli.data.types import LabeledTexts, Task, TaskCollection, Text
from metanlp_cli.errors import MetaNLPError

Column = str | int


def _column_positions(path: Path, header: list[str] | None, columns: list[Column]) -> list[int]:
    positions = []
    for column in columns:
        if isinstance(column, int):
            positions.append(column)
        elif header is None:
            raise MetaNLPError(f"{path}: column {column!r} is a name but the file has no header; give a position")
        elif column not in header:
            raise MetaNLPError(f"{path}: line 1: no column {column!r}; the header has {', '.join(header)}")
        else:
            positions.append(header.index(column))
    return positions


class LabelReader:
    """Turns a label field into a class index (a name of `label_names`) or a float target (regression)."""

    def __init__(self, label_names: list[str] | None, regression: bool) -> None:
        if not regression and not label_names:
            raise MetaNLPError("dataset.label_names must list the classes of a classification task")
        self.regression = regression
        self.index = {name: i for i, name in enumerate(label_names or [])}

    def __call__(self, value: str, path: Path, where: str, bad: BadRows) -> int | float | None:
        value = value.strip()
        if self.regression:
            try:
                target = float(value)
            except ValueError:
                target = math.nan
            if math.isfinite(target):
                return target
            bad(path, where, f"label {value!r} is not a number (this is a regression task)")
        elif value in self.index:
            return self.index[value]
        else:
            bad(path, where, f"label {value!r} is not one of {', '.join(self.index)}")
        return None


def read_columns(
    path: Path,
    file_format: str,
    header: bool,
    text_columns: list[Column],
    label_column: Column,
    labels: LabelReader,
    bad: BadRows,
) -> LabeledTexts:
    """Texts (one column, or two as a pair) and labels of a TSV/CSV file."""
    if len(text_columns) not in (1, 2):
        raise MetaNLPError(f"dataset.text_columns={text_columns} must name 1 column or 2 (a sentence pair)")
    rows = read_delimited(path, file_format, bad)
    names = next(rows, (1, None))[1] if header else None
    if header and names is None:
        raise MetaNLPError(f"{path}: the file is empty; expected a header line")
    positions = _column_positions(path, names, [*text_columns, label_column])
    needed = max(p + 1 if p >= 0 else -p for p in positions)
    texts: list[Text] = []
    targets = []
    for number, fields in rows:
        where = f"line {number}"
        if len(fields) < needed:
            bad(path, where, f"{len(fields)} fields, expected at least {needed}")
            continue
        parts = [clean_text(fields[p], path, where, str(c), bad) for p, c in zip(positions, text_columns, strict=False)]
        if None in parts:
            continue
        label = labels(fields[positions[-1]], path, where, bad)
        if label is None:
            continue
        texts.append(parts[0] if len(parts) == 1 else (parts[0], parts[1]))
        targets.append(label)
    return LabeledTexts(texts, targets, [] if labels.regression else list(labels.index), str(path))


def read_text_pair_records(path: Path, labels: LabelReader, bad: BadRows) -> LabeledTexts:
    """`glue_subsets` files: one object `{"0": {"text_a": ..., "text_b": ..., "label": ...}, ...}`."""
    document = read_json(path)
    if not isinstance(document, dict):
        raise MetaNLPError(f"{path}: expected a JSON object of records {{id: {{text_a, text_b, label}}}}")
    texts: list[Text] = []
    targets = []
    for key, record in document.items():
        where = f"record {key!r}"
        if not isinstance(record, dict):
            bad(path, where, "expected an object with text_a, text_b and label")
            continue
        first = clean_text(record.get("text_a"), path, where, "text_a", bad)
        second = clean_text(record.get("text_b"), path, where, "text_b", bad) if first is not None else None
        if second is None:
            continue
        label = labels(str(record.get("label", "")), path, where, bad)
        if label is not None:
            texts.append((first, second))
            targets.append(label)
    return LabeledTexts(texts, targets, [] if labels.regression else list(labels.index), str(path))


def read_split(
    path: Path,
    file_format: str,
    header: bool,
    text_columns: list[Column],
    label_column: Column,
    labels: LabelReader,
    bad: BadRows,
) -> LabeledTexts:
    """A `.json` file is a glue_subsets sample; anything else is read as `file_format` with the given columns."""
    if not path.is_file():
        raise MetaNLPError(f"dataset: file {path} not found")
    if path.suffix == ".json":
        return read_text_pair_records(path, labels, bad)
    return read_columns(path, file_format, header, text_columns, label_column, labels, bad)


def glue_task(
    data_root: str | None = None,
    name: str = "mrpc",
    train_file: str | None = "glue/MRPC/train.tsv",
    dev_file: str | None = "glue/MRPC/dev.tsv",
    test_file: str | None = None,
    file_format: str = "tsv",
    header: bool = True,
    text_columns: list[str | int] = ("#1 String", "#2 String"),
    label_column: str | int = "Quality",
    label_names: list[str] | None = None,
    regression: bool = False,
    metrics: list[str] = ("accuracy",),
    on_bad_rows: str = "error",
    max_train_examples: int | None = None,
    sample_seed: int = 0,
) -> TaskCollection:
    """One GLUE task; files are relative to `paths.data_root`, and a null file is a split with no labels.
    `max_train_examples` keeps a random subset of the train split (drawn with `sample_seed`, in file
    order), a meta-training budget for the high-resource tasks; null keeps them all."""
    if max_train_examples is not None and max_train_examples < 1:
        raise MetaNLPError(f"dataset.max_train_examples={max_train_examples}; allowed: an integer >= 1, or null (all)")
    labels, bad = LabelReader(label_names, regression), BadRows(on_bad_rows)
    splits = {
        split: None
        if file is None
        else read_split(data_path(data_root, file), file_format, header, list(text_columns), label_column, labels, bad)
        for split, file in (("train", train_file), ("dev", dev_file), ("test", test_file))
    }
    bad.log_summary()
    train = splits["train"]
    if train is not None and max_train_examples is not None and len(train) > max_train_examples:
        rows = np.sort(np.random.default_rng(sample_seed).choice(len(train), max_train_examples, replace=False))
        splits["train"] = LabeledTexts(
            [train.texts[i] for i in rows],
            [train.labels[i] for i in rows],
            train.class_names,
            f"{train.source} ({max_train_examples} of {len(train)} examples, sample_seed {sample_seed})",
        )
    task = Task(
        name,
        **splits,
        label_names=[] if regression else list(label_names),
        is_pair=len(text_columns) == 2,
        regression=regression,
        metrics=list(metrics),
    )
    return TaskCollection(f"glue/{name}", [task])
