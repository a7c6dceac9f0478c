"""Regression episodes (STS-B): sampling, the loss and each algorithm's regression math against hand
computations, Pearson scoring, learning a synthetic regression task, and every algorithm end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from metanlp_cli import CONFIG_DIR, train
from metanlp_cli.algorithms.anil import ANIL
from metanlp_cli.algorithms.base import LabelSpace, task_loss
from metanlp_cli.algorithms.finetune import FineTune
from metanlp_cli.algorithms.inner_loop import InnerLoop
from metanlp_cli.algorithms.maml import MAML
from metanlp_cli.algorithms.multitask import MultiTask
from metanlp_cli.algorithms.protomaml import ProtoMAML
from metanlp_cli.algorithms.protonet import ProtoNet
from metanlp_cli.backbones.cnn import WordCNN
from metanlp_cli.data.types import EncodedSplit, LabeledTexts
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.protocols import episode_score, episode_scores, score_name, scores_by_metric
from metanlp_cli.results import summary_line, write_results
from metanlp_cli.sampling import Batch, EpisodeSampler
from tests.conftest import KEYWORDS, VOCAB_SIZE, meta_train

NO_CLASSES = torch.zeros(0, dtype=torch.int64)


def regression_part(name: str, count: int, first_row: int) -> tuple[str, LabeledTexts, torch.Tensor]:
    """A regression task whose row i has token id first_row + i in every column and target i / 10."""
    texts = LabeledTexts([f"{name} {i}" for i in range(count)], [i / 10 for i in range(count)], [])
    return name, texts, torch.arange(first_row, first_row + count).unsqueeze(1).repeat(1, 5)


def classification_part(name: str, per_class: int, first_row: int) -> tuple[str, LabeledTexts, torch.Tensor]:
    labels = [0] * per_class + [1] * per_class
    texts = LabeledTexts([f"{name} {i}" for i in range(2 * per_class)], labels, ["a", "b"])
    return name, texts, torch.arange(first_row, first_row + 2 * per_class).unsqueeze(1).repeat(1, 5)


def test_a_regression_episode_has_n_k_support_and_n_q_query_rows_without_overlap():
    split = EncodedSplit.from_parts("train", [regression_part("sts", 200, 1)], fixed_tasks=True)
    sampler = EpisodeSampler(split, n_way=5, k_shot=3, q_query=4, seed=0)
    for index in range(10):
        episode = sampler.episode(index)
        assert episode.metric == "pearson" and episode.class_names == () and episode.support.is_regression
        assert len(episode.support) == 15 and len(episode.query) == 20 and len(episode.support.classes) == 0
        support, query = episode.support.inputs[:, 0].tolist(), episode.query.inputs[:, 0].tolist()
        assert len(set(support + query)) == 35  # distinct rows, none in both
        # each row's label is its own target: row with token id t (row t - 1) has target (t - 1) / 10
        expected = (episode.support.inputs[:, 0] - 1).float() / 10
        torch.testing.assert_close(episode.support.labels, expected)
    again, other = EpisodeSampler(split, 5, 3, 4, seed=0), EpisodeSampler(split, 5, 3, 4, seed=1)
    assert torch.equal(again.episode(7).query.inputs, sampler.episode(7).query.inputs)
    assert not torch.equal(other.episode(7).query.inputs, sampler.episode(7).query.inputs)


def test_a_small_regression_task_caps_its_query_and_a_too_small_one_is_a_clear_error():
    # 32 rows (an LM-BFF STS-B seed): 5 x 5 support rows leave 7, one query row per way: 5
    split = EncodedSplit.from_parts("train", [regression_part("sts", 32, 1)], fixed_tasks=True)
    sampler = EpisodeSampler(split, n_way=5, k_shot=5, q_query=15, seed=0)
    assert sampler.capped_query_sizes == {"sts": 1} and len(sampler.episode(0).query) == 5
    with pytest.raises(
        MetaNLPError, match=r"regression task 'sts' .* only 32 examples, .* n_way \* \(k_shot \+ 1\) = 35"
    ):
        EpisodeSampler(split, n_way=5, k_shot=6, q_query=15)


def test_a_mixed_collection_gives_each_task_episodes_of_its_own_kind():
    parts = [classification_part("cls", 20, 1), regression_part("sts", 60, 41)]
    split = EncodedSplit.from_parts("train", parts, fixed_tasks=True)
    sampler = EpisodeSampler(split, n_way=2, k_shot=3, q_query=4, seed=2)
    kinds = {"cls": 0, "sts": 0}
    for index in range(40):
        episode = sampler.episode(index)
        rows = episode.support.inputs[:, 0]
        if episode.support.is_regression:
            kinds["sts"] += 1
            assert (rows >= 41).all() and len(episode.support) == 6 and len(episode.query) == 8
        else:
            kinds["cls"] += 1
            assert (rows <= 40).all() and episode.class_names in (("cls/a", "cls/b"), ("cls/b", "cls/a"))
            assert episode.support.labels.dtype == torch.int64 and episode.metric == "accuracy"
    assert min(kinds.values()) > 10
    # the task is drawn first, as for any collection: episode i is still a function of (seed, i)
    rng = np.random.default_rng([2, 5])
    assert sampler.episode(5).support.is_regression == (int(rng.integers(2)) == 1)
    np.testing.assert_allclose(sampler.task_probabilities, [0.5, 0.5])
    proportional = EpisodeSampler(split, 2, 3, 4, task_weights="proportional")
    np.testing.assert_allclose(proportional.task_probabilities, [40 / 100, 60 / 100])


def test_task_loss_is_cross_entropy_for_classes_and_mse_for_targets():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = Batch(torch.zeros(2, 1), torch.tensor([0, 0]), torch.tensor([5, 6]))
    expected = -(math.log(math.exp(2) / (math.exp(2) + 1)) + math.log(1 / (1 + math.e))) / 2
    assert task_loss(logits, labels).item() == pytest.approx(expected)
    targets = Batch(torch.zeros(3, 1), torch.tensor([1.0, 2.0, 4.0]), NO_CLASSES)
    predictions = torch.tensor([[1.5], [2.0], [1.0]])
    assert task_loss(predictions, targets).item() == pytest.approx((0.25 + 0 + 9) / 3)


class Features(nn.Module):
    """Float inputs through a fixed linear map (float64): features we can compute by hand."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False, dtype=torch.float64)
        self.layer.weight.data.copy_(weight)
        self.output_dim = weight.shape[0]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.layer(inputs)


