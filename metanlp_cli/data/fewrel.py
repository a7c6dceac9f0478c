"""FewRel relation classification (Han et al. 2018; Gao et al. 2019) as a class split.

Each instance becomes one text with its entity spans marked: `[E1] head [/E1]` and `[E2] tail [/E2]`
around the first mention of the head and tail entity. The training set of the benchmark
(`train_wiki.json`, 64 relations) is not available offline, so the 16 `val_wiki.json` relations
are split by a fixed rule: sorted by Wikidata property number (P25 < P26 < ... < P2094), the last
`test_relations` are meta-test, the `val_relations` before them meta-val, the rest meta-train.
With `test_file` set (e.g. `val_pubmed.json`, FewRel 2.0's biomedical domain), that file's
relations are the meta-test classes instead, and the wiki relations make meta-train and meta-val;
a test-file relation that is also a wiki relation (8 of `val_nyt.json`'s 25) is left out of
meta-test, since a class cannot be both seen and unseen.
This differs from the official FewRel setting; say so when reporting.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

from metanlp_cli.data.read import BadRows, data_path, read_json, require_folder
from metanlp_cli.data.types import ClassSplit, LabeledTexts
from metanlp_cli.errors import MetaNLPError

log = logging.getLogger(__name__)

HEAD, TAIL = ("[E1]", "[/E1]"), ("[E2]", "[/E2]")


def mark_entities(tokens: list[str], head: list[int], tail: list[int]) -> str:
    """The sentence with markers around the head and tail token positions (each a contiguous mention)."""
    opening, closing = defaultdict(list), defaultdict(list)
    for (start, end), positions in zip((HEAD, TAIL), (head, tail), strict=True):
        opening[min(positions)].append(start)
        closing[max(positions)].insert(0, end)
    words = []
    for position, token in enumerate(tokens):
        words += opening.get(position, [])
        words.append(token)
        words += closing.get(position, [])
    return " ".join(words)


def _mention(entity, length: int) -> list[int] | None:
    """The token positions of an entity's first mention: `[name, id, [[positions], ...]]`."""
    if not (isinstance(entity, list) and len(entity) == 3 and entity[2] and isinstance(entity[2][0], list)):
        return None
    positions = entity[2][0]
    if not positions or not all(isinstance(p, int) and 0 <= p < length for p in positions):
        return None
    return positions


def read_relations(path: Path, bad: BadRows) -> dict[str, list[str]]:
    """{relation: [marked sentence, ...]} of a FewRel file `{relation: [instance, ...]}`."""
    document = read_json(path)
    if not isinstance(document, dict):
        raise MetaNLPError(f"{path}: expected a JSON object {{relation: [instance, ...]}}")
    relations = {}
    for relation, instances in document.items():
        texts = []
        for number, instance in enumerate(instances if isinstance(instances, list) else []):
            where = f"relation {relation} instance {number}"
            tokens = instance.get("tokens") if isinstance(instance, dict) else None
            if not (isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens)):
                bad(path, where, "no token list in field 'tokens'")
                continue
            head, tail = _mention(instance.get("h"), len(tokens)), _mention(instance.get("t"), len(tokens))
            if head is None or tail is None:
                bad(path, where, "field 'h' or 't' is not [name, id, [[token positions]]] within the sentence")
                continue
            texts.append(mark_entities(tokens, head, tail))
        if not texts:
            raise MetaNLPError(f"{path}: relation {relation} has no usable instances")
        relations[relation] = texts
    return relations


def property_number(relation: str) -> tuple[int, str]:
    digits = relation[1:] if relation[:1] == "P" else ""
    return (int(digits), relation) if digits.isdigit() else (10**9, relation)


def fewrel_class_split(
    data_root: str | None = None,
    folder: str = "fewrel",
    data_file: str = "val_wiki.json",
    val_relations: int = 5,
    test_relations: int = 5,
    test_file: str | None = None,
    on_bad_rows: str = "error",
) -> ClassSplit:
    root = require_folder(data_path(data_root, folder))
    bad = BadRows(on_bad_rows)
    relations = read_relations(root / data_file, bad)
    order = sorted(relations, key=property_number)
    held_out = val_relations + (0 if test_file else test_relations)
    if min(val_relations, test_relations) < 0 or held_out >= len(order):
        raise MetaNLPError(
            f"dataset: val_relations + test_relations = {held_out} must leave meta-train relations among "
            f"the {len(order)} of {data_file}"
        )
    train_names, val_names = order[: len(order) - held_out], order[len(order) - held_out :][:val_relations]
    source = str(root / data_file)
    if test_file:
        test_relations_texts = read_relations(root / test_file, bad)
        test_names = sorted(set(test_relations_texts) - set(relations), key=property_number)
        seen = sorted(set(test_relations_texts) & set(relations), key=property_number)
        if seen:
            log.info(
                "%s: %d relations are also in %s, left out of meta-test: %s", test_file, len(seen), data_file, seen
            )
        test_source = str(root / test_file)
    else:
        test_relations_texts, test_names, test_source = relations, order[len(order) - test_relations :], source
    bad.log_summary()

    def split(names: list[str], texts_of: dict[str, list[str]], where: str) -> LabeledTexts:
        texts = [text for name in names for text in texts_of[name]]
        labels = [i for i, name in enumerate(names) for _ in texts_of[name]]
        return LabeledTexts(texts, labels, list(names), where)

    name = f"{folder}/{Path(data_file).stem}" + (f"+{Path(test_file).stem}" if test_file else "")
    return ClassSplit(
        name,
        train=split(train_names, relations, source),
        val=split(val_names, relations, source),
        test=split(test_names, test_relations_texts, test_source),
    )
