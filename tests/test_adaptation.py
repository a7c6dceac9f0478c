"""Test-time adaptation of the encoder itself: the cosine head of baseline++, fine-tuning the encoder with
the new head, and SetFit's contrastive fine-tuning; each on tiny models, each able to fail."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metanlp_cli.algorithms.adaptation import (
    EncoderFineTuning,
    adapted_encoder_names,
    encode,
    encoder_copy,
    support_seed,
)
from metanlp_cli.algorithms.base import LabelSpace
from metanlp_cli.algorithms.finetune import FineTune, LinearProbe
from metanlp_cli.algorithms.inner_loop import InnerLoop
from metanlp_cli.algorithms.multitask import MultiTask
from metanlp_cli.algorithms.setfit import SetFit, contrastive_fine_tune, cosine_similarity_loss, sentence_pairs
from metanlp_cli.backbones.cnn import WordCNN
from metanlp_cli.backbones.heads import CosineHead
from metanlp_cli.backbones.pretrained import PretrainedEncoder
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.protocols.kshot import KShotProtocol, KShotTask
from metanlp_cli.sampling import Batch, EpisodeSampler
from tests.conftest import VOCAB_SIZE, TinyEncoder, keyword_split
from tests.test_pretrained import tiny_bert  # noqa: F401  (the fixture)

SPACE = LabelSpace(n_way=2, num_train_classes=4)


@pytest.fixture
def tiny_batches():
    support = Batch(
        torch.tensor([[1, 2, 0], [3, 4, 5], [6, 2, 0], [7, 8, 9]]), torch.tensor([0, 0, 1, 1]), torch.tensor([2, 3])
    )
    query = Batch(torch.tensor([[1, 5, 0], [9, 8, 0], [4, 4, 2]]), torch.tensor([0, 1, 0]), torch.tensor([2, 3]))
    return support, query


def finetune(**kwargs) -> FineTune:
    torch.manual_seed(0)
    return FineTune(TinyEncoder(), SPACE, **kwargs).double()


def whole(**kwargs) -> EncoderFineTuning:
    return EncoderFineTuning(**{"layers": "all", "lr": 0.05, "epochs": 20, "batch_size": 2, "seed": 0} | kwargs)


# The cosine head (baseline++)


def test_cosine_head_logits_are_the_scaled_cosine_similarity():
    torch.manual_seed(0)
    head = CosineHead(3, 2, scale=4.0).double()
    features = torch.randn(5, 3, dtype=torch.float64)
    expected = torch.empty(5, 2, dtype=torch.float64)
    for i in range(5):
        for c in range(2):
            dot = sum(features[i, d] * head.weight[c, d] for d in range(3))
            norms = features[i].pow(2).sum().sqrt() * head.weight[c].pow(2).sum().sqrt()
            expected[i, c] = 4.0 * dot / norms
    torch.testing.assert_close(head(features), expected)
    torch.testing.assert_close(head(7.0 * features), expected)  # invariant to the features' norm
    assert "scale" in head.state_dict() and not any(name == "scale" for name, _ in head.named_parameters())


def test_finetune_with_a_cosine_head_meta_trains_its_scale_and_adapts_a_cosine_probe(tiny_batches):
    support, query = tiny_batches
    algo = finetune(head="cosine", scale=5.0, learn_scale=True, inner_eval=InnerLoop(200, 0.05))
    algo.train()
    inputs = torch.cat([support.inputs, query.inputs])
    labels = torch.cat([support.classes[support.labels], query.classes[query.labels]])
    features = algo.model.encoder(inputs)
    logits = 5.0 * F.normalize(features, dim=1) @ F.normalize(algo.model.head.weight, dim=1).T
    loss = algo.meta_loss(algo.adapt(support), query)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))
    loss.backward()
    assert algo.model.head.scale.grad is not None and algo.model.head.scale.grad != 0

    algo.eval()
    probe = algo.adapt(support)
    assert isinstance(probe, LinearProbe) and probe.bias is None and probe.scale == 5.0
    expected = 5.0 * F.normalize(algo.model.encoder(query.inputs), dim=1) @ F.normalize(probe.weight, dim=1).T
    torch.testing.assert_close(probe(query.inputs), expected)
    assert (probe(support.inputs).argmax(1) == support.labels).all()


def test_the_cosine_head_has_no_regression_output():
    with pytest.raises(ValueError, match="head=cosine has no regression output"):
        FineTune(TinyEncoder(), LabelSpace(2, 4, regression=True), head="cosine")
    with pytest.raises(ValueError, match="head='arc' is not allowed"):
        MultiTask(TinyEncoder(), LabelSpace(2, 4), num_groups=1, head="arc")


# Fine-tuning the encoder with the new head


def test_fine_tuning_adapts_a_copy_of_the_encoder_and_leaves_the_meta_learned_weights(tiny_batches):
    support, query = tiny_batches
    algo = finetune(encoder_finetuning=whole())
    before = {name: tensor.clone() for name, tensor in algo.state_dict().items()}
    algo.eval()
    learner = algo.adapt(support)
    for name, tensor in algo.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert all(p.grad is None for p in algo.parameters())
    moved = [n for n, p in algo.model.encoder.named_parameters() if not torch.equal(learner.parameters[n], p)]
    assert set(moved) == {"embedding.weight", "layer.weight", "layer.bias"}
    assert not algo.model.encoder.training  # the mode of the network is back as it was


def test_fine_tuning_fits_the_support_set_better_than_the_head_alone(tiny_batches):
    support, _ = tiny_batches
    head_only = finetune(inner_eval=InnerLoop(5, 0.01))
    tuned = finetune(inner_eval=InnerLoop(5, 0.01), encoder_finetuning=whole(epochs=30))
    head_only.eval(), tuned.eval()
    loss_head = F.cross_entropy(head_only.adapt(support)(support.inputs), support.labels)
    loss_tuned = F.cross_entropy(tuned.adapt(support)(support.inputs), support.labels)
    assert loss_tuned < 0.5 * loss_head, (loss_tuned, loss_head)


def test_fine_tuning_is_reproducible_per_seed_and_leaves_the_global_generator(tiny_batches):
    support, query = tiny_batches
    algo = finetune(encoder_finetuning=whole(batch_size=1, epochs=3))
    algo.eval()
    torch.manual_seed(5)
    state = torch.get_rng_state()
    first = algo.adapt(support)(query.inputs)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)  # what ran before does not matter
    torch.testing.assert_close(algo.adapt(support)(query.inputs), first, rtol=0, atol=0)
    other = finetune(encoder_finetuning=whole(batch_size=1, epochs=3, seed=1))
    other.eval()
    assert not torch.equal(other.adapt(support)(query.inputs), first)  # another seed: other batches
    assert support_seed(support, 0) != support_seed(Batch(support.inputs, 1 - support.labels, support.classes), 0)


def regression_task() -> KShotTask:
    """A regression training set the tiny encoder's random features cannot fit linearly: the target is the
    number of tokens 1-3 in the row (0-3, as STS-B's 0-5 scale), the other tokens noise."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randint(1, 12, (24, 3), generator=generator)
    targets = (inputs <= 3).sum(1).double()
    support = Batch(inputs, targets, torch.arange(0))
    return KShotTask("stsb-like", "stsb-like", support, inputs, targets, "dev", ["pearson"], regression=True)


def test_a_regression_task_fine_tunes_the_encoder_with_an_mse_head_where_the_algorithm_adapts_it():
    task, protocol = regression_task(), KShotProtocol(regression_head=InnerLoop(100, 0.05))
    head_only, tuned = finetune(), finetune(inner_eval=InnerLoop(100, 0.05), encoder_finetuning=whole(epochs=60))
    head_only.eval(), tuned.eval()
    assert head_only.adapt_regression(task.support) is None  # the protocol's own regression head
    probe = protocol.adapt(head_only, head_only.model.encoder, task)
    learner = protocol.adapt(tuned, tuned.model.encoder, task)
    assert isinstance(probe, LinearProbe) and not isinstance(learner, LinearProbe)
    moved = [n for n, p in tuned.model.encoder.named_parameters() if not torch.equal(learner.parameters[n], p)]
    assert moved, "the encoder did not adapt"
    assert learner(task.support.inputs).shape == (24, 1)
    mse_probe = F.mse_loss(probe(task.support.inputs).squeeze(1), task.support.labels)
    mse_tuned = F.mse_loss(learner(task.support.inputs).squeeze(1), task.support.labels)
    assert mse_tuned < 0.5 * mse_probe, (mse_tuned, mse_probe)


def test_top_layers_adapt_the_top_blocks_only_and_frozen_layers_are_refused():
    torch.manual_seed(0)
    cnn = WordCNN(VOCAB_SIZE, embedding_dim=8, num_filters=4)
    assert all(name.startswith("convolutions.") for name in adapted_encoder_names(cnn, 1, "key"))
    assert len(adapted_encoder_names(cnn, "all", "key")) == len(list(cnn.parameters()))
    with pytest.raises(MetaNLPError, match="key=3 but the backbone has 2 blocks"):
        adapted_encoder_names(cnn, 3, "key")
    cnn.embedding.weight.requires_grad_(False)
    with pytest.raises(MetaNLPError, match="trainable_layers=all"):
        adapted_encoder_names(cnn, "all", "key")
    with pytest.raises(MetaNLPError, match="does not list its layers"):
        adapted_encoder_names(TinyEncoder(), 1, "key")


@pytest.mark.slow
def test_fine_tuning_an_untrained_cnn_learns_the_keyword_task():
    """No meta-training: a random word CNN, 2-way 10-shot episodes of held-out keyword classes. The frozen
    random features with a new head are weak; fine-tuning the whole encoder on the support set learns
    the keywords."""
    split = keyword_split("test", range(30, 40), seed=2)
    episodes = EpisodeSampler(split, n_way=2, k_shot=10, q_query=20, seed=3).episodes(6)

    def accuracy(encoder_finetuning: EncoderFineTuning) -> float:
        torch.manual_seed(0)
        cnn = WordCNN(VOCAB_SIZE, embedding_dim=32, num_filters=16)
        algo = FineTune(cnn, LabelSpace(2, 30), encoder_finetuning=encoder_finetuning).eval()
        scores = []
        for episode in episodes:
            predicted = algo.adapt(episode.support)(episode.query.inputs).argmax(1)
            scores.append((predicted == episode.query.labels).double().mean().item())
        return sum(scores) / len(scores)

    head_only = accuracy(EncoderFineTuning(layers=0))
    tuned = accuracy(EncoderFineTuning(layers="all", lr=3e-2, epochs=30, batch_size=4))
    assert tuned > 0.8 and tuned > head_only + 0.1, (head_only, tuned)  # measured: 0.68 -> 0.86; chance 0.5


# SetFit


def test_sentence_pairs_pair_each_example_with_its_class_and_another_per_round():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    torch.manual_seed(0)
    left, right, targets = sentence_pairs(labels, iterations=4)
    assert len(left) == len(right) == len(targets) == 2 * 4 * 6
    assert torch.equal(targets == 1, labels[left] == labels[right])  # target 1 exactly for same-class pairs
    for row in range(6):
        mine = left == row
        assert (targets[mine] == 1).sum() == 4 and (targets[mine] == 0).sum() == 4  # one of each per round
        assert (right[mine & (targets == 1)] != row).all() or row == 5  # row 5 is alone in its class
    assert (right[(left == 5) & (targets == 1)] == 5).all()
    assert targets[:12].unique().numel() == 2  # shuffled, not all positives first
    with pytest.raises(MetaNLPError, match="at least 2 classes"):
        sentence_pairs(torch.tensor([1, 1, 1]), 2)


def test_cosine_similarity_loss_is_the_squared_error_of_the_cosine():
    u = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]], dtype=torch.float64)
    v = torch.tensor([[0.0, 2.0], [2.0, 2.0], [4.0, 3.0]], dtype=torch.float64)
    targets = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    cosines = [0.0, 1.0, 24.0 / 25.0]  # (3*4 + 4*3) / (5 * 5)
    expected = sum((c - t) ** 2 for c, t in zip(cosines, targets.tolist(), strict=True)) / 3
    assert cosine_similarity_loss(u, v, targets).item() == pytest.approx(expected)


