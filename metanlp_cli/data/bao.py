"""The format of Bao et al. (ICLR 2020, "Distributional Signatures"): HuffPost and Reuters.

JSON lines `{"raw": str | "text": [tokens], "label": int}` plus `class_splits.json`, the fixed lists
of meta-train / meta-val / meta-test label ids.
"""

from __future__ import annotations

from metanlp_cli.data.read import BadRows, clean_text, data_path, read_json, read_jsonl, require_folder
from metanlp_cli.data.types import ClassSplit, LabeledTexts
from metanlp_cli.errors import MetaNLPError


def bao_class_split(
    data_root: str | None = None,
    folder: str = "huffpost",
    data_file: str = "huffpost.json",
    splits_file: str = "class_splits.json",
    text_field: str = "raw",
    on_bad_rows: str = "error",
) -> ClassSplit:
    """Examples grouped by the class lists of `splits_file`; a token-list text field is joined by spaces."""
    root = require_folder(data_path(data_root, folder))
    class_lists = read_json(root / splits_file)
    if not (isinstance(class_lists, dict) and all(key in class_lists for key in ("train", "val", "test"))):
        raise MetaNLPError(f"{root / splits_file}: expected an object with train, val and test label lists")
    split_of = {str(label): split for split in ("train", "val", "test") for label in class_lists[split]}

    bad = BadRows(on_bad_rows)
    by_class: dict[str, list[str]] = {label: [] for label in split_of}
    path = root / data_file
    for number, record in read_jsonl(path, bad):
        where = f"line {number}"
        value = record.get(text_field)
        if isinstance(value, list) and all(isinstance(token, str) for token in value):
            value = " ".join(value)
        text = clean_text(value, path, where, text_field, bad)
        if text is None:
            continue
        label = str(record.get("label"))
        if label not in by_class:
            bad(path, where, f"label {label} is in none of the class lists of {splits_file}")
            continue
        by_class[label].append(text)
    bad.log_summary()

    empty = [label for label, texts in by_class.items() if not texts]
    if empty:
        raise MetaNLPError(f"{root / splits_file}: label {empty[0]} has no examples in {path}")
    splits = {}
    for split in ("train", "val", "test"):
        names = [str(label) for label in class_lists[split]]
        texts = [text for name in names for text in by_class[name]]
        labels = [i for i, name in enumerate(names) for _ in by_class[name]]
        splits[split] = LabeledTexts(texts, labels, names, str(path))
    return ClassSplit(folder, **splits)
