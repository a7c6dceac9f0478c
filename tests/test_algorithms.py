"""Each algorithm's math on a tiny float64 model, and that it learns a separable task."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from metanlp_cli.algorithms.adaptation import EncoderFineTuning
from metanlp_cli.algorithms.anil import ANIL
from metanlp_cli.algorithms.base import LabelSpace
from metanlp_cli.algorithms.finetune import FineTune
from metanlp_cli.algorithms.inner_loop import InnerLoop
from metanlp_cli.algorithms.maml import MAML
from metanlp_cli.algorithms.metalstm import MetaLSTM, MetaLSTMCell, preprocess
from metanlp_cli.algorithms.metasgd import MetaSGD, rate_key
from metanlp_cli.algorithms.multitask import MultiTask
from metanlp_cli.algorithms.protomaml import ProtoMAML
from metanlp_cli.algorithms.protonet import ProtoNet
from metanlp_cli.algorithms.reptile import Reptile
from metanlp_cli.algorithms.setfit import SetFit
from metanlp_cli.backbones.cnn import WordCNN
from metanlp_cli.protocols import episode_scores
from metanlp_cli.sampling import Batch, Episode, EpisodeSampler, episode_seed
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


def loop(steps, lr=None):
    return InnerLoop(steps=steps, lr=lr)


def meta_loss_of(algo, support, query):
    algo.zero_grad()
    loss = algo.meta_loss(algo.adapt(support), query)
    loss.backward()
    return loss, {n: p.grad.clone() for n, p in algo.named_parameters()}


def assert_matches_finite_differences(algo, support, query, names=None):
    """The autograd meta-gradient against central differences, on the first and last entry of each tensor."""
    algo.train()
    _, gradient = meta_loss_of(algo, support, query)
    epsilon = 1e-6
    for name, parameter in algo.named_parameters():
        if names is not None and not name.startswith(names):
            continue
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


def manual_inner_steps(model, support, steps, lr, adapted):
    """Plain SGD written out, independent of metanlp's inner loop."""
    parameters = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    for _ in range(steps):
        loss = F.cross_entropy(functional_call(model, parameters, (support.inputs,)), support.labels)
        grads = torch.autograd.grad(loss, [parameters[n] for n in adapted])
        for name, grad in zip(adapted, grads, strict=True):
            parameters[name] = (parameters[name] - lr * grad).detach().requires_grad_(True)
    return parameters


SECOND_ORDER = {
    "maml": (MAML, {"inner_frozen": []}),
    "anil": (ANIL, {}),
    "metasgd": (MetaSGD, {"init_lr": 0.5, "inner_frozen": []}),
    "protomaml": (ProtoMAML, {"inner_frozen": [], "first_order": False}),
}


@pytest.mark.parametrize("name", SECOND_ORDER)
def test_second_order_meta_gradient_matches_finite_differences(name, tiny_batches):
    algorithm, kwargs = SECOND_ORDER[name]
    lr = None if algorithm is MetaSGD else 0.5
    algo = tiny(algorithm, inner_train=loop(2, lr), **kwargs)
    assert_matches_finite_differences(algo, *tiny_batches)


def test_fomaml_gradient_is_the_query_gradient_at_the_adapted_weights(tiny_batches):
    support, query = tiny_batches
    algo = tiny(MAML, inner_train=loop(3, 0.5), first_order=True, inner_frozen=[])
    algo.train()
    _, gradient = meta_loss_of(algo, support, query)
    names = [n for n, _ in algo.model.named_parameters()]
    adapted = manual_inner_steps(algo.model, support, 3, 0.5, names)
    query_loss = F.cross_entropy(functional_call(algo.model, adapted, (query.inputs,)), query.labels)
    expected = torch.autograd.grad(query_loss, [adapted[n] for n in names])
    for name, value in zip(names, expected, strict=True):
        torch.testing.assert_close(gradient[f"model.{name}"], value)

    second_order = tiny(MAML, inner_train=loop(3, 0.5), first_order=False, inner_frozen=[])
    _, exact = meta_loss_of(second_order, support, query)
    difference = sum((exact[n] - gradient[n]).norm() for n in exact)
    assert difference > 1e-3  # the second-order terms are not negligible here


