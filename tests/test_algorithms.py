"""Each algorithm's math on a tiny float64 model, and that it learns a separable task."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from metanlp_cli.algorithms.base import LabelSpace
from metanlp_cli.algorithms.finetune import FineTune
from metanlp_cli.algorithms.maml import MAML
from metanlp_cli.algorithms.protonet import ProtoNet
from metanlp_cli.algorithms.reptile import Reptile
from metanlp_cli.backbones.cnn import WordCNN
from metanlp_cli.protocols import episode_accuracies
from metanlp_cli.sampling import Batch, EpisodeSampler
from tests.conftest import VOCAB_SIZE, TinyEncoder, meta_train

SPACE = LabelSpace(n_way=2, num_train_classes=4)


@pytest.fixture
def tiny_batches():
    torch.manual_seed(0)
    support = Batch(
        torch.tensor([[1, 2, 0], [3, 4, 5], [6, 2, 0], [7, 8, 9]]), torch.tensor([0, 0, 1, 1]), torch.tensor([2, 3])
    )
    query = Batch(torch.tensor([[1, 5, 0], [9, 8, 0], [4, 4, 2]]), torch.tensor([0, 1, 0]), torch.tensor([2, 3]))
    return support, query


def tiny(algorithm, **kwargs):
    torch.manual_seed(0)
    return algorithm(TinyEncoder(), SPACE, **kwargs).double()


def meta_loss_of(algo, support, query):
    algo.zero_grad()
    loss = algo.meta_loss(algo.adapt(support), query)
    loss.backward()
    return loss, {n: p.grad.clone() for n, p in algo.named_parameters()}


def manual_inner_steps(model, support, steps, lr, adapted):
    """Plain SGD written out, independent of metanlp's inner loop."""
    parameters = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    for _ in range(steps):
        loss = F.cross_entropy(functional_call(model, parameters, (support.inputs,)), support.labels)
        grads = torch.autograd.grad(loss, [parameters[n] for n in adapted])
        for name, grad in zip(adapted, grads, strict=True):
            parameters[name] = (parameters[name] - lr * grad).detach().requires_grad_(True)
    return parameters


def test_maml_meta_gradient_matches_finite_differences(tiny_batches):
    support, query = tiny_batches
    algo = tiny(MAML, inner_lr=0.5, inner_steps=2, inner_frozen=[])
    algo.train()
    _, gradient = meta_loss_of(algo, support, query)
    epsilon = 1e-6
    for name, parameter in algo.named_parameters():
        for index in [0, parameter.numel() - 1]:
            flat = parameter.data.view(-1)
            original = flat[index].item()
            values = []
            for sign in (1, -1):
                flat[index] = original + sign * epsilon
                values.append(algo.meta_loss(algo.adapt(support), query).item())
            flat[index] = original
            numeric = (values[0] - values[1]) / (2 * epsilon)
            assert gradient[name].view(-1)[index].item() == pytest.approx(numeric, rel=1e-5, abs=1e-8), name


def test_fomaml_gradient_is_the_query_gradient_at_the_adapted_weights(tiny_batches):
    support, query = tiny_batches
    algo = tiny(MAML, inner_lr=0.5, inner_steps=3, first_order=True, inner_frozen=[])
    algo.train()
    _, gradient = meta_loss_of(algo, support, query)
    names = [n for n, _ in algo.model.named_parameters()]
    adapted = manual_inner_steps(algo.model, support, 3, 0.5, names)
    query_loss = F.cross_entropy(functional_call(algo.model, adapted, (query.inputs,)), query.labels)
    expected = torch.autograd.grad(query_loss, [adapted[n] for n in names])
    for name, value in zip(names, expected, strict=True):
        torch.testing.assert_close(gradient[f"model.{name}"], value)

    second_order = tiny(MAML, inner_lr=0.5, inner_steps=3, first_order=False, inner_frozen=[])
    _, exact = meta_loss_of(second_order, support, query)
    difference = sum((exact[n] - gradient[n]).norm() for n in exact)
    assert difference > 1e-3  # the second-order terms are not negligible here


def test_maml_frozen_parameters_are_not_adapted_but_still_meta_trained(tiny_batches):
    support, query = tiny_batches
    algo = tiny(MAML, inner_lr=0.5, inner_steps=1, inner_frozen=["encoder.embedding.*"])
    learner = algo.adapt(support)
    assert (
        learner.parameters["model.encoder.embedding.weight".removeprefix("model.")]
        is algo.model.encoder.embedding.weight
    )
    assert not torch.equal(learner.parameters["head.weight"], algo.model.head.weight)
    _, gradient = meta_loss_of(algo, support, query)
    assert gradient["model.encoder.embedding.weight"].abs().sum() > 0


