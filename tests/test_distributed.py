"""Multi-process meta-training: 2 gloo processes compute the single-process meta-gradient over the same episodes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from metanlp_cli.algorithms.base import LabelSpace
from metanlp_cli.algorithms.inner_loop import InnerLoop
from metanlp_cli.algorithms.maml import MAML
from metanlp_cli.backbones.cnn import WordCNN
from metanlp_cli.cli import launch_arguments
from metanlp_cli.distributed import Ranks, start
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.sampling import EpisodeSampler, episode_seed
from tests.conftest import VOCAB_SIZE, keyword_split

META_BATCH_SIZE, STEP, SEED = 4, 3, 0


def maml_and_sampler() -> tuple[MAML, EpisodeSampler]:
    """Second-order MAML on a small word CNN with dropout, so the masks must follow the episodes too."""
    torch.manual_seed(0)
    encoder = WordCNN(VOCAB_SIZE, embedding_dim=8, filter_sizes=(2, 3), num_filters=4, dropout=0.3)
    algo = MAML(encoder, LabelSpace(n_way=3, num_train_classes=10), inner_train=InnerLoop(steps=2, lr=0.3))
    sampler = EpisodeSampler(keyword_split("train", range(10), examples_per_class=8), 3, 2, 3, seed=SEED)
    return algo, sampler


def meta_gradient(ranks: Ranks) -> dict[str, torch.Tensor]:
    """This rank's share of one meta-batch, backward, then the all-reduce: the recipe's inner block."""
    algo, sampler = maml_and_sampler()
    algo.train()
    meta_loss = 0.0
    for index in ranks.episode_indices(STEP, META_BATCH_SIZE):
        torch.manual_seed(episode_seed(SEED, index))
        episode = sampler.episode(index)
        loss = algo.meta_loss(algo.adapt(episode.support), episode.query) / META_BATCH_SIZE
        loss.backward()
        meta_loss += loss.item()
    meta_loss = ranks.sum_gradients(algo.parameters(), meta_loss)
    return {"meta_loss": torch.tensor(meta_loss), **{n: p.grad.clone() for n, p in algo.named_parameters()}}


def _worker(rank: int, world_size: int, port: int, output: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        gradients = meta_gradient(Ranks(rank, world_size))
        # A parameter only rank 1 uses gets rank 1's gradient on every rank; one no rank uses keeps none.
        used, unused = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
        if rank == 1:
            (3 * used).sum().backward()
        Ranks(rank, world_size).sum_gradients([used, unused], 0.0)
        gradients.update(used=used.grad, unused_has_gradient=torch.tensor(unused.grad is not None))
        torch.save(gradients, f"{output}.rank{rank}")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_gloo_processes_compute_the_single_process_meta_gradient(tmp_path):
    output = str(tmp_path / "gradients")
    mp.spawn(_worker, args=(2, free_port(), output), nprocs=2, join=True)
    single = meta_gradient(Ranks())
    for rank in (0, 1):
        shared = torch.load(f"{output}.rank{rank}", weights_only=True)
        torch.testing.assert_close(shared.pop("used"), torch.full((2,), 3.0))
        assert not shared.pop("unused_has_gradient")
        assert shared.keys() == single.keys()
        for name, gradient in single.items():
            torch.testing.assert_close(shared[name], gradient, rtol=1e-5, atol=1e-7, msg=f"{name} on rank {rank}")
    assert single["model.head.weight"].abs().sum() > 0 and single["meta_loss"] > 0


def test_ranks_share_each_meta_batch_without_overlap():
    shares = [list(Ranks(rank, 4).episode_indices(step=5, meta_batch_size=8)) for rank in range(4)]
    assert shares == [[40, 41], [42, 43], [44, 45], [46, 47]]
    assert list(Ranks().episode_indices(step=5, meta_batch_size=8)) == list(range(40, 48))


def test_launch_problems_are_one_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(
        MetaNLPError, match="meta_batch_size=4 cannot be shared by 3 processes; allowed: a multiple of 3"
    ):
        start(True, torch.device("cpu"), meta_batch_size=4)
    with pytest.raises(MetaNLPError, match="WORLD_SIZE=3 but trainer.distributed=false"):
        start(False, torch.device("cpu"), meta_batch_size=3)
    with pytest.raises(MetaNLPError, match="all ranks must write to one run directory; add hydra.run.dir="):
        launch_arguments(["trainer.distributed=true"], multirun=False)
    assert launch_arguments(["hydra.run.dir=x"], multirun=False) == [
        "hydra.run.dir=x",
        "hydra.output_subdir=null",
        "hydra.job.name=train_rank1",
    ]


@pytest.mark.smoke
@pytest.mark.slow  # the two-process meta-gradient test keeps the distributed math in make test
def test_torchrun_with_two_processes_ends_with_the_single_process_results(tmp_path):
    overrides = ["debug=smoke", "backbone=lstm", "trainer.steps=4", "trainer.meta_batch_size=4"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    two = subprocess.run(
        [
            *torchrun,
            "-m",
            "metanlp_cli",
            "train",
            *overrides,
            "trainer.distributed=true",
            f"hydra.run.dir={tmp_path / 'two'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run(
        [sys.executable, "-m", "metanlp_cli", "train", *overrides, f"hydra.run.dir={tmp_path / 'one'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one.returncode == 0, one.stderr
    results = [json.loads((tmp_path / name / "results.json").read_text()) for name in ("one", "two")]
    for result in results:
        result.pop("checkpoint")
    assert results[0] == results[1]
    assert (tmp_path / "two" / "train_rank1.log").is_file() and not (tmp_path / "two" / "train_rank1").exists()
