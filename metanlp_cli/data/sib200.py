"""SIB-200 (Adelani et al., EACL 2024): topic classification (7 topics) of the Flores-200 sentences, parallel across
languages: row `index_id` is the same sentence, with the same topic, in every language. `<lang>/{train,dev,test}.tsv`
(header `index_id  category  text`, unquoted) and `<lang>/labels.txt` (the topics, one a line).

One task per language (`dataset.language=deu_Latn`, or `dataset.languages=[...]` for several), with its
train/dev/test splits. Cross-lingual forms:
- `k`: a task per language and seed (`deu_Latn-k4-seed1`, grouped under `deu_Latn`) whose train split is K examples
  per topic. The rows are chosen by `index_id`, from the seed alone, so every language gets the same sentences
  (the parallel structure: the k-shot tables compare languages on the same examples). Dev and test stay whole.
- `train_language`: every task's train and dev splits are that language's (its K-shot sample, with `k`), the test
  split the task's own: adapt in English, score language X with no example of X (zero-shot transfer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metanlp_cli.data.read import BadRows, clean_text, data_path, read_delimited, require_file, require_folder
from metanlp_cli.data.types import LabeledTexts, Task, TaskCollection
from metanlp_cli.errors import MetaNLPError

SPLITS = ("train", "dev", "test")
COLUMNS = ["index_id", "category", "text"]


def read_sib200_split(path: Path, topics: list[str], bad: BadRows) -> tuple[np.ndarray, LabeledTexts]:
    """The index ids and the labelled texts of one split file."""
    index = {topic: i for i, topic in enumerate(topics)}
    ids, texts, labels = [], [], []
    rows = read_delimited(require_file(path, "split file"), "tsv", bad)
    for number, fields in rows:
        if number == 1:
            if fields != COLUMNS:
                raise MetaNLPError(f"{path}: line 1: header {fields} is not {COLUMNS}")
            continue
        where = f"line {number}"
        if len(fields) != 3:
            bad(path, where, f"{len(fields)} fields, expected 3 (index_id, category, text)")
            continue
        text = clean_text(fields[2], path, where, "text", bad)
        if text is None:
            continue
        if not fields[0].isdigit():
            bad(path, where, f"index_id {fields[0]!r} is not a number")
            continue
        if fields[1] not in index:
            bad(path, where, f"category {fields[1]!r} is not one of {', '.join(topics)}")
            continue
        ids.append(int(fields[0]))
        texts.append(text)
        labels.append(index[fields[1]])
    return np.asarray(ids, dtype=np.int64), LabeledTexts(texts, labels, list(topics), str(path))


def read_language(root: Path, language: str, bad: BadRows) -> dict[str, tuple[np.ndarray, LabeledTexts]]:
    folder = root / language
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise MetaNLPError(f"dataset: language {language!r} is not in {root}; allowed: {', '.join(found)}")
    topics = [line.strip() for line in require_file(folder / "labels.txt", "labels file").read_text().splitlines()]
    topics = [topic for topic in topics if topic]
    splits = {}
    for split in SPLITS:
        if not (folder / f"{split}.tsv").is_file():
            raise MetaNLPError(
                f"dataset: language {language!r} has no {split} split ({folder / f'{split}.tsv'} not found)"
            )
        splits[split] = read_sib200_split(folder / f"{split}.tsv", topics, bad)
    return splits


def k_shot_index_ids(ids: np.ndarray, labels: list[int], k: int, seed: int) -> np.ndarray:
    """K index ids per topic, drawn with `seed` from the ids in sorted order: the same ids whatever the
    language, as long as the languages hold the same (index id, topic) rows."""
    order = np.argsort(ids, kind="stable")
    ids, labels = ids[order], np.asarray(labels)[order]
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        of_label = ids[labels == label]
        if len(of_label) < k:
            raise MetaNLPError(
                f"dataset.k={k} but topic {label} has {len(of_label)} train examples; allowed: k <= that"
            )
        chosen.append(rng.choice(of_label, size=k, replace=False))
    return np.sort(np.concatenate(chosen))


def select(ids: np.ndarray, texts: LabeledTexts, wanted: np.ndarray, language: str) -> LabeledTexts:
    position = {index_id: row for row, index_id in enumerate(ids.tolist())}
    missing = [int(i) for i in wanted if int(i) not in position]
    if missing:
        raise MetaNLPError(f"dataset: language {language!r} has no train row with index_id {missing[0]} (not parallel)")
    rows = [position[int(i)] for i in wanted]
    return LabeledTexts(
        [texts.texts[r] for r in rows], [texts.labels[r] for r in rows], texts.class_names, texts.source
    )


def check_parallel(reference: tuple[np.ndarray, LabeledTexts], other: tuple[np.ndarray, LabeledTexts], where: str):
    """The same (index id, topic) rows, in any order: what makes K-shot samples the same sentences."""

    def rows(split: tuple[np.ndarray, LabeledTexts]) -> list[tuple[int, int]]:
        return sorted(zip(split[0].tolist(), split[1].labels, strict=True))

    if rows(reference) != rows(other):
        raise MetaNLPError(f"dataset: {where} do not hold the same index_id and category rows; they must be parallel")


def sib200_tasks(
    data_root: str | None = None,
    folder: str = "sib200",
    language: str = "eng_Latn",
    languages: list[str] | None = None,
    train_language: str | None = None,
    k: int | None = None,
    seeds: list[int] = (1, 2, 3, 4, 5),
    meta_train_languages: list[str] | None = None,
    target_languages: list[str] | None = None,
    on_bad_rows: str = "error",
) -> TaskCollection:
    """A task per language of `languages` (null: the one `language`); see the module docstring for `k` and
    `train_language`. `meta_train_languages` / `target_languages` name the languages whose tasks episodic
    training draws from / validates and tests on (null: all)."""
    root = require_folder(data_path(data_root, folder))
    chosen = list(languages) if languages is not None else [language]
    if not chosen:
        raise MetaNLPError("dataset.languages is empty; give at least one language, e.g. [eng_Latn]")
    if k is not None and (k < 1 or not seeds):
        raise MetaNLPError(f"dataset.k={k} with seeds={list(seeds)}; allowed: k >= 1 and at least one seed")
    for key, subset in (("meta_train_languages", meta_train_languages), ("target_languages", target_languages)):
        unknown = sorted(set(subset or ()) - set(chosen))
        if unknown:
            raise MetaNLPError(f"dataset.{key}: {unknown[0]!r} is not in dataset.languages ({', '.join(chosen)})")
    bad = BadRows(on_bad_rows)
    needed = dict.fromkeys([*chosen, train_language] if train_language else chosen)
    data = {name: read_language(root, name, bad) for name in needed}
    for name in data:
        for split in SPLITS:
            check_parallel(data[chosen[0]][split], data[name][split], f"the {split} splits of {chosen[0]} and {name}")
    support = train_language
    tasks, names_of = [], {}
    for name in chosen:
        source = data[support or name]
        train_ids, train = source["train"]
        dev, test = source["dev"][1], data[name]["test"][1]
        if k is None:
            names_of[name] = [name]
            tasks.append(Task(name, train, dev, test, label_names=list(train.class_names), group=name))
            continue
        names_of[name] = []
        for seed in seeds:
            sample = select(train_ids, train, k_shot_index_ids(train_ids, train.labels, k, seed), support or name)
            task_name = f"{name}-k{k}-seed{seed}"
            names_of[name].append(task_name)
            tasks.append(Task(task_name, sample, dev, test, label_names=list(train.class_names), group=name))
    bad.log_summary()
    suffix = f"-from-{support}" if support else ""
    return TaskCollection(
        f"sib200/{'+'.join(chosen) if len(chosen) <= 3 else f'{len(chosen)}-languages'}{suffix}",
        tasks,
        [t for name in meta_train_languages for t in names_of[name]] if meta_train_languages else None,
        [t for name in target_languages for t in names_of[name]] if target_languages else None,
    )


def sib200_index_ids(data_root: str | None, language: str, split: str, folder: str = "sib200") -> np.ndarray:
    """The index ids of a split's rows, in the order `sib200_tasks` holds them."""
    root = require_folder(data_path(data_root, folder))
    return read_language(root, language, BadRows("error"))[split][0]
