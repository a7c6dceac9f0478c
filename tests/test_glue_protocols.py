"""Task collections of dataset configs (glue/lowres, lmbff/glue), the glue_lowres protocol, one training
run per fold (`protocol.folds`) and evaluations right after training, on small fixtures written here."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from metanlp_cli.algorithms.base import Algorithm
from metanlp_cli.config import build, check_arguments
from metanlp_cli.data.types import LabeledTexts, Task, TaskCollection
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.folds import fold_results
from metanlp_cli.protocols import ArscProtocol, GlueLowResourceProtocol, k_shot_rows
from metanlp_cli.sampling import Batch
from tests.conftest import data_root
from tests.test_cli import metanlp

WORDS = {0: "awful dull sad", 1: "great fun good", 2: "plain ok so"}


def glue_rows(config, count: int, seed: int) -> tuple[list[list[str]], list]:
    """`count` rows per label (regression: 2 * count targets 0..5) in the columns a glue_task config names."""
    rng = np.random.default_rng(seed)
    labels = (
        [float(x) for x in np.round(rng.uniform(0, 5, size=2 * count), 2)]
        if config.regression
        else [name for name in config.label_names for _ in range(count)]
    )
    texts = []
    for i, label in enumerate(labels):
        index = round(float(label)) % 2 if config.regression else list(config.label_names).index(label)
        texts.append([f"{WORDS[index % 3]} {column} {seed} {i}" for column in range(len(config.text_columns))])
    return texts, labels


def write_glue_file(path, config, count: int, seed: int) -> None:
    """A file of a glue_task config: a glue_subsets JSON sample or a TSV with its named or numbered columns."""
    texts, labels = glue_rows(config, count, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".json":
        records = {
            str(i): {"text_a": t[0], "text_b": t[-1], "label": str(y)}
            for i, (t, y) in enumerate(zip(texts, labels, strict=True))
        }
        path.write_text(json.dumps(records))
        return
    columns = [*config.text_columns, config.label_column]
    width = max(c + 1 if c >= 0 else -c for c in columns) if all(isinstance(c, int) for c in columns) else len(columns)
    lines = ["\t".join(map(str, columns))] if config.header else []
    for text, label in zip(texts, labels, strict=True):
        fields = ["x"] * width
        for column, value in zip(columns, [*text, str(label)], strict=True):
            fields[columns.index(column) if config.header else column] = value
        lines.append("\t".join(fields))
    path.write_text("\n".join(lines) + "\n")


def write_glue_lowres(root, compose_config) -> None:
    """Every file that dataset=glue/lowres reads, with a few examples per label."""
    dataset = compose_config("eval", ["checkpoint=x", "dataset=glue/lowres"]).dataset
    for number, task in enumerate(dataset.tasks.values()):
        for split, count in (("train_file", 12), ("dev_file", 6), ("test_file", 3)):
            if task[split]:
                write_glue_file(root / task[split], task, count, seed=10 * number + len(split))


def test_glue_lowres_builds_its_meta_train_and_target_tasks(compose_config, tmp_path):
    write_glue_lowres(tmp_path, compose_config)
    cfg = compose_config("eval", ["checkpoint=x", "dataset=glue/lowres", f"paths.data_root={tmp_path}"])
    check_arguments(cfg.dataset, "dataset")  # the composed collection: every entry's keys are its target's
    collection = build(cfg.dataset, "dataset")
    assert collection.name == "glue/lowres"
    assert [task.name for task in collection.phase_tasks("train")] == ["sst2", "mnli", "qnli", "qqp", "snli"]
    assert [task.name for task in collection.phase_tasks("test")] == ["cola", "mrpc", "stsb", "wnli"]
    assert [name for name, _, _ in collection.episode_parts("train")] == ["sst2", "mnli", "qnli", "qqp", "snli"]
    assert [name for name, _, _ in collection.episode_parts("test")] == ["cola", "mrpc", "stsb", "wnli"]
    assert collection.task("stsb").regression and collection.task("mrpc").metrics == ["f1", "accuracy"]

    trimmed = compose_config(
        "eval",
        [
            "checkpoint=x",
            "dataset=glue/lowres",
            f"paths.data_root={tmp_path}",
            "~dataset.tasks.wnli",
            "dataset.target_tasks=[cola,mrpc]",
        ],
    )
    assert [task.name for task in build(trimmed.dataset, "dataset").phase_tasks("test")] == ["cola", "mrpc"]
    unknown = compose_config(
        "eval", ["checkpoint=x", "dataset=glue/lowres", f"paths.data_root={tmp_path}", "dataset.target_tasks=[rte]"]
    )
    with pytest.raises(
        MetaNLPError, match=r"dataset.target_tasks: 'rte' is not an entry of dataset.tasks; allowed: sst2"
    ):
        build(unknown.dataset, "dataset")


def test_a_task_entry_is_checked_under_its_own_key(compose_config):
    cfg = compose_config("eval", ["checkpoint=x", "dataset=lmbff/glue", "+dataset.tasks.sst2.kk=3"])
    with pytest.raises(MetaNLPError, match=r"dataset.tasks.sst2.kk is not a parameter of .*lmbff_tasks"):
        build(cfg.dataset, "dataset")
    evil = OmegaConf.create(
        {
            "_target_": "metanlp_cli.data.collections.task_collection",
            "name": "x",
            "tasks": {"a": {"_target_": "os.system", "command": "echo hi"}},
        }
    )
    with pytest.raises(MetaNLPError, match=r"dataset.tasks.a._target_='os.system' is not allowed"):
        build(evil, "dataset")


def texts(labels, prefix: str) -> LabeledTexts:
    return LabeledTexts([f"{WORDS[int(y) % 2]} {prefix} {i}" for i, y in enumerate(labels)], list(labels), ["0", "1"])


def test_k_shot_rows_are_reproducible_per_seed_and_differ_across_seeds():
    labels = [0] * 30 + [1] * 50
    first, again, other = (
        k_shot_rows(labels, 4, False, 1),
        k_shot_rows(labels, 4, False, 1),
        k_shot_rows(labels, 4, False, 2),
    )
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    assert np.bincount(np.asarray(labels)[first]).tolist() == [4, 4] and len(set(first)) == 8
    regression = k_shot_rows(np.linspace(0, 5, 40), 4, True, 1)
    assert len(regression) == 8 and len(set(regression)) == 8
    with pytest.raises(ValueError, match="label 0 has 30 train examples"):
        k_shot_rows(labels, 31, False, 1)


class FirstTokenAlgorithm(Algorithm):
    """Predicts the class whose support rows share a row's first token (1 -> label 1), ignoring the rest;
    flips its answer for supports with fewer than 3 examples of label 1 (so the sample matters)."""

    def adapt(self, support: Batch):
        flip = int((support.labels == 1).sum() < 3)
        return lambda inputs: nn.functional.one_hot(((inputs[:, 0] == 1).long() + flip) % 2, 2).float()


def fixture_collection() -> TaskCollection:
    """Two target tasks with dev splits: `acc` (accuracy) and `pair` (F1 and accuracy), one meta-train task."""
    dev_labels = [1, 1, 0, 0, 1]
    return TaskCollection(
        "fixture",
        [
            Task("meta", texts([0, 1] * 5, "meta"), None, None, ["0", "1"]),
            Task("acc", texts([0] * 6 + [1] * 2, "acc"), texts([1, 0, 0], "acc-dev"), None, ["0", "1"]),
            Task(
                "pair",
                texts([0] * 4 + [1] * 4, "pair"),
                texts(dev_labels, "pair-dev"),
                texts([1], "t"),
                ["0", "1"],
                metrics=["f1", "accuracy"],
            ),
        ],
        meta_train_tasks=["meta"],
        target_tasks=["acc", "pair"],
    )


def run_glue_lowres(protocol, tmp_path):
    collection = fixture_collection()
    prepared = protocol.prepare(WordTokenizerAdapter(), collection, "test", nn.Identity(), torch.device("cpu"))
    return prepared.tasks, protocol.score(FirstTokenAlgorithm(), prepared, torch.device("cpu"), progress=False)


class WordTokenizerAdapter:
    """What the k-shot tasks call (without a cache): texts -> token ids, [1 for `great...` else 2, 3]."""

    def encode(self, batch):
        return torch.tensor([[1 if text.startswith("great") else 2, 3] for text in batch])


def test_glue_lowres_scores_each_target_on_dev_and_averages_the_main_scores_by_hand(tmp_path):
    tasks, results = run_glue_lowres(GlueLowResourceProtocol(batch_size=2), tmp_path)
    assert [task.name for task in tasks] == ["acc", "pair"] and {t.evaluation_split for t in tasks} == {"dev"}
    assert results["protocol"] == "glue_lowres" and list(results["tasks"]) == ["acc", "pair"]
    acc, pair = results["tasks"]["acc"], results["tasks"]["pair"]
    # acc: 2 examples of label 1 in train -> flipped predictions; dev [1,0,0] predicted [0,1,1]: 0 of 3 right.
    assert acc["scores"]["accuracy"]["mean"] == 0.0 and acc["support_examples"] == [8] and acc["k_shot"] == [2, 6]
    # pair: 4 of label 1 -> unflipped, every dev example right: F1 1, accuracy 1, combined 1.
    assert pair["training_sets"]["pair"] == pytest.approx({"f1": 1.0, "accuracy": 1.0, "combined": 1.0})
    assert pair["score_metric"] == "combined" and results["average"] == pytest.approx((0.0 + 1.0) / 2)


def test_glue_lowres_k_shot_samples_per_seed(tmp_path):
    tasks, results = run_glue_lowres(GlueLowResourceProtocol(batch_size=2, k_shot=2, seeds=[1, 2]), tmp_path)
    assert [task.name for task in tasks] == ["acc-seed1", "acc-seed2", "pair-seed1", "pair-seed2"]
    assert all(torch.bincount(task.support.labels).tolist() == [2, 2] for task in tasks)
    again, _ = run_glue_lowres(GlueLowResourceProtocol(batch_size=2, k_shot=2, seeds=[1, 2]), tmp_path)
    for task, same in zip(tasks, again, strict=True):
        assert torch.equal(task.support.labels, same.support.labels)
    collection = fixture_collection()
    rows = [k_shot_rows(collection.task("acc").train.labels, 2, False, seed) for seed in (1, 2)]
    assert not np.array_equal(*rows)
    # every 2-shot support has 2 examples of label 1 -> flipped everywhere: acc 0/3; pair predicts [0,0,1,1,0]
    acc, pair = results["tasks"]["acc"], results["tasks"]["pair"]
    assert acc["k_shot"] == [2] and len(acc["training_sets"]) == 2 and acc["scores"]["accuracy"]["std"] == 0.0
    assert pair["scores"]["accuracy"]["mean"] == pytest.approx(0.0)
    with pytest.raises(MetaNLPError, match="task acc: protocol.k_shot=3 but label 1 has 2 train examples"):
        run_glue_lowres(GlueLowResourceProtocol(k_shot=3, seeds=[1]), tmp_path)


def test_kshot_errors_name_the_protocol_in_use():
    collection = TaskCollection("fixture", [Task("a", None, texts([1, 0], "d"), None, ["0", "1"])])
    with pytest.raises(
        MetaNLPError, match="task a of fixture needs a train split and a dev split for protocol=glue_lowres"
    ):
        GlueLowResourceProtocol().prepare(WordTokenizerAdapter(), collection, "test", nn.Identity(), "cpu")
    with pytest.raises(MetaNLPError, match=r"split='val' with protocol=glue_lowres; allowed: test"):
        GlueLowResourceProtocol().prepare(WordTokenizerAdapter(), collection, "val", nn.Identity(), "cpu")
    with pytest.raises(MetaNLPError, match="for protocol=arsc"):
        ArscProtocol().prepare(WordTokenizerAdapter(), collection, "test", nn.Identity(), "cpu")


def test_fold_results_are_the_mean_of_the_folds_by_hand():
    per_fold = {
        fold: {
            "protocol": "episodic",
            "split": "test",
            "n_way": 5,
            "k_shot": 1,
            "q_query": 5,
            "episodes": 2,
            "seed": 2024,
            "dataset": "banking77",
            "algo": "protonet",
            "backbone": "cnn",
            "accuracy": {"mean": float(np.mean(scores))},
            "episode_accuracies": scores,
        }
        for fold, scores in ((1, [0.4, 0.6]), (2, [0.8, 0.8]))
    }
    results = fold_results(per_fold)
    assert results["folds"] == [1, 2] and results["mean_over_folds"] == pytest.approx(0.65)
    assert results["std_over_folds"] == pytest.approx(np.std([0.5, 0.8], ddof=1))
    pooled = results["pooled_episodes"]
    assert pooled["mean"] == pytest.approx(0.65) and pooled["count"] == 4
    assert pooled["ci95"] == pytest.approx(1.959963984540054 * np.std([0.4, 0.6, 0.8, 0.8], ddof=1) / 2)


def write_banking77_folds(root, folds=(1, 2)) -> None:
    """A ProtAugment-shaped banking77: per fold, 3 classes in each of train / valid / test, 6 sentences each."""
    for fold in folds:
        folder = root / "banking77" / "few_shot" / f"{fold:02d}"
        folder.mkdir(parents=True)
        for split, classes_file, offset in (("train", "train", 0), ("valid", "valid", 3), ("test", "test", 6)):
            names = [f"intent{fold}_{offset + c}" for c in range(3)]
            (folder / f"labels.{classes_file}.txt").write_text("\n".join(names) + "\n")
            rows = [
                json.dumps({"sentence": f"word{c} word{c + 1} filler {fold} {i}", "label": name})
                for c, name in enumerate(names)
                for i in range(6)
            ]
            (folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n")


SMALL_EPISODES = ["sampler.n_way=2", "sampler.k_shot=1", "sampler.q_query=2", "backbone.encoder.num_filters=8"]


@pytest.mark.smoke
def test_folds_train_one_run_per_fold_and_average_them(tmp_path):
    write_banking77_folds(tmp_path)
    run_dir = tmp_path / "run"
    result = metanlp(
        "train",
        "debug=smoke",
        "dataset=banking77",
        *SMALL_EPISODES,
        "protocol.folds=[1,2]",
        f"paths.data_root={tmp_path}",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr
    folds = [json.loads((run_dir / f"fold{k}" / "results.json").read_text()) for k in (1, 2)]
    for fold in (1, 2):
        assert (run_dir / f"fold{fold}" / "checkpoints" / "best.pt").is_file()
        assert f"fold: {fold}" in (run_dir / f"fold{fold}" / "config.yaml").read_text()
    aggregate = json.loads((run_dir / "results.json").read_text())
    means = [fold["accuracy"]["mean"] for fold in folds]
    assert aggregate["folds"] == [1, 2] and aggregate["mean_over_folds"] == pytest.approx(sum(means) / 2)
    assert aggregate["per_fold"]["fold2"]["accuracy"] == folds[1]["accuracy"]
    pooled = folds[0]["episode_accuracies"] + folds[1]["episode_accuracies"]
    assert aggregate["pooled_episodes"]["count"] == len(pooled) == 20
    assert "mean over 2 folds" in (run_dir / "results.md").read_text()
    assert "test accuracy over 2 folds" in result.stdout


@pytest.mark.smoke
def test_evaluations_run_after_training_into_the_run_directory(tmp_path, compose_config):
    from tests.test_protocols import write_lmbff

    write_lmbff(tmp_path, k=4, seeds=[13, 21])
    write_glue_lowres(tmp_path, compose_config)
    run_dir = tmp_path / "run"
    result = metanlp(
        "train",
        "debug=smoke",
        "evaluations=[['protocol=kshot','dataset=lmbff/sst2','dataset.k=4','dataset.seeds=[13,21]'],"
        "['protocol=glue_lowres','dataset=glue/lowres']]",
        f"paths.data_root={tmp_path}",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr
    kshot = json.loads(
        (run_dir / "eval" / "kshot_lmbff-sst2_dataset.k-4_dataset.seeds-13-21" / "results.json").read_text()
    )
    assert kshot["protocol"] == "kshot" and sorted(kshot["tasks"]["sst2"]["training_sets"]) == [
        "sst2-seed13",
        "sst2-seed21",
    ]
    lowres = json.loads((run_dir / "eval" / "glue_lowres_glue-lowres" / "results.json").read_text())
    assert list(lowres["tasks"]) == ["cola", "mrpc", "stsb", "wnli"] and lowres["checkpoint"].endswith("best.pt")
    assert lowres["tasks"]["cola"]["evaluation_split"] == "dev" and lowres["tasks"]["cola"]["support_examples"] == [24]
    listed = json.loads((run_dir / "results.json").read_text())["evaluations"]
    assert [e["name"] for e in listed] == [
        "kshot_lmbff-sst2_dataset.k-4_dataset.seeds-13-21",
        "glue_lowres_glue-lowres",
    ]
    text = (run_dir / "results.md").read_text()
    assert "## Evaluations after training" in text and "eval/glue_lowres_glue-lowres/results.md" in text
    table = (run_dir / "eval" / "glue_lowres_glue-lowres" / "results.md").read_text()
    assert "# Results: GLUE low-resource targets, dev splits" in table and "mrpc F1/acc mean" in table
    assert "| method | cola (MCC) | mrpc (F1/acc) | stsb (Pearson/Spearman) | wnli (acc) | average |" in result.stdout


BAD_EVALUATIONS = [
    ("evaluations=[['protocol=nope']]", "evaluations[0]=['protocol=nope']: protocol='nope' is not a known choice"),
    (
        "evaluations=[['protocol.k_shoot=3']]",
        "evaluations[0]=['protocol.k_shoot=3']: protocol.k_shoot is not a known key",
    ),
    ("evaluations=['protocol=kshot']", "evaluations=['protocol=kshot'] must be a list of override lists"),
    ("evaluations=[['checkpoint=x.pt']]", "evaluations[0]: 'checkpoint=x.pt' is not allowed"),
    ("protocol.folds=[1,2]", "protocol.folds=[1, 2] but dataset=chatterbot has no folds (no dataset.fold)"),
]


@pytest.mark.smoke
@pytest.mark.parametrize("override,message", BAD_EVALUATIONS, ids=[o for o, _ in BAD_EVALUATIONS])
def test_bad_evaluations_and_folds_stop_before_training_in_one_line(override, message, tmp_path):
    result = metanlp("train", "debug=smoke", override, f"hydra.run.dir={tmp_path}")
    assert result.returncode == 2, (result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], result.stderr
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.data
def test_real_glue_collections_have_the_published_tasks_and_sizes(compose_config):
    root = data_root()
    if root is None:
        pytest.skip("METANLP_DATA_ROOT is not set")
    lowres = build(
        compose_config("eval", ["checkpoint=x", "dataset=glue/lowres", f"paths.data_root={root}"]).dataset, "dataset"
    )
    sizes = {task.name: (len(task.train), len(task.dev)) for task in lowres.tasks}
    assert [task.name for task in lowres.phase_tasks("train")] == ["sst2", "mnli", "qnli", "qqp", "snli"]
    assert [task.name for task in lowres.phase_tasks("test")] == ["cola", "mrpc", "stsb", "wnli"]
    assert sizes["sst2"] == (67349, 872) and sizes["cola"] == (8551, 1043) and sizes["mrpc"] == (3668, 408)
    assert sizes["stsb"] == (5749, 1500) and sizes["wnli"] == (635, 71)
    assert all(sizes[name][0] == 8999 for name in ("mnli", "qnli", "qqp", "snli"))
    lmbff = build(
        compose_config("eval", ["checkpoint=x", "dataset=lmbff/glue", f"paths.data_root={root}"]).dataset, "dataset"
    )
    assert len(lmbff.tasks) == 25 and {task.group for task in lmbff.tasks} == {"sst2", "mrpc", "cola", "stsb", "qnli"}
    for task in lmbff.tasks:
        per_label = [16] if task.regression else sorted(set(task.train.examples_per_class().values()))
        assert (len(task.train) == 32) if task.regression else per_label == [16], task.name


def test_eval_overrides_add_and_remove_collection_entries(compose_config):
    """What `metanlp eval ... dataset=glue/lowres '+dataset/glue@dataset.tasks.extra=qqp' ...` builds."""
    from metanlp_cli.config import apply_overrides

    overrides = [
        "dataset=glue/lowres",
        "+dataset/glue@dataset.tasks.extra=qqp",
        "dataset.tasks.extra.name=extra",
        "~dataset.tasks.wnli",
        "dataset.target_tasks=[cola,extra]",
    ]
    composed = compose_config("eval", ["checkpoint=x", *overrides])
    saved = OmegaConf.create({"dataset": {"_target_": "metanlp_cli.data.builtin.chatterbot_topics"}, "seed": 0})
    dataset = apply_overrides(saved, composed, overrides, skip={"checkpoint"}).dataset
    assert list(dataset.tasks) == ["sst2", "mnli", "qnli", "qqp", "snli", "cola", "mrpc", "stsb", "extra"]
    assert dataset.tasks.extra.train_file == "glue_subsets/QQP/train.json" and dataset.tasks.extra.name == "extra"
    assert list(dataset.target_tasks) == ["cola", "extra"] and "glue" not in dataset


def test_predict_scores_token_ids_shortest_first_and_answers_in_the_rows_order():
    """Rows of like length share a chunk (a learner that cuts each chunk to its longest row pads little),
    and the predictions come back in the rows' order; cached float features keep their order."""
    from metanlp_cli.protocols.kshot import predict

    lengths = [5, 1, 3, 5, 2, 1, 4]
    inputs = torch.tensor(
        [[label + 1] * n + [0] * (5 - n) for label, n in zip([0, 1, 2, 0, 1, 2, 0], lengths, strict=True)]
    )
    chunks = []

    def learner(chunk: torch.Tensor) -> torch.Tensor:
        chunks.append(chunk)
        return nn.functional.one_hot(chunk[:, 0] - 1, 3).float() if not chunk.is_floating_point() else chunk

    torch.testing.assert_close(predict(learner, inputs, 3, False), inputs[:, 0] - 1)
    seen = [int((row != 0).sum()) for chunk in chunks for row in chunk]
    assert seen == sorted(lengths) and [len(chunk) for chunk in chunks] == [3, 3, 1]
    features = torch.tensor([[3.0], [1.0], [2.0]])
    torch.testing.assert_close(predict(learner, features, 2, True), torch.tensor([3.0, 1.0, 2.0]))
