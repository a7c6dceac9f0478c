"""ARSC, the Amazon review sentiment benchmark of Yu et al. (NAACL 2018).

23 product domains (`workspace.filtered.list`) x 3 rating thresholds (t2, t4, t5) = 69 binary tasks,
files `<domain>.<threshold>.<train|dev|test>` with lines `text<TAB>label` (label 1 or -1). The 12
tasks of the 4 domains in `workspace.target.list` are the target (meta-test) tasks: their `train`
file is the 5-shot support set and `test` the query set. The other 57 are meta-training tasks.
A missing file leaves that split empty and is reported in the collection's notes, not fatal
(the data has no `music.*.train` and `video.*.train`).
"""

from __future__ import annotations

from pathlib import Path

from metanlp_cli.data.read import BadRows, clean_text, data_path, read_lines, require_folder
from metanlp_cli.data.types import LabeledTexts, Task, TaskCollection
from metanlp_cli.errors import MetaNLPError

LABELS = ["-1", "1"]


def read_labeled_lines(path: Path, bad: BadRows) -> LabeledTexts:
    """`text<TAB>label` lines; the label is after the last tab."""
    index = {label: i for i, label in enumerate(LABELS)}
    texts, labels = [], []
    for number, line in read_lines(path, bad):
        where = f"line {number}"
        text, tab, label = line.rpartition("\t")
        if not tab:
            bad(path, where, "no tab; expected text<TAB>label")
            continue
        text = clean_text(text, path, where, "text", bad)
        if text is None:
            continue
        if label.strip() not in index:
            bad(path, where, f"label {label.strip()!r} is not one of {', '.join(LABELS)}")
            continue
        texts.append(text)
        labels.append(index[label.strip()])
    return LabeledTexts(texts, labels, list(LABELS), str(path))


def _read_list(path: Path, bad: BadRows) -> list[str]:
    names = [line.strip() for _, line in read_lines(path, bad)]
    if not names:
        raise MetaNLPError(f"{path}: no domain names in the file")
    return names


def arsc_tasks(
    data_root: str | None = None,
    folder: str = "arsc",
    domains_file: str = "workspace.filtered.list",
    targets_file: str = "workspace.target.list",
    thresholds: list[str] = ("t2", "t4", "t5"),
    on_bad_rows: str = "error",
) -> TaskCollection:
    root = require_folder(data_path(data_root, folder))
    bad = BadRows(on_bad_rows)
    domains, targets = _read_list(root / domains_file, bad), _read_list(root / targets_file, bad)
    unknown = [domain for domain in targets if domain not in domains]
    if unknown:
        raise MetaNLPError(f"{root / targets_file}: target domain {unknown[0]!r} is not in {domains_file}")
    tasks, missing = [], []
    for domain in domains:
        for threshold in thresholds:
            name = f"{domain}.{threshold}"
            splits = {}
            for split in ("train", "dev", "test"):
                path = root / f"{name}.{split}"
                splits[split] = read_labeled_lines(path, bad) if path.is_file() else None
                if splits[split] is None:
                    missing.append(path.name)
            if not any(splits.values()):
                raise MetaNLPError(f"dataset: no file of task {name} in {root} (expected {name}.train/dev/test)")
            tasks.append(Task(name, **splits, label_names=list(LABELS), metrics=["accuracy"]))
    bad.log_summary()
    target_tasks = [task.name for task in tasks if task.name.split(".")[0] in targets]
    notes = [f"arsc: {len(missing)} files not found, those splits are empty: {', '.join(missing)}"] if missing else []
    return TaskCollection(
        "arsc",
        tasks,
        meta_train_tasks=[task.name for task in tasks if task.name not in target_tasks],
        target_tasks=target_tasks,
        notes=notes,
    )