@pytest.mark.parametrize("algorithm", [MAML, ANIL])
def test_one_inner_step_on_a_linear_head_first_and_second_order(algorithm, tiny_batches):
    """phi = W - a g_s(W); first order: dL_q/dW = g_q(phi); second order: (I - a H_s(W)) g_q(phi),
    with H_s the support loss's Hessian in W. Both agree on phi and the query loss, and differ by a H_s g_q."""
    support, query = tiny_batches
    extra = {"inner_params": "head"} if algorithm is MAML else {}
    first, second = (tiny(algorithm, inner_train=loop(1, 0.5), first_order=fo, **extra) for fo in (True, False))
    first_loss, first_gradient = meta_loss_of(first, support, query)
    second_loss, second_gradient = meta_loss_of(second, support, query)
    torch.testing.assert_close(first_loss, second_loss)

    with torch.no_grad():
        features = second.model.encoder(support.inputs), second.model.encoder(query.inputs)
    weight, bias = second.model.head.weight.detach(), second.model.head.bias.detach()
    flat = torch.cat([weight.reshape(-1), bias]).requires_grad_(True)

    def loss_at(theta, inputs, labels):
        return F.cross_entropy(F.linear(inputs, theta[:6].view(2, 3), theta[6:]), labels)

    support_gradient = torch.autograd.grad(loss_at(flat, features[0], support.labels), flat)[0]
    phi = (flat - 0.5 * support_gradient).detach().requires_grad_(True)
    query_gradient = torch.autograd.grad(loss_at(phi, features[1], query.labels), phi)[0]
    hessian = torch.autograd.functional.hessian(lambda t: loss_at(t, features[0], support.labels), flat.detach())
    expected_second = query_gradient - 0.5 * hessian @ query_gradient

    def head_gradient(gradients):
        return torch.cat([gradients["model.head.weight"].reshape(-1), gradients["model.head.bias"]])

    torch.testing.assert_close(head_gradient(first_gradient), query_gradient)
    torch.testing.assert_close(head_gradient(second_gradient), expected_second)
    assert (head_gradient(second_gradient) - head_gradient(first_gradient)).norm() > 1e-3


def test_anil_is_maml_with_a_head_only_inner_loop(tiny_batches):
    support, query = tiny_batches
    anil = tiny(ANIL, inner_train=loop(3, 0.5))
    maml = tiny(MAML, inner_train=loop(3, 0.5), inner_params="head")
    anil_loss, anil_gradient = meta_loss_of(anil, support, query)
    maml_loss, maml_gradient = meta_loss_of(maml, support, query)
    torch.testing.assert_close(anil_loss, maml_loss)
    for name, value in maml_gradient.items():
        torch.testing.assert_close(anil_gradient[name], value)


def test_maml_frozen_parameters_are_not_adapted_but_still_meta_trained(tiny_batches):
    support, query = tiny_batches
    algo = tiny(MAML, inner_train=loop(1, 0.5), inner_frozen=["encoder.embedding.*"])
    learner = algo.adapt(support)
    assert learner.parameters["encoder.embedding.weight"] is algo.model.encoder.embedding.weight
    assert not torch.equal(learner.parameters["head.weight"], algo.model.head.weight)
    _, gradient = meta_loss_of(algo, support, query)
    assert gradient["model.encoder.embedding.weight"].abs().sum() > 0


def test_maml_evaluation_uses_the_eval_inner_loop(tiny_batches):
    support, _ = tiny_batches
    algo = tiny(MAML, inner_train=loop(1, 0.5), inner_eval=loop(4, 0.3), inner_frozen=[])
    algo.eval()
    adapted = manual_inner_steps(algo.model, support, 4, 0.3, [n for n, _ in algo.model.named_parameters()])
    learner = algo.adapt(support)
    for name, value in adapted.items():
        torch.testing.assert_close(learner.parameters[name].detach(), value.detach())


def test_reptile_sgd_step_is_the_interpolation_formula(tiny_batches):
    support, query = tiny_batches
    algo = tiny(Reptile, inner_train=loop(4, 0.3))
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