def regression_batches():
    generator = torch.Generator().manual_seed(0)
    support = Batch(torch.randn(6, 3, generator=generator, dtype=torch.float64), torch.rand(6).double() * 5, NO_CLASSES)
    query = Batch(torch.randn(4, 3, generator=generator, dtype=torch.float64), torch.rand(4).double() * 5, NO_CLASSES)
    return support, query


def test_maml_takes_an_mse_step_on_row_0_of_its_head():
    support, _ = regression_batches()
    torch.manual_seed(0)
    algo = MAML(Features(torch.eye(3)), LabelSpace(5, 5), inner_params="head", inner_train=InnerLoop(1, 0.05))
    algo.double().train()
    learner = algo.adapt(support)
    # by hand: L = mean((w.x + b - y)^2), dL/dw = 2/n sum (p - y) x, dL/db = 2/n sum (p - y)
    w, b = algo.model.head.weight[0].detach().numpy(), algo.model.head.bias[0].item()
    x, y = support.inputs.numpy(), support.labels.numpy()
    error = x @ w + b - y
    np.testing.assert_allclose(learner.parameters["head.weight"].detach().numpy(), [w - 0.05 * 2 * error @ x / 6])
    np.testing.assert_allclose(learner.parameters["head.bias"].detach().numpy(), [b - 0.05 * 2 * error.mean()])
    assert learner(support.inputs).shape == (6, 1)