def test_setfit_head_is_sklearns_logistic_regression_on_the_adapted_features(tiny_batches):
    from sklearn.linear_model import LogisticRegression

    support, query = tiny_batches
    torch.manual_seed(0)
    algo = SetFit(TinyEncoder(), SPACE, iterations=2, contrastive=whole(lr=0.05, epochs=2, batch_size=4)).double()
    before = {name: tensor.clone() for name, tensor in algo.state_dict().items()}
    algo.eval()
    learner = algo.adapt(support)
    assert all(torch.equal(tensor, before[name]) for name, tensor in algo.state_dict().items())
    assert not torch.equal(learner.parameters["layer.weight"], algo.model.encoder.layer.weight)
    features = learner.features(support.inputs).detach().numpy()
    reference = LogisticRegression().fit(features, support.labels.numpy())
    probabilities = learner(query.inputs).softmax(1).detach().numpy()
    expected = reference.predict_proba(learner.features(query.inputs).detach().numpy())
    assert abs(probabilities - expected).max() < 1e-4
    torch.testing.assert_close(algo.adapt(support)(query.inputs), learner(query.inputs), rtol=0, atol=0)
    with pytest.raises(MetaNLPError, match="no regression path"):
        algo.adapt(Batch(support.inputs, support.labels.double(), support.classes))


