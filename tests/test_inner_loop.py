"""The functional core: which parameters adapt, support mini-batches, settings, variable-way heads."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from metanlp_cli.algorithms.base import Classifier, LabelSpace, first_head_rows
from metanlp_cli.algorithms.inner_loop import (
    InnerLoop,
    encoder_blocks,
    gradient_steps,
    module_forward,
    select_parameters,
)
from metanlp_cli.algorithms.maml import MAML
from metanlp_cli.backbones.cnn import WordCNN
from metanlp_cli.backbones.lstm import BiLSTM
from metanlp_cli.backbones.transformer import TransformerEncoder
from metanlp_cli.config import build
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.sampling import Batch
from tests.conftest import TinyEncoder


def adapted_names(encoder, include, exclude=()):
    names = [n for n, _ in Classifier(encoder, 3).named_parameters()]
    return select_parameters(names, include, exclude, encoder_blocks(encoder))


def test_top_k_is_the_head_and_the_last_k_blocks_of_each_backbone():
    cnn = WordCNN(20, embedding_dim=8, filter_sizes=[2, 3], num_filters=4)
    assert adapted_names(cnn, "top_0") == ["head.weight", "head.bias"]
    assert adapted_names(cnn, "top_1") == [
        "encoder.convolutions.0.weight",
        "encoder.convolutions.0.bias",
        "encoder.convolutions.1.weight",
        "encoder.convolutions.1.bias",
        "head.weight",
        "head.bias",
    ]
    assert adapted_names(cnn, "top_2", ["encoder.embedding.*"]) == adapted_names(cnn, "top_1")

    lstm = BiLSTM(20, embedding_dim=8, hidden_size=4, num_layers=2)
    top_1 = adapted_names(lstm, "top_1")
    assert top_1[:-2] and all(n.startswith("encoder.layers.1.") for n in top_1[:-2])
    assert len(adapted_names(lstm, "top_2")) == len(top_1) + len(top_1) - 2  # both layers have the same shapes

    transformer = TransformerEncoder(20, dim=8, heads=2, layers=3, feedforward_dim=8, max_length=16)
    top_1 = adapted_names(transformer, "top_1")
    assert {n.split(".")[1] for n in top_1 if n.startswith("encoder.")} == {"layers", "norm"}  # final norm joins
    assert all(n.startswith(("encoder.layers.2.", "encoder.norm.", "head.")) for n in top_1)
    everything = adapted_names(transformer, "top_4")
    assert "encoder.position.weight" in everything and everything == adapted_names(transformer, "all")


def test_inner_params_aliases_patterns_and_bad_values():
    cnn = WordCNN(20, embedding_dim=8, filter_sizes=[2], num_filters=4)
    assert adapted_names(cnn, "head") == ["head.weight", "head.bias"]
    assert adapted_names(cnn, ["head", "encoder.convolutions.0.bias"]) == [
        "encoder.convolutions.0.bias",
        "head.weight",
        "head.bias",
    ]
    assert "encoder.embedding.weight" not in adapted_names(cnn, "all", ["encoder.embedding.*"])
    with pytest.raises(MetaNLPError, match=r"algo.inner_params='top_3' but the backbone has 2 blocks; allowed: top_0"):
        adapted_names(cnn, "top_3")
    with pytest.raises(MetaNLPError, match=r"does not list its layers"):
        adapted_names(TinyEncoder(), "top_1")
    with pytest.raises(MetaNLPError, match=r"algo.inner_params='decoder.\*' .* selects no parameter; parameters are"):
        adapted_names(cnn, "decoder.*")


def test_support_batch_size_draws_that_many_support_examples_per_step():
    torch.manual_seed(0)
    model = Classifier(TinyEncoder(), 2)
    support = Batch(torch.randint(1, 12, (10, 4)), torch.arange(10) % 2, torch.tensor([0, 1]))
    seen = []

    def forward(parameters, inputs):
        seen.append(inputs.shape[0])
        return module_forward(model)(parameters, inputs)

    names = [n for n, _ in model.named_parameters()]
    gradient_steps(forward, dict(model.named_parameters()), support, names, InnerLoop(3, 0.1, 4), False)
    gradient_steps(forward, dict(model.named_parameters()), support, names, InnerLoop(2, 0.1, None), False)
    assert seen == [4, 4, 4, 10, 10]


@pytest.mark.parametrize(
    "settings,message",
    [
        ({"steps": -1}, r"algo.inner_train: steps=-1 must be >= 0"),
        ({"lr": 0.0}, r"algo.inner_train: lr=0.0 must be > 0"),
        ({"support_batch_size": 0}, r"algo.inner_train: support_batch_size=0 must be >= 1"),
        ({"lr": None}, r"algo: inner_train.lr is null but this algorithm needs an inner learning rate"),
    ],
)
def test_bad_inner_loop_settings_name_the_key(settings, message):
    node = OmegaConf.create(
        {
            "_target_": "metanlp_cli.algorithms.maml.MAML",
            "inner_train": {"_target_": "metanlp_cli.algorithms.inner_loop.InnerLoop", **settings},
        }
    )
    with pytest.raises(MetaNLPError, match=message):
        build(node, "algo", encoder=TinyEncoder(), label_space=LabelSpace(2, 4))


def test_learned_update_algorithms_refuse_a_fixed_inner_lr():
    node = OmegaConf.create(
        {
            "_target_": "metanlp_cli.algorithms.metasgd.MetaSGD",
            "inner_eval": {"_target_": "metanlp_cli.algorithms.inner_loop.InnerLoop", "lr": 0.1},
        }
    )
    with pytest.raises(MetaNLPError, match=r"algo: inner_eval.lr=0.1 must be null: this algorithm learns"):
        build(node, "algo", encoder=TinyEncoder(), label_space=LabelSpace(2, 4))


def test_an_episode_uses_the_first_rows_of_a_fixed_size_head():
    parameters = {"head.weight": torch.ones(5, 3), "head.bias": torch.zeros(5), "encoder.w": torch.ones(2)}
    sliced = first_head_rows(parameters, 2)
    assert sliced["head.weight"].shape == (2, 3) and sliced["head.bias"].shape == (2,)
    assert sliced["encoder.w"] is parameters["encoder.w"]

    algo = MAML(TinyEncoder(), LabelSpace(n_way=3, num_train_classes=6))
    four_way = Batch(torch.randint(1, 12, (8, 3)), torch.arange(8) % 4, torch.arange(4))
    with pytest.raises(MetaNLPError, match=r"an episode has 4 classes but the head was built for at most 3"):
        algo.adapt(four_way)


@pytest.mark.parametrize("algorithm", ["maml", "reptile", "metasgd", "metalstm", "protomaml"])
def test_frozen_encoder_parameters_are_never_adapted(algorithm):
    """A frozen layer (requires_grad=False, as in a frozen pretrained encoder) has no gradient:
    every gradient-based algorithm leaves it out of its inner loop and still adapts."""
    from metanlp_cli.algorithms.maml import MAML
    from metanlp_cli.algorithms.metalstm import MetaLSTM
    from metanlp_cli.algorithms.metasgd import MetaSGD
    from metanlp_cli.algorithms.protomaml import ProtoMAML
    from metanlp_cli.algorithms.reptile import Reptile

    classes = {"maml": MAML, "reptile": Reptile, "metasgd": MetaSGD, "metalstm": MetaLSTM, "protomaml": ProtoMAML}
    torch.manual_seed(0)
    encoder = TinyEncoder()
    encoder.layer.requires_grad_(False)
    algo = classes[algorithm](encoder, LabelSpace(2, 4), inner_params="all", inner_frozen=[])
    assert not any(name.startswith("encoder.layer.") for name in algo.adapted)
    assert any(name.startswith("encoder.embedding") for name in algo.adapted)
    support = Batch(torch.tensor([[1, 2], [3, 4], [5, 6], [7, 8]]), torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1]))
    algo.train()
    algo.meta_loss(algo.adapt(support), support).backward()
    assert encoder.layer.weight.grad is None