def test_protonet_predicts_a_softmax_distance_weighted_mean_of_the_support_targets():
    support, query = regression_batches()
    for distance in ("euclidean", "cosine"):
        algo = ProtoNet(Features(torch.eye(3)), LabelSpace(5, 5), distance=distance)
        predictions = algo.adapt(support)(query.inputs).squeeze(-1)
        for x, prediction in zip(query.inputs.tolist(), predictions.tolist(), strict=True):
            if distance == "euclidean":
                scores = [-sum((a - c) ** 2 for a, c in zip(x, s, strict=True)) for s in support.inputs.tolist()]
            else:
                scores = [10 * np.dot(x, s) / np.linalg.norm(x) / np.linalg.norm(s) for s in support.inputs.tolist()]
            weights = np.exp(np.array(scores) - max(scores))
            assert prediction == pytest.approx(weights @ support.labels.numpy() / weights.sum())


def test_protomaml_starts_a_regression_head_at_zero_weight_and_the_mean_target():
    support, query = regression_batches()
    algo = ProtoMAML(Features(torch.randn(3, 3, dtype=torch.float64)), LabelSpace(5, 5), inner_train=InnerLoop(0, 0.1))
    start = algo.adapt(support)(query.inputs)
    torch.testing.assert_close(start, torch.full((4, 1), support.labels.mean().item(), dtype=torch.float64))
    one_step = ProtoMAML(algo.encoder, LabelSpace(5, 5), inner_train=InnerLoop(1, 0.1)).adapt(support)
    features = algo.encoder(support.inputs)
    error = support.labels.mean() - support.labels  # the start predicts the mean
    torch.testing.assert_close(one_step.parameters["head.weight"], -0.1 * 2 * (error @ features / 6).unsqueeze(0))


def test_the_supervised_baselines_train_one_regression_output_after_the_classes():
    support, query = regression_batches()
    space = LabelSpace(n_way=2, num_train_classes=4, regression=True)
    torch.manual_seed(0)
    finetune = FineTune(Features(torch.eye(3)), space).double()
    assert finetune.model.head.out_features == 5
    finetune.train()
    inputs, targets = torch.cat([support.inputs, query.inputs]), torch.cat([support.labels, query.labels])
    expected = F.mse_loss(finetune.model(inputs)[:, 4], targets)
    torch.testing.assert_close(finetune.meta_loss(finetune.adapt(support), query), expected)
    # a classification episode is scored over the 4 class logits only, not the regression output
    classes = torch.tensor([1, 3])
    class_support = Batch(support.inputs[:4], torch.tensor([0, 0, 1, 1]), classes)
    class_query = Batch(query.inputs[:2], torch.tensor([1, 0]), classes)
    logits = finetune.model(torch.cat([class_support.inputs, class_query.inputs]))[:, :4]
    expected = F.cross_entropy(logits, torch.tensor([1, 1, 3, 3, 3, 1]))
    torch.testing.assert_close(finetune.meta_loss(finetune.adapt(class_support), class_query), expected)
    regression_only = MultiTask(Features(torch.eye(3)), LabelSpace(2, 0, regression=True)).double()
    regression_only.train()
    assert regression_only.meta_loss(regression_only.adapt(support), query).item() > 0
    finetune.eval()  # adaptation: a fresh 1-output head on the frozen features, bias from the mean target
    probe = finetune.adapt(support)
    assert probe(query.inputs).shape == (4, 1) and probe.weight.shape == (1, 3)


def test_a_regression_episode_is_scored_with_its_metric_and_a_constant_prediction_scores_0():
    query = Batch(torch.zeros(5, 1), torch.tensor([0.0, 1.0, 2.0, 4.0, 3.0]), NO_CLASSES)
    predictions = torch.tensor([[0.1], [1.5], [1.0], [3.0], [3.5]])
    expected = stats.pearsonr(predictions.squeeze(-1).numpy(), query.labels.numpy()).statistic
    assert episode_score(predictions, query, "pearson") == pytest.approx(expected)
    # ranks 1 3 2 4 5 against 1 2 3 5 4: 1 - 6 sum d^2 / (n (n^2 - 1)) = 1 - 6 * 4 / 120
    assert episode_score(predictions, query, "spearman") == pytest.approx(0.8)
    assert episode_score(torch.ones(5, 1), query, "pearson") == 0.0
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert (
        episode_score(logits, Batch(torch.zeros(2, 1), torch.tensor([0, 0]), torch.tensor([0, 1])), "accuracy") == 0.5
    )