def test_setfit_contrastive_steps_decrease_the_pair_loss(tiny_batches):
    support, _ = tiny_batches
    torch.manual_seed(0)
    encoder = TinyEncoder().double()
    config = whole(lr=0.05, epochs=30, batch_size=8)
    torch.manual_seed(1)
    left, right, targets = sentence_pairs(support.labels, 20)

    def pair_loss(parameters):
        features = encode(encoder, parameters, support.inputs)
        return cosine_similarity_loss(features[left], features[right], targets.double()).item()

    untouched = encoder_copy(encoder, [])
    adapted = contrastive_fine_tune(encoder, support, 5, config, "key")
    assert pair_loss(adapted) < 0.5 * pair_loss(untouched)


@pytest.mark.slow
def test_setfit_on_an_untrained_cnn_learns_the_keyword_task():
    """No meta-training: a random word CNN, 2-way 10-shot episodes of held-out keyword classes; the
    logistic regression on frozen random features vs after contrastive fine-tuning on the support pairs."""
    split = keyword_split("test", range(30, 40), seed=2)
    episodes = EpisodeSampler(split, n_way=2, k_shot=10, q_query=20, seed=3).episodes(6)

    def accuracy(contrastive: EncoderFineTuning) -> float:
        torch.manual_seed(0)
        cnn = WordCNN(VOCAB_SIZE, embedding_dim=32, num_filters=16)
        algo = SetFit(cnn, LabelSpace(2, 30), iterations=20, contrastive=contrastive).eval()
        scores = []
        for episode in episodes:
            predicted = algo.adapt(episode.support)(episode.query.inputs).argmax(1)
            scores.append((predicted == episode.query.labels).double().mean().item())
        return sum(scores) / len(scores)

    frozen = accuracy(EncoderFineTuning(layers=0))
    tuned = accuracy(EncoderFineTuning(layers="all", lr=1e-2, epochs=1, batch_size=16))
    assert tuned > 0.8 and tuned > frozen + 0.1, (frozen, tuned)  # measured: 0.70 -> 0.85; chance 0.5


