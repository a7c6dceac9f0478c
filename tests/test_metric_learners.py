"""Matching, Relation and Induction Networks, the meta network and the ridge head: their math on tiny float64
inputs against hand computations, the fixed-encoder view, the k-shot protocol, regression, and learning."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from torch import nn
from torch.func import functional_call

from benchmarks import bench_metric_learners
from benchmarks.bench_metric_learners import PretrainedWorkload, build_pretrained_workload
from benchmarks.workloads import Timing, Workload, meta_train_step
from metanlp_cli import CONFIG_DIR, evaluate, train
from metanlp_cli.algorithms.base import LabelSpace, task_loss
from metanlp_cli.algorithms.induction import Induction, NeuralTensorRelation, dynamic_routing, squash
from metanlp_cli.algorithms.inner_loop import InnerLoop
from metanlp_cli.algorithms.matching import Matching
from metanlp_cli.algorithms.metanet import MetaNet, WeightGenerator, zero_head_gradients
from metanlp_cli.algorithms.metric_learner import MetricLearner
from metanlp_cli.algorithms.protonet import FeatureInputs
from metanlp_cli.algorithms.relation import Relation, RelationModule
from metanlp_cli.algorithms.ridge import Ridge, ridge_solution
from metanlp_cli.backbones.cnn import WordCNN
from metanlp_cli.data.types import EncodedSplit
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.protocols import KShotProtocol, KShotTask, KShotTasks, episode_scores, fixed_encoder_view
from metanlp_cli.sampling import Batch, EpisodeSampler
from tests import test_pretrained
from tests.conftest import VOCAB_SIZE, meta_train
from tests.test_algorithms import assert_matches_finite_differences
from tests.test_glue_protocols import write_glue_lowres
from tests.test_protocols import write_arsc, write_lmbff

SPACE = LabelSpace(n_way=2, num_train_classes=4)
NO_CLASSES = torch.zeros(0, dtype=torch.long)
tiny_bert = test_pretrained.tiny_bert  # the fixture: a random 2-layer BERT in a temporary directory


def feature_batches(dim: int = 3, shots: int = 2, queries: int = 3, seed: int = 0) -> tuple[Batch, Batch]:
    """A 2-way episode of float64 features (the inputs of `FeatureInputs`, the identity encoder)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(2).repeat_interleave(shots)
    support = Batch(torch.randn(2 * shots, dim, generator=generator, dtype=torch.float64), labels, torch.tensor([4, 7]))
    query_labels = torch.arange(2).repeat_interleave(queries)
    query = Batch(
        torch.randn(2 * queries, dim, generator=generator, dtype=torch.float64), query_labels, support.classes
    )
    return support, query


def on_features(algorithm, dim: int = 3, **kwargs):
    torch.manual_seed(0)
    return algorithm(FeatureInputs(dim), SPACE, **kwargs).double()


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


# Matching Networks


def test_matching_attention_is_the_softmax_of_scaled_cosines_summed_per_class():
    support, query = feature_batches()
    algo = on_features(Matching, scale=5.0)
    probabilities = algo.adapt(support)(query.inputs).exp()
    for row, x in enumerate(query.inputs.tolist()):
        weights = [math.exp(5.0 * cosine(x, s)) for s in support.inputs.tolist()]
        expected = [sum(w for w, y in zip(weights, support.labels.tolist(), strict=True) if y == c) for c in (0, 1)]
        assert probabilities[row].tolist() == pytest.approx([e / sum(weights) for e in expected], rel=1e-12)
    nll = -sum(math.log(probabilities[i, y].item()) for i, y in enumerate(query.labels.tolist())) / len(query)
    assert algo.meta_loss(algo.adapt(support), query).item() == pytest.approx(nll, rel=1e-12)


def test_matching_full_context_embeddings_follow_the_paper_recurrence():
    support, query = feature_batches()
    algo = on_features(Matching, scale=1.0, full_context_embeddings=True, processing_steps=2)
    context = algo.head.context
    states, _ = context.support_lstm(support.inputs.unsqueeze(0))
    g = support.inputs + states[0, :, :3] + states[0, :, 3:]  # g'(x_i) + forward + backward states
    f_prime = query.inputs
    hidden, cell = context.query_lstm(f_prime)  # step 1 from zero state and zero read
    hidden = hidden + f_prime
    read = torch.softmax(hidden @ g.T, dim=1) @ g
    hidden, cell = context.query_lstm(f_prime, (hidden + read, cell))
    hidden = hidden + f_prime
    scores = F.normalize(hidden, dim=1) @ F.normalize(g, dim=1).T
    expected = torch.stack([scores.softmax(1)[:, support.labels == c].sum(1) for c in (0, 1)], dim=1)
    torch.testing.assert_close(algo.adapt(support)(query.inputs).exp(), expected)