def level_split(name: str, examples: int, seed: int) -> EncodedSplit:
    """An STS-B-like regression task on token ids: the keywords form 6 levels of 4; a sentence holds 2
    keywords of one level among noise words, and its target is the level (0-5) plus noise."""
    rng = np.random.default_rng(seed)
    rows, targets = [], []
    for _ in range(examples):
        level = int(rng.integers(6))
        sentence = rng.integers(3 + KEYWORDS, VOCAB_SIZE, size=12)
        sentence[rng.choice(12, size=2, replace=False)] = 3 + 4 * level + rng.choice(4, size=2, replace=False)
        rows.append(sentence)
        targets.append(level + rng.uniform(-0.3, 0.3))
    texts = LabeledTexts([""] * examples, targets, [])
    return EncodedSplit.from_parts(name, [(name, texts, torch.as_tensor(np.stack(rows)))], fixed_tasks=True)


LEARNERS = {
    "protonet": (ProtoNet, {}),
    "maml": (MAML, {"inner_train": InnerLoop(2, 0.01), "inner_eval": InnerLoop(5, 0.01)}),
    "anil": (ANIL, {"inner_train": InnerLoop(2, 0.01), "inner_eval": InnerLoop(5, 0.01)}),
}


@pytest.mark.parametrize("name", LEARNERS)
def test_a_learner_learns_a_regression_task_far_above_pearson_0(name):
    algorithm, kwargs = LEARNERS[name]
    torch.manual_seed(0)
    encoder = WordCNN(VOCAB_SIZE, embedding_dim=32, filter_sizes=[1, 2], num_filters=16, dropout=0.0)
    algo = algorithm(encoder, LabelSpace(5, 0, regression=True), **kwargs)
    sampler = EpisodeSampler(level_split("train", 400, seed=1), n_way=5, k_shot=4, q_query=4, seed=0)
    test_episodes = EpisodeSampler(level_split("test", 200, seed=2), 5, 4, 4, seed=99).episodes(20)
    assert score_name(test_episodes) == "pearson"
    before = np.mean(episode_scores(algo, test_episodes, torch.device("cpu"), progress=False))
    meta_train(algo, sampler, steps=100, lr=3e-3)
    after = np.mean(episode_scores(algo, test_episodes, torch.device("cpu"), progress=False))
    assert before < 0.6 and after > 0.8, (name, before, after)


ALGOS = sorted(p.stem for p in (CONFIG_DIR / "algo").glob("*.yaml"))
SMALL_CNN = ["backbone.encoder.embedding_dim=16", "backbone.encoder.num_filters=8"]
# The MSE inner loop diverges at the classification rates when it adapts the whole CNN (README, Regression).
SMALLER_RATES = {
    "maml": ["algo.inner_train.lr=0.01", "algo.inner_eval.lr=0.01"],
    "fomaml": ["algo.inner_train.lr=0.01", "algo.inner_eval.lr=0.01"],
    "metasgd": ["algo.init_lr=0.01"],
}


