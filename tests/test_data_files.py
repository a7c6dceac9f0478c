"""Users' own files through `datasets` (every format, both shapes), and the hub failing fast offline."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest

from metanlp_cli.data.files import user_files
from metanlp_cli.data.types import ClassSplit, TaskCollection
from metanlp_cli.errors import MetaNLPError
from tests.test_data_errors import metanlp
from tests.test_data_formats import write

ROWS = [
    ("how do I pay", "billing"),
    ("card lost", "cards"),
    ("reset password", "account"),
    ("late fee?", "billing"),
    ("new card", "cards"),
    ("login fails", "account"),
]


def write_format(path, rows, file_format: str):
    if file_format == "csv":
        return write(path, "\ufefftext,label\n" + "".join(f'"{t}",{label}\n' for t, label in rows))
    if file_format == "tsv":
        return write(path, "text\tlabel\n" + "".join(f'say "{t}"\t{label}\n' for t, label in rows))
    if file_format == "jsonl":
        return write(path, "".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in rows))
    if file_format == "json":
        return write(path, json.dumps([{"text": t, "label": label} for t, label in rows]))
    import pandas

    path.parent.mkdir(parents=True, exist_ok=True)
    pandas.DataFrame({"text": [t for t, _ in rows], "label": [label for _, label in rows]}).to_parquet(path)
    return path


@pytest.mark.parametrize("file_format", ["csv", "tsv", "jsonl", "json", "parquet"])
def test_every_format_gives_a_class_split_by_class_lists(tmp_path, file_format):
    path = write_format(tmp_path / f"data.{file_format}", ROWS, file_format)
    dataset = user_files(str(path), val_classes=["cards"], test_classes=["account"])
    assert isinstance(dataset, ClassSplit)
    assert dataset.train.class_names == ["billing"] and dataset.test.class_names == ["account"]
    expected = ['say "how do I pay"', 'say "late fee?"'] if file_format == "tsv" else ["how do I pay", "late fee?"]
    assert dataset.train.texts == expected  # the BOM of the csv and the quotes inside TSV fields survive as text


def test_class_fractions_follow_the_seed(tmp_path):
    rows = [(f"text {i}", f"class{i % 10}") for i in range(40)]
    path = write_format(tmp_path / "data.jsonl", rows, "jsonl")
    dataset = user_files(str(path), val_fraction=0.2, test_fraction=0.3, split_seed=3)
    order = [f"class{c}" for c in range(10)]
    order = [order[i] for i in np.random.default_rng(3).permutation(10)]  # the documented rule
    assert dataset.test.class_names == sorted(order[:3]) and dataset.val.class_names == sorted(order[3:5])
    assert len(dataset.train.class_names) == 5 and len(dataset.train) == 20


def test_three_files_as_a_class_split_or_as_one_task(tmp_path):
    train = write_format(tmp_path / "train.csv", ROWS, "csv")
    val = write_format(tmp_path / "val.csv", [("bill me", "billing"), ("my card", "cards")], "csv")
    test = write_format(tmp_path / "test.csv", [("sign in", "account")], "csv")
    shared = r"labels \['account', 'billing', 'cards'\] of .*train.csv are also in the val or test file"
    with pytest.raises(MetaNLPError, match=shared):
        user_files(str(train), str(val), str(test))
    other = write_format(tmp_path / "other.csv", [("hello", "greeting"), ("bye", "farewell")], "csv")
    third = write_format(tmp_path / "third.csv", [("rain today?", "weather")], "csv")
    disjoint = user_files(str(train), str(other), str(third))
    assert disjoint.val.class_names == ["farewell", "greeting"] and disjoint.test.class_names == ["weather"]
    assert disjoint.train.class_names == ["account", "billing", "cards"]
    collection = user_files(str(train), str(val), str(test), split="examples", metrics=["accuracy", "f1"])
    assert isinstance(collection, TaskCollection)
    task = collection.tasks[0]
    assert task.label_names == ["account", "billing", "cards"] and task.dev.labels == [1, 2] and task.test.labels == [0]
    assert task.metrics == ["accuracy", "f1"]


def test_pairs_and_regression_targets(tmp_path):
    records = [{"a": "A man.", "b": "A person.", "score": 4.5}, {"a": "Cats.", "b": "Rain.", "score": 0.2}]
    path = write(tmp_path / "sts.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    collection = user_files(
        str(path),
        split="examples",
        text_column="a",
        text_pair_column="b",
        label_column="score",
        regression=True,
        metrics=["pearson", "spearman"],
    )
    task = collection.tasks[0]
    assert task.is_pair and task.regression and task.train.texts[0] == ("A man.", "A person.")
    assert task.train.labels == [4.5, 0.2]


def test_user_file_errors_name_the_file_and_line(tmp_path):
    path = write(tmp_path / "data.csv", b"text,label\nfine,a\ncaf\xe9,b\n")
    with pytest.raises(MetaNLPError, match=r"data.csv: line 3: not valid UTF-8 \(byte 0xe9\)"):
        user_files(str(path))
    path = write_format(tmp_path / "data.jsonl", ROWS, "jsonl")
    with pytest.raises(MetaNLPError, match=r"data.jsonl: no column 'intent'; the columns are text, label"):
        user_files(str(path), label_column="intent")
    with pytest.raises(MetaNLPError, match=r"dataset.val_classes: class 'nope' is not a label of"):
        user_files(str(path), val_classes=["nope"], test_classes=["cards"])
    with pytest.raises(MetaNLPError, match=r"give both dataset.val_classes and dataset.test_classes, or neither"):
        user_files(str(path), val_classes=["cards"])
    with pytest.raises(MetaNLPError, match=r"dataset.train_file='.*missing.csv': file not found"):
        user_files(str(tmp_path / "missing.csv"))
    path = write(tmp_path / "empty.jsonl", json.dumps({"text": "", "label": "a"}) + "\n")
    with pytest.raises(MetaNLPError, match=r"empty.jsonl: row 1: empty text in field 'text'"):
        user_files(str(path), split="examples")


@pytest.mark.smoke
def test_hub_fails_fast_with_hf_hub_offline(tmp_path):
    result = metanlp(
        "data",
        "describe",
        "dataset=hf",
        "dataset.name=nobody/no-such-dataset",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path),
    )
    assert result.returncode == 2, result.stderr
    assert (
        "error: dataset.name='nobody/no-such-dataset' is not in the local Hugging Face cache and HF_HUB_OFFLINE=1"
        in (result.stderr)
    )


@pytest.mark.smoke
def test_hub_fails_fast_when_the_network_is_unreachable(tmp_path):
    # Nothing listens on port 9 of this machine: the probe's connection is refused at once.
    result = metanlp(
        "data",
        "describe",
        "dataset=hf",
        "dataset.name=org/data",
        "dataset.timeout=2",
        HF_ENDPOINT="http://127.0.0.1:9",
        HF_HUB_OFFLINE="0",
        HF_HOME=str(tmp_path),
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: dataset=hf: cannot reach http://127.0.0.1:9 (")
    assert "set HF_HUB_OFFLINE=1 to use datasets already in the local cache" in result.stderr


def test_hub_probe_gives_up_after_its_timeout():
    from metanlp_cli.data.hub import check_reachable

    with socket.socket() as silent:  # accepts connections (the kernel does) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(MetaNLPError, match=rf"^dataset=hf: cannot reach {endpoint} \(timed out, timeout 0.5s\)"):
            check_reachable(endpoint, timeout=0.5)
