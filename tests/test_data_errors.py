"""Bad data is one line naming the file (and line) and what was expected."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from metanlp_cli.data.glue import glue_task
from metanlp_cli.data.intent import jsonl_class_split, protaugment_class_split
from metanlp_cli.data.read import BadRows, data_path
from metanlp_cli.data.types import EncodedSplit, LabeledTexts
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.sampling import EpisodeSampler
from tests.test_data_formats import jsonl, write, write_protaugment


def test_data_root_must_be_set_and_exist(tmp_path):
    with pytest.raises(MetaNLPError, match="paths.data_root is not set; set METANLP_DATA_ROOT=/path/to/data or"):
        data_path(None, "banking77")
    with pytest.raises(MetaNLPError, match="is not a folder"):
        data_path(str(tmp_path / "nowhere"), "banking77")


def test_missing_fold_folder_lists_the_folds(tmp_path):
    write_protaugment(tmp_path)
    with pytest.raises(MetaNLPError, match=r"dataset.fold=7: folder .*few_shot/07 not found; allowed: 1$"):
        protaugment_class_split(str(tmp_path), "bank", fold=7)


def test_missing_file_is_named(tmp_path):
    folder = write_protaugment(tmp_path)
    (folder / "valid.jsonl").unlink()
    with pytest.raises(MetaNLPError, match=r"dataset: file .*few_shot/01/valid.jsonl not found"):
        protaugment_class_split(str(tmp_path), "bank", fold=1)


def test_class_in_the_label_file_without_examples(tmp_path):
    folder = write_protaugment(tmp_path)
    write(folder / "labels.train.txt", "a\nb\nz\n")
    with pytest.raises(
        MetaNLPError, match=r"labels.train.txt: class 'z' \(of 1 listed\) has no examples in .*train.jsonl"
    ):
        protaugment_class_split(str(tmp_path), "bank", fold=1)


def test_label_outside_the_label_file_names_the_line(tmp_path):
    folder = write_protaugment(tmp_path)
    with (folder / "train.jsonl").open("a") as file:
        file.write(json.dumps({"sentence": "stray", "label": "e"}) + "\n")
    with pytest.raises(MetaNLPError, match=r"train.jsonl: line 7: label 'e' is not one of the split's 2 classes"):
        protaugment_class_split(str(tmp_path), "bank", fold=1)


def test_empty_text_and_broken_json_name_the_line(tmp_path):
    write(tmp_path / "q" / "train.jsonl", jsonl([{"sentence": "ok", "label": "a"}, {"sentence": "", "label": "a"}]))
    for split in ("valid", "test"):
        write(tmp_path / "q" / f"{split}.jsonl", jsonl([{"sentence": "s", "label": split}]))
    with pytest.raises(
        MetaNLPError, match=r"train.jsonl: line 2: empty text in field 'sentence' \(or set dataset.on_bad"
    ):
        jsonl_class_split(str(tmp_path), "q")
    write(tmp_path / "q" / "train.jsonl", '{"sentence": "ok", "label": "a"}\n{"sentence": "no end\n')
    with pytest.raises(MetaNLPError, match=r"train.jsonl: line 2: not valid JSON"):
        jsonl_class_split(str(tmp_path), "q")


def test_missing_column_lists_the_header(tmp_path):
    write(tmp_path / "t.tsv", "sentence\tlabel\nfine\t1\n")
    with pytest.raises(MetaNLPError, match=r"t.tsv: line 1: no column 'score'; the header has sentence, label"):
        glue_task(
            str(tmp_path),
            "x",
            "t.tsv",
            None,
            None,
            text_columns=["sentence"],
            label_column="score",
            label_names=["0", "1"],
        )


def test_short_row_unknown_label_and_non_numeric_target(tmp_path):
    write(tmp_path / "t.tsv", "sentence\tlabel\nfine\t1\nno label here\n")
    with pytest.raises(MetaNLPError, match=r"t.tsv: line 3: 1 fields, expected at least 2"):
        glue_task(
            str(tmp_path),
            "x",
            "t.tsv",
            None,
            None,
            text_columns=["sentence"],
            label_column="label",
            label_names=["0", "1"],
        )
    write(tmp_path / "t.tsv", "sentence\tlabel\nfine\t7\n")
    with pytest.raises(MetaNLPError, match=r"t.tsv: line 2: label '7' is not one of 0, 1"):
        glue_task(
            str(tmp_path),
            "x",
            "t.tsv",
            None,
            None,
            text_columns=["sentence"],
            label_column="label",
            label_names=["0", "1"],
        )
    write(tmp_path / "t.tsv", "sentence\tlabel\nfine\thigh\n")
    with pytest.raises(
        MetaNLPError, match=r"t.tsv: line 2: label 'high' is not a number \(this is a regression task\)"
    ):
        glue_task(
            str(tmp_path),
            "x",
            "t.tsv",
            None,
            None,
            text_columns=["sentence"],
            label_column="label",
            regression=True,
            metrics=["pearson"],
        )


def test_on_bad_rows_accepts_only_error_or_skip():
    with pytest.raises(MetaNLPError, match="dataset.on_bad_rows='ignore' is not allowed; allowed: error, skip"):
        BadRows("ignore")


def encoded(name: str, sizes: list[int], source: str, fixed_tasks: bool = False) -> EncodedSplit:
    labels = [c for c, size in enumerate(sizes) for _ in range(size)]
    texts = LabeledTexts(["x"] * len(labels), labels, [f"c{c}" for c in range(len(sizes))], source)
    return EncodedSplit.from_parts(name, [("task", texts, torch.ones(len(labels), 5, dtype=torch.long))], fixed_tasks)


def test_class_smaller_than_k_plus_q_names_the_file():
    split = encoded("train", [20, 20, 8, 20, 20], "/data/x/train.jsonl")
    with pytest.raises(
        MetaNLPError,
        match=r"k_shot \+ q_query = 20 but class 'c2' of the train split \(/data/x/train.jsonl\) has only 8 examples; "
        r"allowed: k_shot \+ q_query <= 8",
    ):
        EpisodeSampler(split, n_way=5, k_shot=5, q_query=15)


def test_fixed_task_classes_cap_the_query_or_name_the_file():
    split = encoded("train", [16, 16], "/data/lmbff/sst2/16-13/train.tsv", fixed_tasks=True)
    sampler = EpisodeSampler(split, n_way=5, k_shot=5, q_query=15)
    assert sampler.capped_query_sizes == {"task": 11}
    episode = sampler.episode(0)
    assert episode.n_way == 2 and len(episode.support) == 10 and len(episode.query) == 22
    assert np.bincount(episode.query.labels.numpy()).tolist() == [11, 11]
    with pytest.raises(MetaNLPError, match=r"k_shot = 16 but class 'c0' .*16-13/train.tsv\) has only 16 examples"):
        EpisodeSampler(split, n_way=5, k_shot=16, q_query=15)


def metanlp(*arguments: str, cwd=None, **environment: str) -> subprocess.CompletedProcess:
    """The CLI in a subprocess, without METANLP_DATA_ROOT unless given."""
    env = {key: value for key, value in os.environ.items() if key != "METANLP_DATA_ROOT"} | environment
    return subprocess.run(
        [sys.executable, "-m", "metanlp_cli", *arguments], capture_output=True, text=True, timeout=300, env=env, cwd=cwd
    )


DATA_ERRORS = [
    (["train", "dataset=banking77", "debug=smoke"], "error: paths.data_root is not set; set METANLP_DATA_ROOT="),
    (["train", "dataset=files", "debug=smoke"], "error: dataset.train_file is not set; give dataset.train_file=PATH"),
    (["data", "summarize", "dataset=files"], "error: metanlp data: unknown action 'summarize'; allowed: describe"),
    (["data", "describe", "dataset=glue/nope"], "error: dataset='glue/nope' is not a known choice; allowed: arsc,"),
]


@pytest.mark.smoke
@pytest.mark.parametrize("arguments,message", DATA_ERRORS, ids=[" ".join(a) for a, _ in DATA_ERRORS])
def test_cli_data_errors_are_one_line(arguments, message, tmp_path):
    result = metanlp(*arguments, f"hydra.run.dir={tmp_path}")
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert errors[0].startswith(message)
