"""Task collections: which split each episodic phase reads, task episodes, the token cache, `data describe`,
and a smoke train on a task collection from files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from metanlp_cli import train
from metanlp_cli.components import encode_splits, no_episodes_message, training_texts
from metanlp_cli.data.cache import TokenCache
from metanlp_cli.data.tokenize import WordTokenizer
from metanlp_cli.data.types import EncodedSplit, LabeledTexts, Task, TaskCollection
from metanlp_cli.describe import summary, to_markdown
from metanlp_cli.metrics import METRICS, REGRESSION_METRICS
from metanlp_cli.sampling import EpisodeSampler
from tests.test_data_formats import write


def texts(prefix: str, label_names: list[str], per_class: int) -> LabeledTexts:
    rows = [(f"{prefix} {name} word{i}", c) for c, name in enumerate(label_names) for i in range(per_class)]
    return LabeledTexts([t for t, _ in rows], [c for _, c in rows], list(label_names), f"{prefix}.tsv")


def regression_texts(prefix: str, count: int) -> LabeledTexts:
    """STS-B-like rows with targets 0, 0.125, ..., in order."""
    texts = [f"{prefix} s{i} word" for i in range(count)]
    return LabeledTexts(texts, [i / 8 for i in range(count)], [], f"{prefix}.tsv")


def collection() -> TaskCollection:
    """a: meta-train with dev; b: meta-train, no dev; t: target without test labels; r: regression."""
    two, three = ["neg", "pos"], ["x", "y", "z"]
    tasks = [
        Task("a", texts("a-train", two, 30), texts("a-dev", two, 25), texts("a-test", two, 25), two),
        Task("b", texts("b-train", three, 30), None, None, three),
        Task("t", texts("t-train", two, 5), texts("t-dev", two, 25), None, two),
        Task("r", regression_texts("r-train", 40), None, None, [], regression=True, metrics=["spearman", "pearson"]),
    ]
    return TaskCollection("demo", tasks, meta_train_tasks=["a", "b", "r"], target_tasks=["t"])


def test_phases_read_the_documented_splits():
    parts = {
        phase: [(task, split) for task, split, _ in collection().episode_parts(phase)]
        for phase in ("train", "val", "test")
    }
    train_parts = [("a", "train"), ("b", "train"), ("r", "train")]  # the regression task r takes part too
    assert parts == {"train": train_parts, "val": [("t", "dev")], "test": [("t", "dev")]}
    everyone = TaskCollection("all", collection().tasks[:2])  # no division: every task in every phase
    assert [(t, s) for t, s, _ in everyone.episode_parts("val")] == [("a", "dev"), ("b", "train")]
    assert [(t, s) for t, s, _ in everyone.episode_parts("test")] == [("a", "test")]  # never b's train split
    regression_only = TaskCollection("sts", [collection().tasks[3]])  # a train split only
    assert [(t, s) for t, s, _ in regression_only.episode_parts("val")] == [("r", "train")]
    assert regression_only.episode_parts("test") == []
    assert no_episodes_message(regression_only, "test") == (
        "dataset sts has no task with a test or dev split for the test episodes (tasks: r)"
    )


def test_task_metadata_is_checked():
    with pytest.raises(ValueError, match="metrics \\['bleu'\\] are not known"):
        Task("x", None, None, None, ["a", "b"], metrics=["bleu"])
    with pytest.raises(ValueError, match="do not fit a classification task"):
        Task("x", None, None, None, ["a", "b"], metrics=["pearson"])
    with pytest.raises(ValueError, match="task names \\['a'\\] are not unique"):
        TaskCollection("c", [collection().tasks[0]] * 2)


def test_tasks_accept_exactly_the_metrics_that_metrics_py_computes():
    for name in METRICS:
        regression = name in REGRESSION_METRICS
        Task("x", None, None, None, [] if regression else ["a", "b"], regression=regression, metrics=[name])
    with pytest.raises(ValueError, match="allowed: " + ", ".join(METRICS)):
        Task("x", None, None, None, ["a", "b"], metrics=["auc"])


def encoded_train() -> EncodedSplit:
    tokenizer = WordTokenizer().fit(training_texts(collection()))
    splits, _ = encode_splits(tokenizer, collection(), ("train",), torch.device("cpu"))
    return splits["train"]


def test_tasks_become_one_split_with_qualified_classes_and_task_groups():
    split = encoded_train()
    assert split.class_names == ["a/neg", "a/pos", "b/x", "b/y", "b/z"] and split.fixed_tasks
    assert [(task.name, task.class_ids.tolist(), task.source, task.metric) for task in split.tasks] == [
        ("a", [0, 1], "a-train.tsv", "accuracy"),
        ("b", [2, 3, 4], "b-train.tsv", "accuracy"),
        ("r", [], "r-train.tsv", "spearman"),  # scored by its first declared metric
    ]
    assert [len(rows) for rows in split.rows_by_class] == [30] * 5
    # the regression rows follow the 150 class rows: label -1, their float target in `targets`
    assert split.tasks[2].target_rows.tolist() == list(range(150, 190)) and not split.tasks[0].regression
    assert split.labels[150:].eq(-1).all() and split.targets[150:].tolist() == [i / 8 for i in range(40)]
    assert split.targets[:150].isnan().all()


def test_task_episodes_stay_inside_one_task_with_n_at_most_its_labels():
    sampler = EpisodeSampler(encoded_train(), n_way=5, k_shot=2, q_query=3, seed=7)
    seen = set()
    for index in range(40):
        episode = sampler.episode(index)
        if episode.metric != "accuracy":  # the regression task r: N x K support, N x Q query rows
            seen.add("r")
            assert episode.metric == "spearman" and episode.class_names == () and episode.support.is_regression
            assert len(episode.support) == 5 * 2 and len(episode.query) == 5 * 3
            continue
        tasks = {name.split("/")[0] for name in episode.class_names}
        assert len(tasks) == 1
        seen |= tasks
        assert episode.n_way == {"a": 2, "b": 3}[tasks.pop()]
        assert len(episode.support) == 2 * episode.n_way and len(episode.query) == 3 * episode.n_way
        support, query = ({tuple(row[row != 0].tolist()) for row in b.inputs} for b in (episode.support, episode.query))
        assert len(support) == len(episode.support) and not support & query  # distinct texts, no overlap
    assert seen == {"a", "b", "r"}
    again = EpisodeSampler(encoded_train(), n_way=5, k_shot=2, q_query=3, seed=7).episode(11)
    assert again.class_names == sampler.episode(11).class_names
    assert torch.equal(again.query.inputs, sampler.episode(11).query.inputs)


def test_a_class_split_samples_the_same_episodes_as_before_task_groups():
    labels = np.repeat(np.arange(6), 10)
    split = EncodedSplit.from_tensors(
        "train", torch.arange(60).unsqueeze(1).repeat(1, 5), labels.tolist(), list("abcdef")
    )
    episode = EpisodeSampler(split, n_way=3, k_shot=2, q_query=2, seed=5).episode(4)
    # the sampler's documented draw for a class split: N classes, then K + Q rows of each
    rng = np.random.default_rng([5, 4])
    classes = rng.choice(6, size=3, replace=False)
    first = split.rows_by_class[classes[0]][rng.choice(10, size=4, replace=False)]
    assert list(episode.class_names) == [split.class_names[c] for c in classes]
    assert episode.support.inputs[:2, 0].tolist() == first[:2].tolist()
    assert episode.query.inputs[:2, 0].tolist() == first[2:].tolist()


def test_token_cache_hits_only_for_the_same_tokenizer_and_texts(tmp_path):
    sentences = ["the cat sat", "a dog ran", ("first part", "second part")]
    tokenizer = WordTokenizer().fit(sentences)
    cold, hit = TokenCache(tokenizer, tmp_path).encode(sentences)
    warm, hit_again = TokenCache(WordTokenizer().fit(sentences), tmp_path).encode(sentences)
    assert (
        (hit, hit_again) == (False, True) and torch.equal(cold, warm) and torch.equal(cold, tokenizer.encode(sentences))
    )
    assert not TokenCache(tokenizer, tmp_path).encode(sentences[:2])[1]  # other texts
    assert not TokenCache(WordTokenizer(max_length=2).fit(sentences), tmp_path).encode(sentences)[1]  # a setting
    assert not TokenCache(WordTokenizer().fit(sentences + ["new words"]), tmp_path).encode(sentences)[1]  # vocabulary
    for path in tmp_path.glob("tokens-*.pt"):
        path.write_bytes(b"torn")
    recovered, hit = TokenCache(tokenizer, tmp_path).encode(sentences)
    assert not hit and torch.equal(recovered, cold)


def test_describe_counts_and_percentiles():
    described = summary(collection())
    task_a = described["tasks"][0]
    assert task_a["role"] == "meta-train" and described["tasks"][2]["role"] == "target"
    assert task_a["splits"]["train"]["per_class"] == {"neg": 30, "pos": 30}
    # every text of a-train has 3 words: all percentiles are 3
    assert task_a["splits"]["train"]["words"] == {"p5": 3, "p50": 3, "p95": 3, "max": 3}
    assert described["tasks"][3]["splits"]["train"]["targets"] == {"min": 0.0, "mean": 2.4375, "max": 4.875}
    assert described["episodes"] == {"train": {"train": 3}, "val": {"dev": 1}, "test": {"dev": 1}}
    markdown = to_markdown(described)
    assert "| a | meta-train | 2 classes | single | accuracy | 60 | 50 | 50 |" in markdown
    assert "- test: dev split of 1 task" in markdown


def test_word_percentiles_against_numpy():
    lengths = [1, 2, 3, 4, 10]
    split = LabeledTexts([" ".join(["w"] * n) for n in lengths], [0, 0, 1, 1, 1], ["a", "b"])
    from metanlp_cli.describe import split_summary

    words = split_summary(split)["words"]
    assert words == {f"p{p}": int(np.percentile(lengths, p)) for p in (5, 50, 95)} | {"max": 10}


def test_smoke_train_on_a_task_collection_from_files(compose_config, tmp_path):
    paths = {}
    for part, count in (("train", 25), ("val", 20), ("test", 20)):
        rows = [{"text": f"{w} {w} {part} {i}", "label": w} for w in ("red", "green", "blue") for i in range(count)]
        paths[part] = write(tmp_path / f"{part}.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    cfg = compose_config(
        "train",
        ["dataset=files", "dataset.split=examples", "debug=smoke", f"paths.cache_dir={tmp_path / 'cache'}"]
        + [f"dataset.{part}_file={path}" for part, path in paths.items()],
    )
    best_val = train.run(cfg, tmp_path, {"dataset": "files", "algo": "protonet", "backbone": "cnn"})
    results = json.loads((tmp_path / "results.json").read_text())
    # one task of 3 labels: N = 3 although sampler.n_way = 5; 20 test examples per class hold K + Q = 20
    assert results["n_way"] == 3 and results["chance"] == pytest.approx(1 / 3) and 0 <= best_val <= 1
    assert "q_query_per_task" not in results and len(list((tmp_path / "cache").glob("tokens-*.pt"))) == 3


def write_colors(tmp_path) -> str:
    rows = [{"text": f"{w} sky {i}", "label": w} for w in ("red", "green", "blue", "grey", "pink") for i in range(4)]
    return str(write(tmp_path / "colors.jsonl", "".join(json.dumps(row) + "\n" for row in rows)))


@pytest.mark.smoke
def test_cli_data_describe_prints_a_class_split(tmp_path):
    from tests.test_data_errors import metanlp

    path = write_colors(tmp_path)
    result = metanlp(
        "data",
        "describe",
        "dataset=files",
        f"dataset.train_file={path}",
        "dataset.val_classes=[grey]",
        "dataset.test_classes=[pink,red]",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "# files: class split, 20 examples"
    assert f"| test | 2 | 8 | 4 / 4 / 4 | 3 / 3 / 3 / 3 | {path} |" in lines
    assert "- train: blue: 4, green: 4" in lines
    assert [p.name for p in tmp_path.iterdir()] == ["colors.jsonl"]  # describing writes nothing


def test_data_describe_as_json(compose_config, tmp_path, capsys):
    from metanlp_cli import describe

    cfg = compose_config("data", ["dataset=files", f"dataset.train_file={write_colors(tmp_path)}", "format=json"])
    describe.run(cfg)
    described = json.loads(capsys.readouterr().out)
    assert described["shape"] == "class split" and described["splits"]["val"]["classes"] == 1
    assert sum(split["examples"] for split in described["splits"].values()) == 20


def test_results_text_for_task_episodes():
    from metanlp_cli.results import q_query_text, summary_line

    results = {
        "n_way": [2, 3],
        "chance": (1 / 2 + 1 / 3) / 2,
        "k_shot": 5,
        "q_query": 15,
        "q_query_per_task": {"a": 4, "b": 11},
        "episodes": 10,
        "accuracy": {"mean": 0.5, "ci95": 0.01},
    }
    assert summary_line(results) == "test accuracy 50.00 +/- 1.00 (95% CI, 10 episodes, 2/3-way 5-shot, chance 41.7)"
    assert q_query_text(results) == "15 (4/11 in 2 tasks)"