def test_matching_predicts_a_regression_target_as_the_attention_weighted_support_mean():
    support, query = feature_batches()
    targets = Batch(support.inputs, torch.tensor([0.5, 1.0, 3.0, 4.0], dtype=torch.float64), NO_CLASSES)
    predictions = on_features(Matching, scale=2.0).adapt(targets)(query.inputs)
    assert predictions.shape == (len(query), 1)
    for row, x in enumerate(query.inputs.tolist()):
        weights = [math.exp(2.0 * cosine(x, s)) for s in support.inputs.tolist()]
        expected = sum(w * y for w, y in zip(weights, targets.labels.tolist(), strict=True)) / sum(weights)
        assert predictions[row, 0].item() == pytest.approx(expected, rel=1e-12)


# Relation Networks


def test_relation_scores_are_the_sigmoid_of_the_module_on_query_and_class_mean_by_hand():
    algo = on_features(Relation, dim=2, hidden_size=2, aggregation="mean")
    first, second = algo.head.relation.layers[0], algo.head.relation.layers[2]
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 0.0, 1.0]]))
        first.bias.copy_(torch.tensor([0.0, -0.5]))
        second.weight.copy_(torch.tensor([[2.0, -1.0]]))
        second.bias.copy_(torch.tensor([0.5]))
    support = Batch(torch.tensor([[1.0, 0.0], [3.0, 2.0], [-1.0, 1.0]], dtype=torch.float64), torch.tensor([0, 0, 1]),
                    torch.tensor([0, 1]))  # fmt: skip
    query = Batch(torch.tensor([[1.0, 2.0]], dtype=torch.float64), torch.tensor([1]), support.classes)
    logits = algo.adapt(support)(query.inputs)
    # class 0: mean (2, 1): h = relu(1 - 2, 2 + 1 - 0.5) = (0, 2.5) -> 2 * 0 - 2.5 + 0.5 = -2.0
    # class 1: mean (-1, 1): h = relu(1 + 1, 2 + 1 - 0.5) = (2, 2.5) -> 4 - 2.5 + 0.5 = 2.0
    assert logits.tolist() == [[-2.0, 2.0]]
    scores = [1 / (1 + math.exp(2.0)), 1 / (1 + math.exp(-2.0))]
    mse = scores[0] ** 2 + (scores[1] - 1) ** 2  # summed over classes, averaged over queries
    assert algo.meta_loss(algo.adapt(support), query).item() == pytest.approx(mse, rel=1e-12)
    # The paper's sum of the class's embeddings: class 0 is (4, 2): h = relu(1 - 4, 2 + 2 - 0.5) = (0, 3.5)
    algo.head.aggregation = "sum"
    assert algo.adapt(support)(query.inputs)[0, 0].item() == pytest.approx(-3.5 + 0.5)
    cross_entropy = on_features(Relation, dim=2, hidden_size=2, loss="cross_entropy")
    cross_entropy.head.relation.load_state_dict(algo.head.relation.state_dict())
    assert cross_entropy.meta_loss(cross_entropy.adapt(support), query).item() == pytest.approx(
        F.cross_entropy(logits, query.labels).item()
    )