@pytest.fixture(scope="module")
def stsb_like_root(tmp_path_factory):
    """A GLUE STS-B-shaped folder: sentence pairs in glue/STS-B/{train,dev}.tsv with 0-5 scores."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "glue" / "STS-B"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    words = ["cat", "dog", "car", "sun", "tree", "sea"]
    for split, count in (("train", 150), ("dev", 120)):
        lines = ["sentence1\tsentence2\tscore"]
        for _ in range(count):
            a, b = rng.choice(words, 3), rng.choice(words, 3)
            lines.append(f"a {' '.join(a)}\tthe {' '.join(b)}\t{5 * len(set(a) & set(b)) / 3:.2f}")
        (folder / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


# Methods that only score classes: they refuse a regression task in one line instead.
NO_REGRESSION_PATH = {"relation", "induction", "metanet", "setfit"}


@pytest.mark.parametrize("algo", ALGOS)
def test_every_algorithm_trains_and_tests_on_a_regression_task(algo, stsb_like_root, compose_config, tmp_path):
    overrides = [f"algo={algo}", "dataset=glue/stsb", f"paths.data_root={stsb_like_root}", "debug=smoke"]
    cfg = compose_config("train", [*overrides, "paths.cache_dir=null", *SMALL_CNN, *SMALLER_RATES.get(algo, [])])
    if algo in NO_REGRESSION_PATH:
        with pytest.raises(MetaNLPError, match=f"algo={algo} (scores classes and )?has no regression path"):
            train.run(cfg, tmp_path, {"algo": algo, "backbone": "cnn", "dataset": "glue/stsb"})
        return
    best_val = train.run(cfg, tmp_path, {"algo": algo, "backbone": "cnn", "dataset": "glue/stsb"})
    results = json.loads((tmp_path / "results.json").read_text())
    assert -1.0 <= best_val <= 1.0 and results["best_val_pearson"] == best_val
    assert "accuracy" not in results and "chance" not in results
    assert results["pearson"]["count"] == 10 and len(results["episode_pearson"]) == 10
    assert all(-1.0 <= score <= 1.0 for score in results["episode_pearson"])
    assert "val_pearson" in (tmp_path / "metrics.jsonl").read_text()


def test_diverged_regression_predictions_are_a_clear_error_not_a_score_of_0():
    query = Batch(torch.zeros(3, 1), torch.tensor([0.0, 1.0, 2.0]), NO_CLASSES)
    with pytest.raises(MetaNLPError, match="predictions are not finite: the MSE inner loop diverged; lower algo"):
        episode_score(torch.tensor([[1.0], [math.inf], [2.0]]), query, "pearson")


def test_the_validation_score_is_named_after_its_metric_or_score_where_kinds_mix():
    parts = [classification_part("cls", 20, 1), regression_part("sts", 60, 41)]
    split = EncodedSplit.from_parts("val", parts, fixed_tasks=True)
    episodes = EpisodeSampler(split, n_way=2, k_shot=3, q_query=4, seed=2).episodes(20)
    assert score_name(episodes) == "score"
    assert score_name([e for e in episodes if e.metric == "accuracy"]) == "accuracy"
    assert score_name([e for e in episodes if e.metric == "pearson"]) == "pearson"


def test_results_name_each_metric_and_count_chance_over_the_classification_episodes_only(tmp_path):
    parts = [classification_part("cls", 20, 1), regression_part("sts", 60, 41)]
    split = EncodedSplit.from_parts("test", parts, fixed_tasks=True)
    episodes = EpisodeSampler(split, n_way=5, k_shot=2, q_query=3, seed=2).episodes(20)
    metrics = [e.metric for e in episodes]
    scores = [0.5 if metric == "accuracy" else 0.25 for metric in metrics]
    results = {"split": "test", "n_way": 2, "k_shot": 2, "q_query": 3, "episodes": 20}
    results.update(scores_by_metric(episodes, scores), dataset="d", algo="a", backbone="b")
    count = metrics.count("pearson")
    assert 2 <= count <= 18 and results["chance"] == 0.5  # 2-way classification episodes only
    assert results["episode_pearson"] == [0.25] * count and results["episode_accuracies"] == [0.5] * (20 - count)
    assert results["regression_examples"] == {"support": [10], "query": [15]}  # N = 5 for a regression task
    classification = f"test accuracy 50.00 +/- 0.00 (95% CI, {20 - count} episodes, 2-way 2-shot, chance 50.0)"
    regression = f"test pearson 25.00 +/- 0.00 (95% CI, {count} regression episodes, 10 support / 15 query examples"
    assert summary_line(results) == f"{classification}; {regression}, chance 0.0)"
    write_results(tmp_path, results)
    row = f"| d | a | b | {count} | 10 support / 15 query examples | 25.00 +/- 0.00 |"
    assert row in (tmp_path / "results.md").read_text()
