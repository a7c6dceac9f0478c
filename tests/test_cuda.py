"""Checks that need a CUDA device; skipped elsewhere."""

import pytest
import torch

from metanlp_cli.algorithms.base import LabelSpace
from metanlp_cli.algorithms.maml import MAML
from metanlp_cli.backbones.lstm import BiLSTM
from metanlp_cli.sampling import EpisodeSampler
from tests.conftest import VOCAB_SIZE, keyword_split

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_second_order_maml_through_the_lstm_on_cuda():
    """cuDNN RNNs have no double backward; the inner loop must route around them."""
    split = keyword_split("train", range(0, 10)).to("cuda")
    episode = EpisodeSampler(split, n_way=5, k_shot=2, q_query=3, seed=0).episode(0)
    torch.manual_seed(0)
    algo = MAML(BiLSTM(VOCAB_SIZE, embedding_dim=16, hidden_size=16), LabelSpace(5, 10), inner_steps=2).cuda()
    algo.train()
    algo.meta_loss(algo.adapt(episode.support), episode.query).backward()
    gradient = algo.model.encoder.lstm.weight_hh_l0.grad
    assert gradient is not None and torch.isfinite(gradient).all() and gradient.abs().sum() > 0