def test_maml_evaluation_uses_eval_steps_without_a_graph(tiny_batches):
    support, _ = tiny_batches
    algo = tiny(MAML, inner_lr=0.5, inner_steps=1, inner_steps_eval=4, inner_frozen=[])
    algo.eval()
    adapted = manual_inner_steps(algo.model, support, 4, 0.5, [n for n, _ in algo.model.named_parameters()])
    learner = algo.adapt(support)
    for name, value in adapted.items():
        torch.testing.assert_close(learner.parameters[name].detach(), value.detach())


def test_reptile_sgd_step_is_the_interpolation_formula(tiny_batches):
    support, query = tiny_batches
    algo = tiny(Reptile, inner_lr=0.3, inner_steps=4)
    names = [n for n, _ in algo.model.named_parameters()]
    theta = {n: p.detach().clone() for n, p in algo.model.named_parameters()}
    phi = manual_inner_steps(algo.model, support, 4, 0.3, names)
    epsilon = 0.25
    optimizer = torch.optim.SGD(algo.parameters(), lr=epsilon)
    algo.train()
    optimizer.zero_grad()
    algo.meta_loss(algo.adapt(support), query).backward()
    optimizer.step()
    for name, parameter in algo.model.named_parameters():
        expected = theta[name] + epsilon * (phi[name].detach() - theta[name])
        torch.testing.assert_close(parameter.detach(), expected)


def test_protonet_logits_are_negative_squared_distances_to_class_means(tiny_batches):
    support, query = tiny_batches
    algo = tiny(ProtoNet)
    features = algo.encoder(support.inputs)
    prototypes = torch.stack([features[support.labels == c].mean(0) for c in range(2)])
    query_features = algo.encoder(query.inputs)
    expected = -((query_features[:, None, :] - prototypes[None]) ** 2).sum(-1)
    torch.testing.assert_close(algo.adapt(support)(query.inputs), expected)


def test_finetune_trains_over_meta_train_classes_and_fits_a_fresh_head(tiny_batches):
    support, query = tiny_batches
    algo = tiny(FineTune, adapt_steps=300, adapt_lr=0.1)
    algo.train()
    inputs = torch.cat([support.inputs, query.inputs])
    global_labels = torch.cat([support.classes[support.labels], query.classes[query.labels]])
    expected = F.cross_entropy(algo.model(inputs), global_labels)
    torch.testing.assert_close(algo.meta_loss(algo.adapt(support), query), expected)
    assert algo.model.head.out_features == SPACE.num_train_classes

    algo.eval()
    learner = algo.adapt(support)
    assert learner(support.inputs).shape == (4, 2)
    assert (learner(support.inputs).argmax(1) == support.labels).all()  # a separable support set is fitted


# name: (class, constructor arguments, meta-training steps, outer learning rate)
ALGORITHMS = {
    "protonet": (ProtoNet, {}, 60, 3e-3),
    "maml": (MAML, {"inner_lr": 0.3, "inner_steps": 2, "inner_steps_eval": 5}, 150, 3e-3),
    "fomaml": (MAML, {"inner_lr": 0.3, "inner_steps": 2, "inner_steps_eval": 5, "first_order": True}, 150, 3e-3),
    "reptile": (Reptile, {"inner_lr": 0.3, "inner_steps": 3, "inner_steps_eval": 5}, 150, 1e-2),
    "finetune": (FineTune, {"adapt_steps": 50, "adapt_lr": 0.05}, 60, 3e-3),
}


@pytest.mark.parametrize("name", ALGORITHMS)
def test_algorithm_learns_a_separable_task_far_above_chance(name, keyword_task):
    sampler, test_split = keyword_task
    algorithm, kwargs, steps, lr = ALGORITHMS[name]
    torch.manual_seed(0)
    encoder = WordCNN(VOCAB_SIZE, embedding_dim=32, filter_sizes=[1, 2], num_filters=32, dropout=0.0)
    algo = algorithm(encoder, LabelSpace(5, 30), **kwargs)
    test_episodes = EpisodeSampler(test_split, n_way=5, k_shot=5, q_query=10, seed=99).episodes(20)
    before = sum(episode_accuracies(algo, test_episodes, torch.device("cpu"), progress=False)) / 20
    meta_train(algo, sampler, steps=steps, lr=lr)
    after = sum(episode_accuracies(algo, test_episodes, torch.device("cpu"), progress=False)) / 20
    assert after > 0.8, (name, before, after)  # chance is 0.2