@pytest.mark.parametrize("first_order", [False, True])
def test_metasgd_steps_with_its_learned_rates_and_the_rates_get_gradients(first_order, tiny_batches):
    support, query = tiny_batches
    algo = tiny(MetaSGD, inner_train=loop(1), inner_frozen=[], first_order=first_order)
    with torch.no_grad():
        for rate in algo.learning_rates.values():
            rate.uniform_(0.1, 0.9)  # distinct per coordinate
    names = [n for n, _ in algo.model.named_parameters()]
    start = manual_inner_steps(algo.model, support, 0, 0.0, names)
    loss = F.cross_entropy(functional_call(algo.model, start, (support.inputs,)), support.labels)
    gradients = dict(zip(names, torch.autograd.grad(loss, [start[n] for n in names]), strict=True))
    learner = algo.adapt(support)
    for name in names:
        expected = start[name] - algo.learning_rates[rate_key(name)] * gradients[name]
        torch.testing.assert_close(learner.parameters[name], expected)

    _, meta_gradient = meta_loss_of(algo, support, query)
    assert set(algo.state_dict()) >= {f"learning_rates.{rate_key(n)}" for n in names}
    for name in names:
        assert meta_gradient[f"learning_rates.{rate_key(name)}"].abs().sum() > 0, name


def test_protomaml_initial_head_gives_protonet_predictions_exactly(tiny_batches):
    support, query = tiny_batches
    protomaml = tiny(ProtoMAML, inner_eval=loop(0, 0.1))
    protonet = tiny(ProtoNet)
    protonet.encoder.load_state_dict(protomaml.encoder.state_dict())
    protomaml.eval()
    logits = protomaml.adapt(support)(query.inputs)
    reference = protonet.adapt(support)(query.inputs)  # -||x - c_k||^2
    norms = protonet.encoder(query.inputs).pow(2).sum(1, keepdim=True)
    torch.testing.assert_close(reference - logits, -norms.expand_as(logits), rtol=0, atol=1e-12)
    torch.testing.assert_close(logits.softmax(1), reference.softmax(1), rtol=0, atol=1e-12)
    assert torch.equal(logits.argmax(1), reference.argmax(1))


def test_protomaml_inner_step_treats_the_prototype_head_as_a_free_variable(tiny_batches):
    support, _ = tiny_batches
    algo = tiny(ProtoMAML, inner_train=loop(1, 0.5), inner_frozen=[])
    with torch.no_grad():
        features = algo.encoder(support.inputs)
        prototypes = torch.stack([features[support.labels == c].mean(0) for c in range(2)])
    start = {n: p.detach().clone().requires_grad_(True) for n, p in algo.encoder.named_parameters()}
    weight = (2 * prototypes).requires_grad_(True)
    bias = (-prototypes.pow(2).sum(1)).requires_grad_(True)
    logits = F.linear(functional_call(algo.encoder, start, (support.inputs,)), weight, bias)
    leaves = [*start.values(), weight, bias]
    gradients = torch.autograd.grad(F.cross_entropy(logits, support.labels), leaves)
    expected = {f"encoder.{n}": p for n, p in start.items()} | {"head.weight": weight, "head.bias": bias}
    learner = algo.adapt(support)
    for (name, value), gradient in zip(expected.items(), gradients, strict=True):
        torch.testing.assert_close(learner.parameters[name], value - 0.5 * gradient)


def test_metalstm_preprocessing_is_the_log_and_sign_formula():
    x = torch.tensor([0.0, 1e-6, -3e-5, 0.5, -2.0], dtype=torch.float64)
    p, cutoff = 10.0, math.exp(-10.0)
    expected = [
        [math.log(abs(v)) / p, math.copysign(1.0, v)] if abs(v) >= cutoff else [-1.0, math.exp(p) * v]
        for v in x.tolist()
    ]
    torch.testing.assert_close(preprocess(x), torch.tensor(expected, dtype=torch.float64))