# A pretrained encoder (the tiny random BERT of test_pretrained)


def test_fine_tuning_a_pretrained_encoder_adapts_what_the_backbone_trains(tiny_bert):  # noqa: F811
    split = keyword_split("test", range(30, 32), examples_per_class=4, seed=2)
    support = Batch(split.inputs, torch.as_tensor(split.labels), torch.arange(2))  # as packed ids: tokens 2..65
    config = EncoderFineTuning(layers="all", lr=1e-3, epochs=2, batch_size=4)

    torch.manual_seed(0)
    whole_encoder = PretrainedEncoder(VOCAB_SIZE, tiny_bert, trainable_layers="all", attention="sdpa")
    algo = FineTune(whole_encoder, SPACE, encoder_finetuning=config).eval()
    before = {name: tensor.clone() for name, tensor in algo.state_dict().items()}
    learner = algo.adapt(support)
    assert all(torch.equal(tensor, before[name]) for name, tensor in algo.state_dict().items())
    moved = {n for n, p in whole_encoder.named_parameters() if not torch.equal(learner.parameters[n], p)}
    assert any(n.startswith("model.embeddings.") for n in moved) and any(".layer.1." in n for n in moved)
    assert learner(support.inputs).shape == (8, 2)

    torch.manual_seed(0)
    frozen = PretrainedEncoder(VOCAB_SIZE, tiny_bert, trainable_layers=0)
    with pytest.raises(MetaNLPError, match="backbone.encoder.trainable_layers=all"):
        FineTune(frozen, SPACE, encoder_finetuning=config).eval().adapt(support)

    torch.manual_seed(0)
    top = PretrainedEncoder(VOCAB_SIZE, tiny_bert, trainable_layers=1)  # the layers below: cached hidden states
    cached = Batch(top.frozen_features(support.inputs), support.labels, support.classes)
    algo = FineTune(top, SPACE, encoder_finetuning=EncoderFineTuning(layers=1, lr=1e-3, epochs=2)).eval()
    learner = algo.adapt(cached)
    moved = {n for n, p in top.named_parameters() if not torch.equal(learner.parameters[n], p)}
    assert moved and all(n.startswith("model.encoder.layer.1.") for n in moved)


@pytest.mark.smoke
@pytest.mark.slow
def test_a_finetune_checkpoint_is_adapted_the_setfit_way_at_eval(tmp_path):
    """`metanlp eval checkpoint=RUN +algo=setfit`: the fine-tuning baseline's meta-trained weights load into
    setfit, which then adapts each episode contrastively (no change to the eval recipe)."""
    import subprocess
    import sys

    def metanlp(*arguments: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "metanlp_cli", *arguments]
        return subprocess.run(command, capture_output=True, text=True, timeout=300)

    narrow = ["backbone.encoder.embedding_dim=16", "backbone.encoder.num_filters=8"]
    trained = metanlp("train", "debug=smoke", "algo=finetune", *narrow, f"hydra.run.dir={tmp_path / 'run'}")
    assert trained.returncode == 0, trained.stderr
    evaluated = metanlp(
        "eval",
        f"checkpoint={tmp_path / 'run'}",
        "+algo=setfit",
        "algo.iterations=2",
        "protocol.episodes=3",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert "metanlp_cli.algorithms.setfit.SetFit" in (tmp_path / "eval" / "config.yaml").read_text()
    assert "test accuracy" in evaluated.stdout