def test_the_relation_module_starts_as_the_negative_euclidean_distance():
    torch.manual_seed(0)
    module = RelationModule(dim=4, hidden_size=40000).double()
    queries, classes = torch.randn(3, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(module(queries, classes), -torch.cdist(queries, classes), rtol=0.03, atol=0.0)


# Induction Networks


def routing_by_hand(vectors: list[list[float]], iterations: int) -> list[float]:
    """Algorithm 1 of Geng et al. (2019) for one class, written out on lists."""

    def squash_list(v):
        squared = sum(x * x for x in v)
        return [squared / (1 + squared) * x / math.sqrt(squared) for x in v]

    logits = [0.0] * len(vectors)
    for _ in range(iterations):
        coupling = [math.exp(b) / sum(math.exp(c) for c in logits) for b in logits]
        c = squash_list([sum(d * v[k] for d, v in zip(coupling, vectors, strict=True)) for k in range(len(vectors[0]))])
        logits = [b + sum(x * y for x, y in zip(v, c, strict=True)) for b, v in zip(logits, vectors, strict=True)]
    return c


def test_squash_keeps_the_direction_and_maps_the_norm_below_1():
    assert squash(torch.tensor([3.0, 4.0])).tolist() == pytest.approx([25 / 26 * 0.6, 25 / 26 * 0.8])


def test_dynamic_routing_matches_the_paper_algorithm_by_hand_for_uneven_classes():
    predictions = torch.tensor([[0.6, 0.0], [0.0, 0.3], [0.5, 0.5], [0.2, -0.4], [0.1, 0.1]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 0, 1])  # 3 examples of class 0, 2 of class 1
    # One iteration: the plain mean, squashed. Class 0: (0.8, -0.1) / 3, norm^2 0.65 / 9.
    mean = [0.8 / 3, -0.1 / 3]
    squared = 0.65 / 9
    one = [squared / (1 + squared) * x / math.sqrt(squared) for x in mean]
    assert dynamic_routing(predictions, labels, 2, iterations=1)[0].tolist() == pytest.approx(one, rel=1e-12)
    for iterations in (2, 3):
        routed = dynamic_routing(predictions, labels, 2, iterations)
        for c in (0, 1):
            expected = routing_by_hand(predictions[labels == c].tolist(), iterations)
            assert routed[c].tolist() == pytest.approx(expected, rel=1e-12)


def test_neural_tensor_relation_scores_by_hand():
    relation = NeuralTensorRelation(dim=2, slices=2).double()
    with torch.no_grad():
        slices = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 0.0]]])  # M_1, M_2
        relation.tensor.copy_(slices.permute(1, 0, 2))  # stored as [dim, slices, dim]
        relation.output.weight.copy_(torch.tensor([[1.0, -2.0]]))
        relation.output.bias.fill_(0.1)
    classes = torch.tensor([[0.5, 0.2], [-0.5, 0.2]], dtype=torch.float64)
    queries = torch.tensor([[1.0, 3.0]], dtype=torch.float64)
    # class 0: c^T M_1 q = 0.5 + 0.6 = 1.1, c^T M_2 q = c_0 q_1 = 1.5 -> 1.1 - 3.0 + 0.1 = -1.8
    # class 1: c^T M_1 q = -0.5 + 0.6 = 0.1, c^T M_2 q = -1.5, relu 0 -> 0.1 + 0.1 = 0.2
    assert relation(queries, classes)[0].tolist() == pytest.approx([-1.8, 0.2], rel=1e-12)


def test_induction_scores_queries_against_routed_class_vectors_of_centred_embeddings():
    support, query = feature_batches()
    algo = on_features(Induction, routing_iterations=2, relation_slices=4)
    head = algo.head
    center = support.inputs.mean(0)
    routed = dynamic_routing(squash(head.transform(support.inputs - center)), support.labels, 2, 2)
    expected = head.relation(query.inputs - center, routed)
    torch.testing.assert_close(algo.adapt(support)(query.inputs), expected)
    mse = ((torch.sigmoid(expected) - F.one_hot(query.labels, 2)) ** 2).sum(1).mean()
    torch.testing.assert_close(algo.meta_loss(algo.adapt(support), query), mse)


# The meta network


def test_zero_head_gradients_are_the_autograd_gradients_of_the_support_loss():
    support, _ = feature_batches(shots=3)
    weight = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    loss = task_loss(F.linear(support.inputs, weight, bias), support)
    weight_gradient, bias_gradient = torch.autograd.grad(loss, [weight, bias])
    expected = torch.cat([weight_gradient, bias_gradient.unsqueeze(1)], dim=1)
    torch.testing.assert_close(zero_head_gradients(support.inputs, support.labels, 2), expected)