def test_metalstm_update_for_a_zero_gradient_is_the_identity_given_the_gates():
    """theta' = f * theta - i * grad: a zero gradient only applies the forget gate, whatever the input gate
    and the loss; with f = 1 it leaves theta exactly as it was, while the same cell moves theta for a
    non-zero gradient."""
    torch.manual_seed(0)
    cell = MetaLSTMCell(hidden_size=4, init_lr=0.3).double()
    theta = torch.randn(7, dtype=torch.float64)
    zero, loss = torch.zeros(7, dtype=torch.float64), torch.tensor(1.7, dtype=torch.float64)
    updated, (_, _, forget, input_) = cell(theta, zero, loss, cell.initial_state(theta))
    assert (forget < 1).all() and (input_ > 0.2).all()
    torch.testing.assert_close(updated, forget.squeeze(1) * theta, rtol=0, atol=0)

    with torch.no_grad():
        cell.forget_gate.bias.fill_(math.inf)  # f = sigmoid(inf) = 1 exactly
    updated, (_, _, forget, input_) = cell(theta, zero, loss, cell.initial_state(theta))
    assert torch.equal(forget, torch.ones_like(forget)) and (input_ > 0.2).all()
    assert torch.equal(updated, theta)
    gradient = torch.randn(7, dtype=torch.float64)
    moved, (_, _, _, input_) = cell(theta, gradient, loss, cell.initial_state(theta))
    torch.testing.assert_close(moved, theta - input_.squeeze(1) * gradient)


def test_metalstm_step_is_the_gated_update_written_out(tiny_batches):
    support, _ = tiny_batches
    algo = tiny(MetaLSTM, hidden_size=3, inner_train=loop(1), inner_params="all", inner_frozen=[])
    names = [n for n, _ in algo.model.named_parameters()]
    start = manual_inner_steps(algo.model, support, 0, 0.0, names)
    loss = F.cross_entropy(functional_call(algo.model, start, (support.inputs,)), support.labels)
    gradient = torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, list(start.values()))])
    theta = torch.cat([p.detach().reshape(-1) for p in start.values()])

    cell = algo.meta_learner
    lstm = cell.input_lstm
    inputs = torch.cat([preprocess(gradient), preprocess(loss.detach()).expand(len(theta), 2)], 1)
    pre = inputs @ lstm.weight_ih.T + lstm.bias_ih + lstm.bias_hh  # h_0 = c_0 = 0
    i, f, g, o = pre.chunk(4, dim=1)
    hidden = torch.sigmoid(o) * torch.tanh(torch.sigmoid(i) * torch.tanh(g))
    zeros = torch.zeros(len(theta), 1, dtype=theta.dtype)
    gate_inputs = torch.cat([hidden, theta[:, None], zeros], 1)
    forget = torch.sigmoid(gate_inputs @ cell.forget_gate.weight.T + cell.forget_gate.bias).squeeze(1)
    input_ = torch.sigmoid(gate_inputs @ cell.input_gate.weight.T + cell.input_gate.bias).squeeze(1)
    expected = forget * theta - input_ * gradient

    learner = algo.adapt(support)
    torch.testing.assert_close(torch.cat([learner.parameters[n].reshape(-1) for n in names]), expected)


def test_metalstm_meta_gradient_of_the_cell_matches_finite_differences(tiny_batches):
    """With one inner step the gradient and loss the cell reads do not depend on the cell, so the
    meta-gradient of its weights is exact (for theta_0 the paper drops the second-order terms)."""
    algo = tiny(MetaLSTM, hidden_size=3, inner_train=loop(1), inner_params="all", inner_frozen=[])
    assert_matches_finite_differences(algo, *tiny_batches, names="meta_learner.")
    # With two steps h_1 != 0, so the input LSTM's recurrent weights get a gradient too.
    two_steps = tiny(MetaLSTM, hidden_size=3, inner_train=loop(2), inner_params="all", inner_frozen=[])
    _, gradient = meta_loss_of(two_steps, *tiny_batches)
    assert [n for n in gradient if gradient[n].abs().sum() == 0] == []


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
    algo = tiny(FineTune, inner_eval=loop(300, 0.1))
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


