"""dataset=sib200: a task per language, K-shot samples that are the same sentences in every language, zero-shot
transfer's English train split, and one-line errors for a missing language or split."""

from __future__ import annotations

import pytest

from metanlp_cli.config import build
from metanlp_cli.data.duplicates import dataset_node
from metanlp_cli.data.sib200 import sib200_index_ids, sib200_tasks
from metanlp_cli.errors import MetaNLPError
from tests.conftest import data_root

TOPICS = ["travel", "sports", "health"]
# index_id -> (topic, English text); the other language is the same rows in another order, "translated".
ROWS = {i: (TOPICS[i % 3], f"sentence number {i} about {TOPICS[i % 3]}") for i in range(30)}


@pytest.fixture
def sib_root(tmp_path):
    """Two parallel languages, 30 train rows (10 per topic), 6 dev and 6 test rows; German rows reversed."""
    for language, word, order in (("eng_Latn", "", 1), ("deu_Latn", "Satz ", -1)):
        folder = tmp_path / "sib200" / language
        folder.mkdir(parents=True)
        (folder / "labels.txt").write_text("\n".join(TOPICS) + "\n")
        for split, ids in (("train", range(30)), ("dev", range(6)), ("test", range(6))):
            lines = [f"{i}\t{ROWS[i][0]}\t{word}{ROWS[i][1]}" for i in list(ids)[::order]]
            (folder / f"{split}.tsv").write_text("index_id\tcategory\ttext\n" + "\n".join(lines) + "\n")
    return tmp_path


def index_ids_of(texts: list[str], root, language: str) -> list[int]:
    """Which index ids a task's train texts are (each text is unique in its language)."""
    task = sib200_tasks(str(root), language=language)
    ids = sib200_index_ids(str(root), language, "train")
    position = {text: int(i) for text, i in zip(task.tasks[0].train.texts, ids, strict=True)}
    return [position[text] for text in texts]


def test_one_language_is_one_task_with_its_three_splits(sib_root):
    collection = sib200_tasks(str(sib_root), language="deu_Latn")
    (task,) = collection.tasks
    assert task.name == "deu_Latn" and (len(task.train), len(task.dev), len(task.test)) == (30, 6, 6)
    assert task.label_names == TOPICS and task.train.texts[0] == "Satz sentence number 29 about health"


def test_k_shot_samples_are_the_same_index_ids_in_every_language_for_each_seed(sib_root):
    collection = sib200_tasks(str(sib_root), languages=["eng_Latn", "deu_Latn"], k=2, seeds=[1, 2, 3])
    assert [t.name for t in collection.tasks][:3] == ["eng_Latn-k2-seed1", "eng_Latn-k2-seed2", "eng_Latn-k2-seed3"]
    assert {t.group for t in collection.tasks} == {"eng_Latn", "deu_Latn"}
    samples = {}
    for task in collection.tasks:
        language, seed = task.group, task.name.rsplit("seed", 1)[1]
        samples[language, seed] = index_ids_of(task.train.texts, sib_root, language)
        assert sorted(task.train.examples_per_class().values()) == [2, 2, 2] and len(task.test) == 6
    for seed in ("1", "2", "3"):
        assert samples["eng_Latn", seed] == samples["deu_Latn", seed]
    assert samples["eng_Latn", "1"] != samples["eng_Latn", "2"]


def test_train_language_adapts_in_english_and_scores_the_other_language(sib_root):
    collection = sib200_tasks(str(sib_root), languages=["eng_Latn", "deu_Latn"], train_language="eng_Latn")
    german = collection.task("deu_Latn")
    assert german.train.source.endswith("eng_Latn/train.tsv") and german.dev.source.endswith("eng_Latn/dev.tsv")
    assert german.test.source.endswith("deu_Latn/test.tsv")


def test_a_missing_language_or_split_is_one_line_naming_it(sib_root):
    with pytest.raises(MetaNLPError, match=r"language 'fra_Latn' is not in .*; allowed: deu_Latn, eng_Latn$"):
        sib200_tasks(str(sib_root), languages=["eng_Latn", "fra_Latn"])
    (sib_root / "sib200" / "deu_Latn" / "test.tsv").unlink()
    with pytest.raises(MetaNLPError, match=r"language 'deu_Latn' has no test split \(.*test.tsv not found\)") as error:
        sib200_tasks(str(sib_root), language="deu_Latn")
    assert "\n" not in str(error.value)
    with pytest.raises(MetaNLPError, match=r"dataset.target_languages: 'fra_Latn' is not in dataset.languages"):
        sib200_tasks(str(sib_root), languages=["eng_Latn"], target_languages=["fra_Latn"])
    with pytest.raises(MetaNLPError, match=r"dataset.k=11 but topic 0 has 10 train examples"):
        sib200_tasks(str(sib_root), k=11)


def test_languages_that_are_not_parallel_are_refused(sib_root):
    path = sib_root / "sib200" / "deu_Latn" / "train.tsv"
    path.write_text(path.read_text().replace("\n29\thealth", "\n31\thealth"))
    with pytest.raises(MetaNLPError, match=r"the train splits of eng_Latn and deu_Latn do not hold the same index_id"):
        sib200_tasks(str(sib_root), languages=["eng_Latn", "deu_Latn"])


def test_the_config_composes_with_a_list_of_languages(sib_root, compose_config):
    overrides = [f"paths.data_root={sib_root}", "dataset=sib200", "dataset.languages=[eng_Latn,deu_Latn]"]
    cfg = compose_config("train", [*overrides, "dataset.k=1", "dataset.target_languages=[deu_Latn]"])
    collection = build(dataset_node(cfg.dataset)[0], "dataset")  # without train.yaml's `dataset.dedupe`
    assert len(collection.tasks) == 10 and collection.target_tasks == [f"deu_Latn-k1-seed{s}" for s in range(1, 6)]


@pytest.mark.data
@pytest.mark.skipif(data_root() is None, reason="METANLP_DATA_ROOT is not set")
def test_the_real_sib200_is_parallel_in_its_12_languages():
    languages = sorted(p.name for p in (data_root() / "sib200").iterdir() if p.is_dir())
    assert len(languages) == 12
    collection = sib200_tasks(str(data_root()), languages=languages, k=4, seeds=[1, 2])
    first = {t.name.split("-", 1)[1]: index_ids_of(t.train.texts, data_root(), t.group) for t in collection.tasks[:2]}
    for task in collection.tasks[2:]:
        assert index_ids_of(task.train.texts, data_root(), task.group) == first[task.name.split("-", 1)[1]]
    assert (len(collection.tasks[0].dev), len(collection.tasks[0].test)) == (99, 204)