@pytest.mark.parametrize("layers,use_gradients", [(1, False), (2, True), (3, True)])
def test_generated_weights_have_the_gradient_of_finite_differences(layers, use_gradients):
    support, _ = feature_batches(shots=3)
    torch.manual_seed(0)
    generator = WeightGenerator(3, layers, use_gradients).double()
    for parameter in generator.parameters():  # the zero-initialised last layer would hide the hidden layers
        nn.init.normal_(parameter, std=0.5)
    names = [name for name, _ in generator.named_parameters()]

    def generated(features, *parameters):
        head = functional_call(generator, dict(zip(names, parameters, strict=True)), (features, support.labels, 2))
        return head["head.weight"], head["head.bias"]

    inputs = (
        support.inputs.clone().requires_grad_(),
        *[p.detach().clone().requires_grad_() for p in generator.parameters()],
    )
    assert torch.autograd.gradcheck(generated, inputs)


def test_metanet_meta_gradient_through_second_order_head_steps_matches_finite_differences():
    support, query = feature_batches(shots=3)
    algo = on_features(MetaNet, inner_train=InnerLoop(2, 0.5), inner_eval=InnerLoop(2, 0.5))
    for parameter in algo.parameters():
        nn.init.normal_(parameter, std=0.5)
    assert_matches_finite_differences(algo, support, query)


def test_metanet_head_steps_are_plain_sgd_on_the_generated_head():
    support, query = feature_batches(shots=3)
    algo = on_features(MetaNet, inner_train=InnerLoop(0, 0.5), inner_eval=InnerLoop(3, 0.5)).eval()
    head = algo.head.generator(support.inputs, support.labels, 2)
    weight, bias = head["head.weight"].detach().clone(), head["head.bias"].detach().clone()
    for _ in range(3):
        weight.requires_grad_(), bias.requires_grad_()
        loss = F.cross_entropy(F.linear(support.inputs, weight, bias), support.labels)
        gradients = torch.autograd.grad(loss, [weight, bias])
        weight, bias = (weight - 0.5 * gradients[0]).detach(), (bias - 0.5 * gradients[1]).detach()
    torch.testing.assert_close(algo.adapt(support)(query.inputs), F.linear(query.inputs, weight, bias))
    algo.train()  # 0 steps while meta-training: the generated head itself, which starts as the class means
    means = torch.stack([support.inputs[support.labels == c].mean(0) for c in (0, 1)])
    fresh = on_features(MetaNet, inner_train=InnerLoop(0, 0.5))
    torch.testing.assert_close(fresh.adapt(support)(query.inputs), query.inputs @ means.T)


def test_metanet_refuses_an_inner_loop_mode_it_cannot_honour():
    with pytest.raises(ValueError, match="inner_train.mode='train': metanet adapts the head only; allowed: inherit"):
        MetaNet(FeatureInputs(3), SPACE, inner_train=InnerLoop(1, 0.1, mode="train"))


# Ridge regression


@pytest.mark.parametrize("examples,dim", [(4, 6), (8, 3)], ids=["dual", "primal"])
def test_ridge_solution_is_the_normal_equations_solution_in_both_forms(examples, dim):
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(examples, dim, generator=generator, dtype=torch.float64)
    targets = torch.randn(examples, 2, generator=generator, dtype=torch.float64)
    penalty = torch.tensor(0.7, dtype=torch.float64)
    primal = torch.linalg.solve(features.T @ features + 0.7 * torch.eye(dim, dtype=torch.float64), features.T @ targets)
    dual = features.T @ torch.linalg.solve(
        features @ features.T + 0.7 * torch.eye(examples, dtype=torch.float64), targets
    )
    torch.testing.assert_close(primal, dual)  # Woodbury: the two forms are one solution
    torch.testing.assert_close(ridge_solution(features, targets, penalty), primal)
    inputs = (features.requires_grad_(), targets, penalty.requires_grad_())
    assert torch.autograd.gradcheck(ridge_solution, inputs)


def test_ridge_logits_are_the_scaled_ridge_predictions_of_the_one_hot_labels():
    support, query = feature_batches(dim=6)
    algo = on_features(Ridge, dim=6, init_lambda=0.5, init_scale=3.0)
    with torch.no_grad():
        algo.head.bias.fill_(0.25)
    one_hot = F.one_hot(support.labels, 2).double()
    weights = torch.linalg.solve(support.inputs.T @ support.inputs + 0.5 * torch.eye(6, dtype=torch.float64),
                                 support.inputs.T @ one_hot)  # fmt: skip
    torch.testing.assert_close(algo.adapt(support)(query.inputs), 3.0 * query.inputs @ weights + 0.25)
    algo.meta_loss(algo.adapt(support), query).backward()
    assert all(p.grad is not None and p.grad != 0 for p in algo.parameters())  # lambda, scale and bias learn