def test_multitask_classifies_each_example_among_its_own_group(tiny_batches):
    support, query = tiny_batches  # split-level classes 2 and 3 of 4
    space = LabelSpace(n_way=2, num_train_classes=6)
    torch.manual_seed(0)
    algo = MultiTask(TinyEncoder(), space, num_groups=3).double()  # groups {0, 1}, {2, 3}, {4, 5}
    algo.train()
    inputs = torch.cat([support.inputs, query.inputs])
    labels = torch.cat([support.classes[support.labels], query.classes[query.labels]])
    logits = algo.model(inputs)
    per_example = [F.cross_entropy(logits[j, 2 * (c // 2) : 2 * (c // 2) + 2], c % 2) for j, c in enumerate(labels)]
    torch.testing.assert_close(algo.meta_loss(algo.adapt(support), query), torch.stack(per_example).mean())

    single = MultiTask(TinyEncoder(), space, num_groups=1).double()
    finetune = FineTune(TinyEncoder(), space).double()
    finetune.load_state_dict(single.state_dict())
    expected = finetune.meta_loss(finetune.adapt(support), query)
    torch.testing.assert_close(single.meta_loss(single.adapt(support), query), expected)
    with pytest.raises(ValueError, match="num_groups=4 is not allowed"):
        MultiTask(TinyEncoder(), space, num_groups=4)


class FeatureEncoder(nn.Module):
    """An encoder over cached float features [rows, 6] (what a frozen encoder's features replace)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(6, 3)
        self.output_dim = 3

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.layer(features))


def uneven_episodes(kind: str) -> list[Episode]:
    """A 2-way and a 3-way episode whose support and query token ids all have different widths (some rows
    padded), or float features."""
    generator = torch.Generator().manual_seed(0)
    episodes = []
    for classes, k_shot, q_query, widths in (([0, 1], 2, 3, (3, 5)), ([1, 2, 3], 1, 2, (4, 2))):
        batches = []
        for per_class, width in zip((k_shot, q_query), widths, strict=True):
            rows = len(classes) * per_class
            if kind == "tokens":
                inputs = torch.randint(1, 12, (rows, width), generator=generator)
                inputs[0, 1:] = 0
            else:
                inputs = torch.randn(rows, 6, generator=generator, dtype=torch.float64)
            labels = torch.arange(len(classes)).repeat_interleave(per_class)
            batches.append(Batch(inputs, labels, torch.tensor(classes)))
        episodes.append(Episode(*batches, class_names=tuple(map(str, classes))))
    return episodes


BATCHING = {"protonet": (ProtoNet, {}), "finetune": (FineTune, {}), "multitask": (MultiTask, {"num_groups": 2})}


@pytest.mark.parametrize("kind", ["tokens", "features"])
@pytest.mark.parametrize("name", BATCHING)
def test_batched_meta_loss_and_gradients_equal_the_per_episode_sum(name, kind):
    """One encoder forward over every episode's rows gives the sum of the episodes' own meta-losses."""
    algorithm, kwargs = BATCHING[name]
    torch.manual_seed(0)
    algo = algorithm(TinyEncoder() if kind == "tokens" else FeatureEncoder(), SPACE, **kwargs).double().train()
    episodes = uneven_episodes(kind)
    parameters = [p for p in algo.parameters() if p.requires_grad]
    per_episode = sum(algo.meta_loss(algo.adapt(episode.support), episode.query) for episode in episodes)
    expected = torch.autograd.grad(per_episode, parameters)
    assert len(list(algo.meta_batch_losses(episodes, [1, 2]))) == 2  # batch_episodes=False: one per episode

    algo.batch_episodes = True
    [batched] = list(algo.meta_batch_losses(episodes, [1, 2]))
    torch.testing.assert_close(batched, per_episode)
    for got, want in zip(torch.autograd.grad(batched, parameters), expected, strict=True):
        torch.testing.assert_close(got, want)


def test_default_meta_batch_losses_are_the_former_recipe_loop_to_the_bit(keyword_task):
    """Episode by episode, torch seeded with each episode's seed: the gradients of the loop train.py ran
    before meta_batch_losses existed, bit for bit (dropout on, so the seeds matter)."""
    sampler, _ = keyword_task

    def gradients(seeds, through_method: bool) -> list[torch.Tensor]:
        torch.manual_seed(0)
        encoder = WordCNN(VOCAB_SIZE, embedding_dim=16, filter_sizes=[2], num_filters=8, dropout=0.5)
        algo = MAML(encoder, LabelSpace(5, 30), inner_train=InnerLoop(1, 0.3)).train()
        episodes = sampler.meta_batch(0, 3)
        if through_method:
            for loss in algo.meta_batch_losses(episodes, seeds):
                (loss / 3).backward()
        else:
            for episode, seed in zip(episodes, seeds, strict=True):
                torch.manual_seed(seed)
                (algo.meta_loss(algo.adapt(episode.support), episode.query) / 3).backward()
        return [p.grad for p in algo.parameters()]

    seeds = [episode_seed(0, index) for index in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(gradients(seeds, True), gradients(seeds, False), strict=True))
    other_masks = gradients([seed + 1 for seed in seeds], True)
    assert not all(torch.equal(a, b) for a, b in zip(gradients(seeds, True), other_masks, strict=True))


def cnn():
    return WordCNN(VOCAB_SIZE, embedding_dim=32, filter_sizes=[1, 2], num_filters=32, dropout=0.0)


# name: (class, constructor arguments, meta-training steps, outer learning rate)
ALGORITHMS = {
    "protonet": (ProtoNet, {}, 60, 3e-3),
    "protonet_batched": (ProtoNet, {"batch_episodes": True}, 60, 3e-3),
    "maml": (MAML, {"inner_train": InnerLoop(2, 0.3), "inner_eval": InnerLoop(5, 0.3)}, 150, 3e-3),
    "fomaml": (
        MAML,
        {"inner_train": InnerLoop(2, 0.3), "inner_eval": InnerLoop(5, 0.3), "first_order": True},
        150,
        3e-3,
    ),
    "anil": (ANIL, {"inner_train": InnerLoop(2, 0.3), "inner_eval": InnerLoop(5, 0.3)}, 150, 3e-3),
    "metasgd": (
        MetaSGD,
        {"init_lr": 0.3, "inner_train": InnerLoop(2, None), "inner_eval": InnerLoop(5, None)},
        150,
        3e-3,
    ),
    "protomaml": (ProtoMAML, {"inner_train": InnerLoop(2, 0.3), "inner_eval": InnerLoop(5, 0.3)}, 100, 3e-3),
    "metalstm": (
        MetaLSTM,
        {"init_lr": 0.3, "inner_train": InnerLoop(2, None), "inner_eval": InnerLoop(5, None)},
        150,
        3e-3,
    ),
    "reptile": (Reptile, {"inner_train": InnerLoop(3, 0.3), "inner_eval": InnerLoop(5, 0.3)}, 150, 1e-2),
    "finetune": (FineTune, {"inner_eval": InnerLoop(50, 0.05)}, 60, 3e-3),
    "finetune_batched": (FineTune, {"inner_eval": InnerLoop(50, 0.05), "batch_episodes": True}, 60, 3e-3),
    "multitask": (MultiTask, {"num_groups": 5, "inner_eval": InnerLoop(50, 0.05)}, 60, 3e-3),
    "finetune_cosine": (FineTune, {"head": "cosine", "learn_scale": True, "inner_eval": InnerLoop(50, 0.05)}, 60, 3e-3),
    "setfit": (SetFit, {"iterations": 2, "contrastive": EncoderFineTuning("all", 1e-3, 1, 16)}, 60, 3e-3),
}


@pytest.mark.parametrize("name", ALGORITHMS)
def test_every_algorithm_takes_a_2_way_and_a_5_way_episode_in_one_meta_batch(name, keyword_task):
    sampler, _ = keyword_task
    algorithm, kwargs, _, _ = ALGORITHMS[name]
    torch.manual_seed(0)
    algo = algorithm(cnn(), LabelSpace(5, 30), **kwargs)
    five_way = sampler.episode(0)
    two_way = EpisodeSampler(sampler.split, n_way=2, k_shot=3, q_query=4, seed=1).episode(0)
    algo.train()
    algo.zero_grad()
    for episode in (two_way, five_way):
        (algo.meta_loss(algo.adapt(episode.support), episode.query) / 2).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in algo.parameters())
    algo.eval()
    for episode, n_way in ((two_way, 2), (five_way, 5)):
        with torch.enable_grad():
            learner = algo.adapt(episode.support)
        assert learner(episode.query.inputs).shape == (len(episode.query), n_way)
    if hasattr(algo, "model") and algo.model.head.out_features == 5:  # a 2-way episode trains rows 0-1 only
        algo.zero_grad()
        algo.train()
        algo.meta_loss(algo.adapt(two_way.support), two_way.query).backward()
        assert algo.model.head.weight.grad[2:].abs().sum() == 0 and algo.model.head.weight.grad[:2].abs().sum() > 0


@pytest.mark.parametrize("name", ALGORITHMS)
def test_algorithm_learns_a_separable_task_far_above_chance(name, keyword_task):
    sampler, test_split = keyword_task
    algorithm, kwargs, steps, lr = ALGORITHMS[name]
    torch.manual_seed(0)
    algo = algorithm(cnn(), LabelSpace(5, 30), **kwargs)
    test_episodes = EpisodeSampler(test_split, n_way=5, k_shot=5, q_query=10, seed=99).episodes(20)
    before = sum(episode_scores(algo, test_episodes, torch.device("cpu"), progress=False)) / 20
    meta_train(algo, sampler, steps=steps, lr=lr)
    after = sum(episode_scores(algo, test_episodes, torch.device("cpu"), progress=False)) / 20
    assert before < 0.7 and after > 0.8, (name, before, after)  # chance is 0.2


def test_a_maml_head_learns_the_class_prior_from_declared_labels_and_natural_queries():
    """Binary tasks that are 90% positive, with a weak feature signal: balanced 5 + 5 supports say nothing
    about the prior. Meta-trained on episodes that keep the label order and draw queries in the tasks'
    own mix, the head's start carries the prior (accuracy near 90% on such queries); meta-trained on
    shuffled, balanced episodes it cannot, and stays near what the weak signal gives."""
    from metanlp_cli.data.types import EncodedSplit, LabeledTexts

    def split(name: str, tasks: int, seed: int) -> EncodedSplit:
        rng, parts = np.random.default_rng(seed), []
        for task in range(tasks):
            labels = [0] * 30 + [1] * 270
            features = rng.normal(size=(300, 4)).astype(np.float32)
            features[:, 0] += np.where(np.asarray(labels) == 1, 0.25, -0.25)
            texts = LabeledTexts([f"{name}{task}-{i}" for i in range(300)], labels, ["negative", "positive"])
            parts.append((f"task{task}", texts, torch.from_numpy(features)))
        return EncodedSplit.from_parts(name, parts, fixed_tasks=True)

    class Features(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer, self.output_dim = nn.Linear(4, 4), 4

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return self.layer(features)

    train, test = split("train", 6, seed=0), split("test", 2, seed=1)
    natural = {"class_order": "declared", "query": "natural"}
    test_episodes = EpisodeSampler(test, n_way=2, k_shot=5, q_query=10, seed=5, **natural).episodes(200)

    def accuracy_after_meta_training(**sampling) -> float:
        torch.manual_seed(0)
        algo = MAML(Features(), LabelSpace(2, 12), inner_params="head", inner_frozen=[], inner_train=InnerLoop(5, 0.1))
        meta_train(algo, EpisodeSampler(train, n_way=2, k_shot=5, q_query=10, seed=0, **sampling), 300, lr=1e-2)
        return float(np.mean(episode_scores(algo.eval(), test_episodes, torch.device("cpu"), "test", False)))

    with_prior, without = accuracy_after_meta_training(**natural), accuracy_after_meta_training()
    assert with_prior > 0.85, with_prior  # the majority label alone scores ~0.9 on these queries
    assert with_prior > without + 0.1, (with_prior, without)
