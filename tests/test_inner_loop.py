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
        ({"mode": "dropout"}, r"algo.inner_train: mode='dropout' is not allowed; allowed: inherit, train, eval"),
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


class DropoutEncoder(TinyEncoder):
    """TinyEncoder with dropout on its features; records its mode at every forward, and raises when told."""

    def __init__(self) -> None:
        super().__init__(vocab_size=12, dim=8)
        self.dropout = torch.nn.Dropout(0.5)
        self.modes: list[bool] = []
        self.fail = False

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        if self.fail:
            raise RuntimeError("the encoder failed")
        return self.dropout(super().forward(token_ids))


def gradient_based(name: str, mode: str):
    """A gradient-based algorithm over a DropoutEncoder whose inner loops (train and eval) use `mode`."""
    from metanlp_cli.algorithms.anil import ANIL
    from metanlp_cli.algorithms.metalstm import MetaLSTM
    from metanlp_cli.algorithms.metasgd import MetaSGD
    from metanlp_cli.algorithms.protomaml import ProtoMAML
    from metanlp_cli.algorithms.reptile import Reptile

    classes = {"maml": MAML, "anil": ANIL, "reptile": Reptile, "metasgd": MetaSGD, "metalstm": MetaLSTM}
    classes["protomaml"] = ProtoMAML
    lr = None if name in ("metasgd", "metalstm") else 0.5
    loop = InnerLoop(steps=2, lr=lr, mode=mode)
    torch.manual_seed(0)
    return classes[name](DropoutEncoder(), LabelSpace(2, 4), inner_train=loop, inner_eval=loop)


SUPPORT = Batch(torch.tensor([[1, 2, 0], [3, 4, 5], [6, 2, 0], [7, 8, 9]]), torch.tensor([0, 0, 1, 1]), torch.arange(2))
QUERY = Batch(torch.tensor([[1, 5, 0], [9, 8, 0]]), torch.tensor([0, 1]), torch.arange(2))
GRADIENT_BASED = ["maml", "anil", "reptile", "metasgd", "metalstm", "protomaml"]


def fast_weights(algo, seed: int) -> list[torch.Tensor]:
    torch.manual_seed(seed)
    return [p.detach() for p in algo.adapt(SUPPORT).parameters.values()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", GRADIENT_BASED)
def test_inner_loop_mode_decides_dropout_while_adapting(name):
    """Meta-training (outer mode train): `eval` adapts without dropout, so the seed does not matter;
    `train` and `inherit` (today's behaviour) drop out, masks following torch's seed."""
    fast = {}
    for mode in ("eval", "train", "inherit"):
        algo = gradient_based(name, mode).train()
        fast[mode] = [fast_weights(algo, seed) for seed in (1, 2, 1)]
    assert same(fast["eval"][0], fast["eval"][1])
    for mode in ("train", "inherit"):
        assert not same(fast[mode][0], fast[mode][1]) and same(fast[mode][0], fast[mode][2]), mode
    assert same(fast["train"][0], fast["inherit"][0])

    evaluating = gradient_based(name, "train").eval()  # at evaluation, `train` turns dropout on
    assert not same(fast_weights(evaluating, 1), fast_weights(evaluating, 2))


@pytest.mark.parametrize("name", GRADIENT_BASED)
@pytest.mark.parametrize("outer,mode", [(True, "eval"), (False, "train")])
def test_inner_loop_mode_is_undone_after_adapting_and_on_an_error(name, outer, mode):
    algo = gradient_based(name, mode).train(outer)
    encoder = algo.model.encoder if hasattr(algo, "model") else algo.encoder
    with torch.enable_grad():
        learner = algo.adapt(SUPPORT)
        assert encoder.modes and set(encoder.modes) == {mode == "train"}  # every support forward
        encoder.modes.clear()
        learner(QUERY.inputs)
    assert encoder.modes == [outer]  # the query forward of the meta-loss follows the outer mode
    assert all(module.training == outer for module in algo.modules())

    encoder.fail = True
    with pytest.raises(RuntimeError, match="the encoder failed"):
        algo.adapt(SUPPORT)
    assert all(module.training == outer for module in algo.modules())


def test_inner_loop_mode_keeps_submodules_that_hold_their_own_mode():
    """A module kept in eval inside a training network (e.g. a pretrained encoder's frozen layers) stays in eval
    after adapting."""
    algo = gradient_based("maml", "train").train()
    algo.model.encoder.layer.eval()
    algo.adapt(SUPPORT)
    assert algo.model.encoder.training and not algo.model.encoder.layer.training