def test_ridge_regression_fits_an_unpenalised_intercept():
    support, query = feature_batches(dim=3, shots=4)
    targets = torch.linspace(-1.0, 2.0, len(support), dtype=torch.float64)
    algo = on_features(Ridge, init_lambda=0.3, init_scale=1.0)
    predictions = algo.adapt(Batch(support.inputs, targets, NO_CLASSES))(query.inputs)
    design = torch.cat([support.inputs, torch.ones(len(support), 1, dtype=torch.float64)], dim=1)
    penalty = torch.diag(torch.tensor([0.3, 0.3, 0.3, 0.0], dtype=torch.float64))  # the intercept is not penalised
    solution = torch.linalg.solve(design.T @ design + penalty, design.T @ targets)
    expected = torch.cat([query.inputs, torch.ones(len(query), 1, dtype=torch.float64)], dim=1) @ solution
    torch.testing.assert_close(predictions.squeeze(1), expected)


# Every new algorithm: fixed-encoder evaluation, the k-shot protocols, regression, mixed N, learning

NEW = {
    "matching": (Matching, {}),
    "matching_fce": (Matching, {"full_context_embeddings": True}),
    "relation": (Relation, {}),
    "induction": (Induction, {}),
    "metanet": (MetaNet, {}),
    "metanet_steps": (MetaNet, {"inner_train": InnerLoop(2, 0.3), "inner_eval": InnerLoop(5, 0.3)}),
    "ridge": (Ridge, {}),
}


class CountingEncoder(nn.Module):
    """A float-feature encoder (as a frozen pretrained encoder's cached features are) that counts its rows."""

    def __init__(self, dim: int = 6) -> None:
        super().__init__()
        self.layer = nn.Linear(dim, dim)
        self.output_dim, self.rows = dim, 0

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.rows += len(inputs)
        return torch.tanh(self.layer(inputs))


def float_split(classes: int = 4, per_class: int = 12) -> EncodedSplit:
    torch.manual_seed(0)
    labels = np.repeat(np.arange(classes), per_class)
    inputs = torch.randn(len(labels), 6) + torch.from_numpy(labels).float().unsqueeze(1) * 0.5
    return EncodedSplit.from_tensors("test", inputs, labels.tolist(), [f"c{c}" for c in range(classes)])


@pytest.mark.parametrize("name", NEW)
def test_episodes_on_features_encoded_once_score_as_episodes_encoded_each_time(name):
    algorithm, kwargs = NEW[name]
    split = float_split()
    torch.manual_seed(0)
    algo = algorithm(CountingEncoder(), LabelSpace(3, 4), **kwargs)
    episodes = EpisodeSampler(split, 3, 2, 4, seed=5).episodes(10)
    per_episode = episode_scores(algo, episodes, torch.device("cpu"), progress=False)
    algo.encoder.rows = 0
    view, features = fixed_encoder_view(algo, split, batch_size=7, progress=False)
    assert algo.encoder.rows == len(split.labels) and view.head is algo.head  # shared, not copied
    once = episode_scores(view, EpisodeSampler(features, 3, 2, 4, seed=5).episodes(10), torch.device("cpu"), False)
    assert algo.encoder.rows == len(split.labels)
    assert np.allclose(once, per_episode)


