"""Every on-disk format, read from small fixtures written here: the awkward cases included (no header,
a UTF-8 BOM, quotes inside TSV fields, regression labels, sentence pairs, entity spans)."""

from __future__ import annotations

import json
import logging

import pytest

from metanlp_cli.data.arsc import arsc_tasks
from metanlp_cli.data.bao import bao_class_split
from metanlp_cli.data.fewrel import fewrel_class_split, mark_entities
from metanlp_cli.data.glue import glue_task
from metanlp_cli.data.intent import banking77_original, clinc150_original, jsonl_class_split, protaugment_class_split
from metanlp_cli.data.leopard import leopard_tasks
from metanlp_cli.data.lmbff import lmbff_tasks
from metanlp_cli.data.types import ClassSplit, TaskCollection
from metanlp_cli.errors import MetaNLPError


def write(path, text: str | bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def jsonl(records) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def write_protaugment(root, dataset="bank", fold="01"):
    folder = root / dataset / "few_shot" / fold
    classes = {"train": ["a", "b"], "valid": ["c", "d"], "test": ["e", "f", "g"]}
    for split, names in classes.items():
        write(folder / f"labels.{split}.txt", "\n".join(names) + "\n")
        write(
            folder / f"{split}.jsonl",
            jsonl({"sentence": f"{name} text {i}", "label": name} for name in names for i in range(3)),
        )
    write(folder / "train.10samples.jsonl", jsonl({"sentence": f"{n} one", "label": n} for n in ("a", "b")))
    return folder


def test_protaugment_class_split_keeps_the_label_file_classes_and_order(tmp_path):
    write_protaugment(tmp_path)
    dataset = protaugment_class_split(str(tmp_path), "bank", fold=1)
    assert isinstance(dataset, ClassSplit) and dataset.name == "bank/few_shot/01"
    assert dataset.train.class_names == ["a", "b"] and dataset.test.class_names == ["e", "f", "g"]
    assert len(dataset.train) == 6 and dataset.train.texts[0] == "a text 0" and dataset.train.labels[:3] == [0, 0, 0]
    assert dataset.test.examples_per_class() == {"e": 3, "f": 3, "g": 3}
    ten = protaugment_class_split(str(tmp_path), "bank", fold=1, train_file="train.10samples.jsonl")
    assert len(ten.train) == 2 and len(ten.val) == 6


def test_jsonl_class_split_takes_each_files_labels_sorted(tmp_path):
    for split, names in (("train", ["y", "x"]), ("valid", ["z"]), ("test", ["w"])):
        write(tmp_path / "q" / f"{split}.jsonl", jsonl({"global_ix": 1, "sentence": "s", "label": n} for n in names))
    dataset = jsonl_class_split(str(tmp_path), "q")
    assert dataset.train.class_names == ["x", "y"] and dataset.train.labels == [1, 0]


def test_banking77_original_csv_with_quoted_commas(tmp_path):
    folder = tmp_path / "banking77" / "original"
    write(folder / "categories.json", json.dumps(["card_arrival", "top_up"]))
    write(folder / "train.csv", 'text,category\n"Hi, where is my card?",card_arrival\nTop me up,top_up\n')
    write(folder / "test.csv", 'text,category\n"He said ""now""",top_up\n')
    collection = banking77_original(str(tmp_path))
    task = collection.tasks[0]
    assert task.train.texts == ["Hi, where is my card?", "Top me up"] and task.train.labels == [0, 1]
    assert task.test.texts == ['He said "now"'] and task.dev is None


def test_clinc150_original_pairs_with_optional_out_of_scope(tmp_path):
    document = {
        "train": [["book a flight", "book_flight"], ["my balance", "balance"]],
        "val": [["fly me", "book_flight"]],
        "test": [["balance please", "balance"]],
        "oos_train": [["sing", "oos"]],
        "oos_val": [],
        "oos_test": [["dance", "oos"]],
    }
    write(tmp_path / "clinc150" / "original" / "data_full.json", json.dumps(document))
    task = clinc150_original(str(tmp_path)).tasks[0]
    assert task.label_names == ["balance", "book_flight"] and task.train.labels == [1, 0] and len(task.test) == 1
    with_oos = clinc150_original(str(tmp_path), include_oos=True).tasks[0]
    assert with_oos.label_names[-1] == "oos" and with_oos.test.texts == ["balance please", "dance"]
    assert with_oos.test.labels == [0, 2]


def test_bao_format_joins_token_lists_and_follows_the_class_lists(tmp_path):
    write(tmp_path / "r" / "class_splits.json", json.dumps({"train": [2, 0], "val": [1], "test": [3]}))
    records = [{"text": ["oil", "prices", "rise"], "label": label, "raw": "x"} for label in (0, 1, 2, 3, 2)]
    write(tmp_path / "r" / "r.json", jsonl(records))
    dataset = bao_class_split(str(tmp_path), "r", "r.json", text_field="text")
    assert dataset.train.class_names == ["2", "0"] and dataset.train.examples_per_class() == {"2": 2, "0": 1}
    assert dataset.val.texts == ["oil prices rise"]


def test_entity_markers_surround_the_head_and_tail_mentions():
    tokens = ["Cape", "Girardeau", "Bridge", "crosses", "the", "Mississippi", "."]
    marked = mark_entities(tokens, head=[0, 1, 2], tail=[5])
    assert marked == "[E1] Cape Girardeau Bridge [/E1] crosses the [E2] Mississippi [/E2] ."
    assert mark_entities(["A", "B"], head=[0], tail=[0]) == "[E1] [E2] A [/E2] [/E1] B"


def write_fewrel(path, relations, per_relation=3):
    instance = {"tokens": ["x", "likes", "y", "."], "h": ["x", "Q1", [[0]]], "t": ["y", "Q2", [[2]]]}
    write(path, json.dumps({relation: [instance] * per_relation for relation in relations}))


def test_fewrel_splits_relations_by_property_number(tmp_path):
    write_fewrel(tmp_path / "fewrel" / "val_wiki.json", ["P40", "P2094", "P25", "P177", "P26"])
    dataset = fewrel_class_split(str(tmp_path), val_relations=1, test_relations=2)
    # numeric order P25 < P26 < P40 < P177 < P2094: the last 2 test, the one before them val
    assert dataset.train.class_names == ["P25", "P26"]
    assert dataset.val.class_names == ["P40"] and dataset.test.class_names == ["P177", "P2094"]
    assert dataset.train.texts[0] == "[E1] x [/E1] likes [E2] y [/E2] ."
    write_fewrel(tmp_path / "fewrel" / "val_nyt.json", ["treats", "P26", "causes"])
    cross = fewrel_class_split(str(tmp_path), val_relations=1, test_relations=0, test_file="val_nyt.json")
    assert cross.train.class_names == ["P25", "P26", "P40", "P177"] and cross.val.class_names == ["P2094"]
    assert cross.test.class_names == ["causes", "treats"]  # P26 is a wiki relation: not an unseen class


def test_glue_without_header_by_position(tmp_path):
    write(tmp_path / "CoLA" / "train.tsv", "gj04\t1\t\tThe sailors rode.\ngj04\t0\t*\tRode the.\n")
    task = glue_task(
        str(tmp_path),
        "cola",
        "CoLA/train.tsv",
        None,
        None,
        header=False,
        text_columns=[3],
        label_column=1,
        label_names=["0", "1"],
        metrics=["mcc"],
    ).tasks[0]
    assert task.train.texts == ["The sailors rode.", "Rode the."] and task.train.labels == [1, 0]
    assert not task.is_pair and task.metrics == ["mcc"] and task.dev is None


def test_glue_pairs_with_a_bom_header_and_quotes_inside_tsv_fields(tmp_path):
    text = '\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t7\t8\tHe called " the witness " .\tThe "witness" .\n'
    write(tmp_path / "MRPC" / "train.tsv", text)
    task = glue_task(
        str(tmp_path), "mrpc", "MRPC/train.tsv", None, None, label_names=["0", "1"], metrics=["f1", "accuracy"]
    ).tasks[0]
    assert task.is_pair and task.train.texts == [('He called " the witness " .', 'The "witness" .')]
    assert task.train.labels == [1]


def test_glue_regression_targets(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    rows = (
        "0\tm\tf\t2012\t1\tn\tn\tA plane takes off.\tAn air plane takes off.\t5.000\n"
        "1\tm\tf\t2012\t4\tn\tn\tA.\tB.\t0.8\n"
    )
    write(tmp_path / "STS-B" / "train.tsv", header + rows)
    task = glue_task(
        str(tmp_path),
        "stsb",
        "STS-B/train.tsv",
        None,
        None,
        text_columns=["sentence1", "sentence2"],
        label_column="score",
        regression=True,
        metrics=["pearson", "spearman"],
    ).tasks[0]
    assert task.regression and task.label_names == [] and task.train.labels == [5.0, 0.8]


def test_glue_label_from_the_end_of_ragged_rows_and_subset_json(tmp_path):
    header = "index\tsentence1\tsentence2\tlabel1\tgold_label\n"
    rows = (
        "1\tA dog runs.\tAn animal moves.\tentailment\tentailment\n"
        "2\tA cat.\tNo cat.\tneutral\tcontradiction\tx\tcontradiction\n"  # more annotator columns
    )
    write(tmp_path / "SNLI" / "train.tsv", header + rows)
    subset = {"0": {"text_a": "A man.", "text_b": "A person.", "label": "entailment"}}
    write(tmp_path / "sub" / "dev.json", json.dumps(subset))
    labels = ["entailment", "neutral", "contradiction"]
    task = glue_task(
        str(tmp_path),
        "snli",
        "SNLI/train.tsv",
        "sub/dev.json",
        None,
        text_columns=["sentence1", "sentence2"],
        label_column=-1,
        label_names=labels,
    ).tasks[0]
    assert task.train.labels == [0, 2] and task.dev.texts == [("A man.", "A person.")] and task.dev.labels == [0]


def test_lmbff_one_task_per_seed_sharing_the_test_set(tmp_path):
    folder = tmp_path / "k" / "mr"
    for seed in (13, 42):
        write(folder / f"16-{seed}" / "train.csv", f'0,"bad, really bad {seed}"\n1,good\n')
        write(folder / f"16-{seed}" / "dev.csv", "0,meh\n1,great\n")
    write(folder / "test.csv", "1,fine\n0,awful\n")
    collection = lmbff_tasks(
        str(tmp_path),
        "mr",
        "k/mr",
        seeds=[13, 42],
        train_file="train.csv",
        dev_file="dev.csv",
        test_file="test.csv",
        file_format="csv",
        header=False,
        text_columns=[1],
        label_column=0,
        label_names=["0", "1"],
    )
    assert [task.name for task in collection.tasks] == ["mr-seed13", "mr-seed42"]
    assert collection.tasks[1].train.texts == ["bad, really bad 42", "good"]
    assert collection.tasks[0].test is collection.tasks[1].test and collection.tasks[0].test.labels == [1, 0]


def write_arsc(root, domains=("apparel", "books", "music"), targets=("books",)):
    folder = root / "arsc"
    write(folder / "workspace.filtered.list", "\n".join(domains) + "\n")
    write(folder / "workspace.target.list", "\n".join(targets) + "\n")
    for domain in domains:
        for threshold in ("t2", "t4", "t5"):
            for split in ("train", "dev", "test"):
                if domain == "music" and split == "train":
                    continue  # as in the real data
                write(folder / f"{domain}.{threshold}.{split}", "great product\t1\nbroke , sad\t-1\n")
    return folder


def test_arsc_tasks_targets_and_missing_files_reported(tmp_path):
    write_arsc(tmp_path)
    collection = arsc_tasks(str(tmp_path))
    assert isinstance(collection, TaskCollection) and len(collection.tasks) == 9
    assert collection.target_tasks == ["books.t2", "books.t4", "books.t5"]
    assert "apparel.t2" in collection.meta_train_tasks and "music.t5" in collection.meta_train_tasks
    assert collection.task("music.t2").train is None and collection.task("music.t2").dev is not None
    assert "music.t2.train" in collection.notes[0]
    assert collection.task("apparel.t4").train.labels == [1, 0] and collection.task("books.t2").label_names == [
        "-1",
        "1",
    ]


def test_leopard_one_task_per_training_set_and_empty_sets_left_out(tmp_path):
    folder = tmp_path / "leopard" / "conll"
    record = {"sentence1": "Downer visits China .", "sentence2": "Downer", "label": "I-PER", "processed_sent": "x"}
    write(folder / "conll_c_train_0_4.json", "[]")
    write(folder / "conll_c_train_1_4.json", json.dumps([record, {**record, "label": "I-LOC"}]))
    write(folder / "conll_c_eval.json", json.dumps([record]))
    collection = leopard_tasks(
        str(tmp_path),
        "conll",
        "conll_c",
        k=4,
        train_sets=[0, 1],
        text_fields=["sentence1", "sentence2"],
        label_names=["I-LOC", "I-PER"],
    )
    assert [task.name for task in collection.tasks] == ["conll-k4-1"]
    task = collection.tasks[0]
    assert task.is_pair and task.train.texts[0] == ("Downer visits China .", "Downer") and task.train.labels == [1, 0]
    assert task.dev is None and "conll_c_train_0_4.json" in collection.notes[0]


def test_skipped_rows_are_counted_in_the_log(tmp_path, caplog):
    write(
        tmp_path / "q" / "train.jsonl",
        jsonl(
            [
                {"sentence": "ok", "label": "a"},
                {"sentence": " ", "label": "a"},
                {"label": "b"},
                {"sentence": "fine", "label": "b"},
            ]
        ),
    )
    for split in ("valid", "test"):
        write(tmp_path / "q" / f"{split}.jsonl", jsonl([{"sentence": "s", "label": split}]))
    with caplog.at_level(logging.WARNING):
        dataset = jsonl_class_split(str(tmp_path), "q", on_bad_rows="skip")
    assert dataset.train.texts == ["ok", "fine"]
    assert "skipped 2 bad rows (first at line 2: empty text in field 'sentence')" in caplog.text


@pytest.mark.parametrize("on_bad_rows", ["error", "skip"])
def test_non_utf8_line_is_a_bad_row(tmp_path, on_bad_rows):
    good = b'{"sentence": "fine", "label": "a"}\n'
    write(tmp_path / "q" / "train.jsonl", good + b'{"sentence": "caf\xe9", "label": "a"}\n' + good)
    for split in ("valid", "test"):
        write(tmp_path / "q" / f"{split}.jsonl", jsonl([{"sentence": "s", "label": split}]))
    if on_bad_rows == "skip":
        assert len(jsonl_class_split(str(tmp_path), "q", on_bad_rows="skip").train) == 2
    else:
        with pytest.raises(Exception, match=r"train.jsonl: line 2: not valid UTF-8 \(byte 0xe9 at column 18\)"):
            jsonl_class_split(str(tmp_path), "q")


def test_csv_rows_spanning_lines_keep_their_first_line_number(tmp_path):
    from metanlp_cli.data.read import BadRows, read_delimited

    path = write(tmp_path / "t.csv", 'label,text\n0,"line one\nline two"\n1,ok\n\n2,"x"\n')
    rows = list(read_delimited(path, "csv", BadRows()))
    assert rows == [(1, ["label", "text"]), (2, ["0", "line one\nline two"]), (4, ["1", "ok"]), (6, ["2", "x"])]


def test_glue_max_train_examples_keeps_a_seeded_subset_in_file_order(tmp_path):
    lines = "".join(f"gj04\t{i % 2}\t\tsentence {i}.\n" for i in range(20))
    write(tmp_path / "CoLA" / "train.tsv", lines)

    def load(max_examples, seed=0):
        return glue_task(
            str(tmp_path),
            "cola",
            "CoLA/train.tsv",
            "CoLA/train.tsv",
            None,
            header=False,
            text_columns=[3],
            label_column=1,
            label_names=["0", "1"],
            metrics=["mcc"],
            max_train_examples=max_examples,
            sample_seed=seed,
        ).tasks[0]

    task = load(6)
    numbers = [int(text.split()[1].rstrip(".")) for text in task.train.texts]
    assert len(numbers) == 6 and numbers == sorted(numbers) and len(set(numbers)) == 6
    assert task.train.labels == [n % 2 for n in numbers]  # texts and labels stay paired
    assert len(task.dev) == 20  # only the train split is subsampled
    assert load(6).train.texts == task.train.texts and load(6, seed=1).train.texts != task.train.texts
    assert len(load(50).train) == 20 and "6 of 20 examples" in task.train.source
    with pytest.raises(MetaNLPError, match="max_train_examples=0"):
        load(0)