@pytest.mark.parametrize("name", NEW)
def test_kshot_protocols_encode_shared_rows_once_and_score_as_without_the_cache(name, monkeypatch):
    """The k-shot run is the one ARSC and glue_lowres take: a support set per training set, an evaluation split."""
    algorithm, kwargs = NEW[name]
    torch.manual_seed(1)
    evaluation_labels = torch.arange(40) % 2
    evaluation = torch.randn(40, 6) + evaluation_labels.float().unsqueeze(1)
    tasks = []
    for seed in range(2):
        labels = torch.tensor([0, 0, 0, 1, 1])  # uneven classes, as a whole train split may have
        support = Batch(torch.randn(5, 6) + labels.float().unsqueeze(1), labels, torch.arange(2))
        tasks.append(KShotTask(f"t-seed{seed}", "t", support, evaluation, evaluation_labels, "test", ["accuracy"]))
    torch.manual_seed(0)
    algo = algorithm(CountingEncoder(), LabelSpace(2, 2), **kwargs)
    protocol = KShotProtocol(batch_size=16)
    once = protocol.score(algo, KShotTasks(tasks, algo.encoder), torch.device("cpu"), progress=False)
    assert algo.encoder.rows == 40 + 2 * 5
    monkeypatch.setattr(MetricLearner, "with_fixed_encoder", lambda self: None)
    each_time = protocol.score(algo, KShotTasks(tasks, algo.encoder), torch.device("cpu"), progress=False)
    scores = [
        run["tasks"]["t"]["training_sets"][f"t-seed{seed}"]["accuracy"] for run in (once, each_time) for seed in (0, 1)
    ]
    assert scores[:2] == pytest.approx(scores[2:])


@pytest.mark.parametrize("name", ["relation", "induction", "metanet"])
def test_a_method_without_a_regression_path_says_so_in_one_line(name):
    algorithm, kwargs = NEW[name]
    with pytest.raises(MetaNLPError, match=f"algo={name} scores classes and has no regression path"):
        algorithm(CountingEncoder(), LabelSpace(5, 0, regression=True), **kwargs)
    algo = algorithm(CountingEncoder(), LabelSpace(5, 4), **kwargs)
    targets = Batch(torch.randn(4, 6), torch.rand(4), NO_CLASSES)
    with pytest.raises(MetaNLPError, match=f"algo={name} scores classes"):
        algo.adapt(targets)


@pytest.mark.parametrize("name", ["matching", "matching_fce", "ridge"])
def test_a_regression_episode_predicts_one_target_per_query(name):
    algorithm, kwargs = NEW[name]
    algo = algorithm(CountingEncoder(), LabelSpace(5, 0, regression=True), **kwargs).train()
    support = Batch(torch.randn(6, 6), torch.rand(6) * 5, NO_CLASSES)
    query = Batch(torch.randn(4, 6), torch.rand(4) * 5, NO_CLASSES)
    learner = algo.adapt(support)
    assert learner(query.inputs).shape == (4, 1)
    algo.meta_loss(learner, query).backward()  # the MSE of task_loss
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.parameters())


def cnn():
    return WordCNN(VOCAB_SIZE, embedding_dim=32, filter_sizes=[1, 2], num_filters=32, dropout=0.0)


@pytest.mark.parametrize("name", NEW)
def test_a_2_way_and_a_5_way_episode_share_a_meta_batch(name, keyword_task):
    sampler, _ = keyword_task
    algorithm, kwargs = NEW[name]
    torch.manual_seed(0)
    algo = algorithm(cnn(), LabelSpace(5, 30), **kwargs).train()
    five_way = sampler.episode(0)
    two_way = EpisodeSampler(sampler.split, n_way=2, k_shot=3, q_query=4, seed=1).episode(0)
    for episode in (two_way, five_way):
        (algo.meta_loss(algo.adapt(episode.support), episode.query) / 2).backward()
    assert all(p.grad is not None for p in algo.parameters() if p.requires_grad)
    algo.eval()
    for episode, n_way in ((two_way, 2), (five_way, 5)):
        with torch.enable_grad():
            assert algo.adapt(episode.support)(episode.query.inputs).shape == (len(episode.query), n_way)


@pytest.mark.parametrize("name", NEW)
def test_algorithm_learns_the_keyword_task_far_above_chance(name, keyword_task):
    sampler, test_split = keyword_task
    algorithm, kwargs = NEW[name]
    torch.manual_seed(0)
    algo = algorithm(cnn(), LabelSpace(5, 30), **kwargs)
    test_episodes = EpisodeSampler(test_split, n_way=5, k_shot=5, q_query=10, seed=99).episodes(20)
    before = sum(episode_scores(algo, test_episodes, torch.device("cpu"), progress=False)) / 20
    meta_train(algo, sampler, steps=100, lr=3e-3)
    after = sum(episode_scores(algo, test_episodes, torch.device("cpu"), progress=False)) / 20
    assert before < 0.7 and after > 0.8, (name, before, after)  # chance is 0.2


@pytest.mark.parametrize("trainable_layers", [0, 1], ids=["frozen", "top-layer"])
@pytest.mark.parametrize("algo", ["matching", "relation", "induction", "metanet", "ridge"])
def test_train_recipe_runs_each_method_on_a_pretrained_encoder(
    algo,
    trainable_layers,
    tiny_bert,
    compose_config,
    tmp_path,
):
    """Frozen (pooled features cached; the method's own parameters still train) or with the top layer trained
    (hidden states cached below it): validation and test run on the fixed-encoder view."""
    overrides = ["backbone=pretrained", f"backbone.name_or_path={tiny_bert}", f"algo={algo}", "debug=smoke"]
    cfg = compose_config("train", [*overrides, f"backbone.encoder.trainable_layers={trainable_layers}"])
    best_val = train.run(cfg, tmp_path, {"algo": algo, "backbone": "pretrained", "dataset": "chatterbot"})
    results = json.loads((tmp_path / "results.json").read_text())
    assert 0.0 <= best_val <= 1.0 and results["episodes"] == 10
    assert (tmp_path / "checkpoints" / "best.pt").is_file()


SMALL_CNN = ["backbone.encoder.embedding_dim=16", "backbone.encoder.num_filters=8"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A smoke-trained run directory per new method (word CNN, the built-in dataset)."""
    runs = {}
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3", job_name="train"):
        for algo in ("matching", "relation", "induction", "metanet", "ridge"):
            runs[algo] = tmp_path_factory.mktemp(f"run-{algo}")
            cfg = compose("train", overrides=[f"algo={algo}", "debug=smoke", *SMALL_CNN])
            train.run(cfg, runs[algo], {"algo": algo, "backbone": "cnn", "dataset": "chatterbot"})
    return runs


def protocol_data(protocol: str, root, compose_config) -> list[str]:
    """Write a small fixture dataset of the protocol under `root`; the eval overrides that read it."""
    if protocol == "arsc":
        write_arsc(root)
        return ["protocol=arsc", "dataset=arsc"]
    if protocol == "kshot":
        write_lmbff(root, k=4, seeds=[13, 21])
        return ["protocol=kshot", "dataset=lmbff/sst2", "dataset.k=4", "dataset.seeds=[13,21]"]
    write_glue_lowres(root, compose_config)
    return ["protocol=glue_lowres", "dataset=glue/lowres"]


@pytest.mark.parametrize("protocol", ["arsc", "kshot", "glue_lowres"])
@pytest.mark.parametrize("algo", ["matching", "relation", "induction", "metanet", "ridge"])
def test_eval_scores_each_method_with_each_k_shot_protocol(algo, protocol, checkpoints, compose_config, tmp_path):
    """ARSC, LM-BFF k-shot and glue_lowres (whose STS-B target is fitted by the protocol's regression head)."""
    overrides = [f"checkpoint={checkpoints[algo]}", *protocol_data(protocol, tmp_path, compose_config)]
    overrides.append(f"paths.data_root={tmp_path}")
    results = evaluate.run(compose_config("eval", overrides), tmp_path, overrides)
    assert results["protocol"] == protocol and 0.0 <= results["average"] <= 1.0


@pytest.mark.parametrize("trainable_layers", [0, 1], ids=["frozen", "top-layer"])
def test_the_pretrained_benchmark_workload_trains_on_cached_features(trainable_layers, tiny_bert):
    workload = PretrainedWorkload("ridge", trainable_layers, tiny_bert, Workload("ridge", "cnn", vocab=60, length=8))
    algo, optimizer, meta_batches = build_pretrained_workload(workload)
    assert meta_batches[0][0].support.inputs.is_floating_point()  # the frozen layers' output, as train caches it
    before = [p.detach().clone() for p in algo.parameters() if p.requires_grad]
    assert math.isfinite(meta_train_step(algo, optimizer, meta_batches[0]))
    after = [p for p in algo.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    results = {
        ("ridge", "minilm frozen"): {"episodes_per_s": 2.0, "peak_training_mib": 3.0},
        ("matching", "minilm frozen"): None,
    }
    table = bench_metric_learners.section(results, ["cnn", "minilm frozen"], workload.shape, Timing())
    assert "| ridge | - | - | 2.00 | 3 |" in table and "| matching | - | - | nothing trains | - |" in table
