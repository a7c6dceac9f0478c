"""The evaluation protocols: the k-shot protocol (LM-BFF style) against hand-computed values and through
`metanlp eval` on an LM-BFF-shaped fixture collection; the published episodic presets, fixed by their seed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metanlp_cli.algorithms.base import Algorithm
from metanlp_cli.algorithms.finetune import fit_linear_probe
from metanlp_cli.algorithms.inner_loop import InnerLoop
from metanlp_cli.config import build
from metanlp_cli.protocols import ArscProtocol, KShotProtocol, KShotTask, KShotTasks
from metanlp_cli.sampling import Batch
from tests.conftest import keyword_split
from tests.test_cli import metanlp


class FlipAlgorithm(Algorithm):
    """Predicts the first token of each row, flipped when the support's first token is 1."""

    def adapt(self, support: Batch):
        flip = int(support.inputs[0, 0])
        return lambda inputs: F.one_hot((inputs[:, 0] + flip) % 2, 2).float()


def test_kshot_scores_each_training_set_and_averages_them_by_hand():
    inputs, labels = torch.tensor([[1], [0], [0], [1], [1]]), torch.tensor([1, 1, 0, 0, 1])
    tasks = [
        KShotTask(
            name,
            "mrpc",
            Batch(torch.tensor([[flip]]), torch.tensor([0]), torch.arange(2)),
            inputs,
            labels,
            "test",
            ["f1", "accuracy"],
        )
        for name, flip in (("mrpc-seed1", 0), ("mrpc-seed2", 1))
    ]
    protocol = KShotProtocol(batch_size=2)
    results = protocol.score(FlipAlgorithm(), KShotTasks(tasks, nn.Identity()), torch.device("cpu"), progress=False)
    group = results["tasks"]["mrpc"]
    # seed1 predicts [1,0,0,1,1]: 3 of 5 right, TP 2 FP 1 FN 1 -> F1 4/6; seed2 predicts [0,1,1,0,0]: 2 of 5,
    # TP 1 FP 1 FN 2 -> F1 2/5
    assert group["training_sets"]["mrpc-seed1"] == pytest.approx({"f1": 4 / 6, "accuracy": 0.6, "combined": 19 / 30})
    assert group["training_sets"]["mrpc-seed2"] == pytest.approx({"f1": 0.4, "accuracy": 0.4, "combined": 0.4})
    assert group["scores"]["accuracy"]["mean"] == pytest.approx(0.5)
    assert group["scores"]["accuracy"]["std"] == pytest.approx(np.std([0.6, 0.4], ddof=1))
    assert group["scores"]["f1"]["mean"] == pytest.approx((4 / 6 + 0.4) / 2)
    assert results["average"] == pytest.approx((4 / 6 + 0.4) / 2)  # the first metric, F1, as LM-BFF reports MRPC
    assert group["score_metric"] == "f1"
    assert group["k_shot"] == [1] and group["support_examples"] == [1] and group["evaluation_examples"] == 5
    combined = KShotProtocol(batch_size=2, score="combined").score(
        FlipAlgorithm(), KShotTasks(tasks, nn.Identity()), "cpu", False
    )
    assert combined["average"] == pytest.approx((19 / 30 + 0.4) / 2)  # GLUE's combined score: mean of F1 and acc


def linear_targets(rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """STS-B-like: features and targets y = x @ w + 2.5 with a little noise (scores in roughly 0..5)."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(rows, 8, generator=generator)
    weight = torch.linspace(-0.5, 0.5, 8)
    return features, features @ weight + 2.5 + 0.05 * torch.randn(rows, generator=generator)


def test_the_regression_head_fits_what_least_squares_fits():
    features, targets = linear_targets(64, seed=0)
    probe = fit_linear_probe(nn.Identity(), Batch(features, targets, torch.arange(0)), InnerLoop(steps=500, lr=0.05))
    design = np.hstack([features.numpy(), np.ones((64, 1))])
    solution, *_ = np.linalg.lstsq(design, targets.numpy(), rcond=None)
    assert probe(features).shape == (64, 1)
    np.testing.assert_allclose(probe(features).squeeze(-1).numpy(), design @ solution, atol=0.02)


def test_kshot_scores_a_regression_task_with_its_correlations():
    support_inputs, support_targets = linear_targets(32, seed=1)
    evaluation_inputs, evaluation_targets = linear_targets(200, seed=2)
    support = Batch(support_inputs, support_targets, torch.arange(0))
    task = KShotTask(
        "stsb-seed1",
        "stsb",
        support,
        evaluation_inputs,
        evaluation_targets,
        "test",
        ["pearson", "spearman"],
        regression=True,
    )
    results = KShotProtocol().score(
        FlipAlgorithm(), KShotTasks([task], nn.Identity()), torch.device("cpu"), progress=False
    )
    group = results["tasks"]["stsb"]
    assert group["scores"]["pearson"]["mean"] > 0.95 and group["scores"]["spearman"]["mean"] > 0.9
    assert group["support_examples"] == [32] and results["average"] == group["scores"]["pearson"]["mean"]
    with_mean_only = KShotProtocol(regression_head=InnerLoop(steps=0, lr=0.01))
    constant = with_mean_only.score(
        FlipAlgorithm(), KShotTasks([task], nn.Identity()), torch.device("cpu"), progress=False
    )
    assert constant["tasks"]["stsb"]["scores"]["pearson"]["mean"] == 0.0  # a constant prediction: no crash


def write_lmbff(root, k: int, seeds: list[int]) -> None:
    """An LM-BFF-shaped SST-2: `<k>-<seed>/{train,dev}.tsv` with k sentences per label, a shared test.tsv."""
    folder = root / "lmbff_kshot" / "SST-2"
    words = {0: "awful dull", 1: "great fun"}

    def tsv(rows):
        return "sentence\tlabel\n" + "".join(f"{text}\t{label}\n" for text, label in rows)

    for seed in seeds:
        (folder / f"{k}-{seed}").mkdir(parents=True)
        for part in ("train", "dev"):
            rows = [(f"{words[label]} {part} {seed} {i}", label) for label in (0, 1) for i in range(k)]
            (folder / f"{k}-{seed}" / f"{part}.tsv").write_text(tsv(rows))
    (folder / "test.tsv").write_text(tsv([(f"{words[label]} movie {i}", label) for label in (0, 1) for i in range(10)]))


@pytest.mark.smoke
def test_eval_runs_the_kshot_protocol_on_a_checkpoint(tmp_path):
    write_lmbff(tmp_path, k=4, seeds=[13, 21])
    run_dir = tmp_path / "run"
    trained = metanlp("train", "debug=smoke", "algo=protonet", f"hydra.run.dir={run_dir}")
    assert trained.returncode == 0, trained.stderr
    evaluated = metanlp(
        "eval",
        f"checkpoint={run_dir}",
        "protocol=kshot",
        "dataset=lmbff/sst2",
        "dataset.k=4",
        "dataset.seeds=[13,21]",
        f"paths.data_root={tmp_path}",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )
    assert evaluated.returncode == 0, evaluated.stderr
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    group = results["tasks"]["sst2"]
    assert sorted(group["training_sets"]) == ["sst2-seed13", "sst2-seed21"]
    assert group["k_shot"] == [4] and group["evaluation_split"] == "test" and group["evaluation_examples"] == 20
    assert results["dataset"] == "lmbff/sst2" and results["average"] == group["score"]["mean"]
    table = (tmp_path / "eval" / "results.md").read_text()
    assert "| method | sst2 (acc) | average |" in table and "| protonet (cnn) |" in table
    assert "k-shot scores" in evaluated.stdout

    wrong = metanlp("train", "trainer.steps=1", "protocol=kshot", f"hydra.run.dir={tmp_path / 'run2'}")
    assert wrong.returncode == 2 and "protocol=kshot is for metanlp eval" in wrong.stderr


def test_arsc_scores_each_target_task_and_the_mean_over_them_by_hand():
    inputs, labels = torch.tensor([[1], [0], [0], [1]]), torch.tensor([1, 1, 0, 0])  # unflipped: 2 of 4 right
    tasks = [
        KShotTask(
            name, name, Batch(torch.tensor([[flip]]), torch.tensor([0]), torch.arange(2)), x, y, "test", ["accuracy"]
        )
        for name, flip, x, y in [
            ("books.t2", 0, inputs, labels),  # 2/4
            ("books.t4", 1, inputs[:3], labels[:3]),  # flipped: predictions 0, 1, 1 vs 1, 1, 0 -> 1/3
        ]
    ]
    results = ArscProtocol(batch_size=2).score(
        FlipAlgorithm(), KShotTasks(tasks, nn.Identity()), torch.device("cpu"), False
    )
    assert results["protocol"] == "arsc"
    assert results["tasks"]["books.t2"]["score"]["mean"] == pytest.approx(0.5)
    assert results["tasks"]["books.t4"]["score"]["mean"] == pytest.approx(1 / 3)
    assert results["average"] == pytest.approx((0.5 + 1 / 3) / 2)


def write_arsc(root) -> None:
    """An ARSC-shaped folder: 3 domains x 3 thresholds; `books` is the target domain; 5-shot support
    files and 6-line test files for the targets."""
    folder = root / "arsc"
    folder.mkdir(parents=True)
    (folder / "workspace.filtered.list").write_text("apparel\nbooks\ndvd\n")
    (folder / "workspace.target.list").write_text("books\n")
    words = {"-1": "awful broke sad", "1": "great fun good"}
    for domain in ("apparel", "books", "dvd"):
        for threshold in ("t2", "t4", "t5"):
            for split, count in (("train", 5), ("dev", 4), ("test", 3)):
                lines = [f"{words[label]} {domain} {i}\t{label}\n" for label in ("-1", "1") for i in range(count)]
                (folder / f"{domain}.{threshold}.{split}").write_text("".join(lines))


@pytest.mark.smoke
@pytest.mark.slow  # make test-full; the k-shot eval of a checkpoint (the same eval path) stays in make test
def test_eval_runs_the_arsc_protocol_on_a_checkpoint(tmp_path):
    write_arsc(tmp_path)
    run_dir = tmp_path / "run"
    trained = metanlp("train", "debug=smoke", "algo=protonet", f"hydra.run.dir={run_dir}")
    assert trained.returncode == 0, trained.stderr
    evaluated = metanlp(
        "eval",
        f"checkpoint={run_dir}",
        "protocol=arsc",
        "dataset=arsc",
        f"paths.data_root={tmp_path}",
        f"hydra.run.dir={tmp_path / 'eval'}",
    )
    assert evaluated.returncode == 0, evaluated.stderr
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["protocol"] == "arsc" and list(results["tasks"]) == ["books.t2", "books.t4", "books.t5"]
    for group in results["tasks"].values():
        assert group["k_shot"] == [5] and group["evaluation_split"] == "test" and group["evaluation_examples"] == 6
        assert len(group["training_sets"]) == 1
    means = [group["score"]["mean"] for group in results["tasks"].values()]
    assert results["average"] == pytest.approx(sum(means) / 3)
    table = (tmp_path / "eval" / "results.md").read_text()
    assert "| method | books.t2 (acc) | books.t4 (acc) | books.t5 (acc) | average |" in table
    assert "mean over 3" in evaluated.stdout


PRESETS = {
    "bao2020_1shot": (5, 1, 25, 1000),
    "bao2020_5shot": (5, 5, 25, 1000),
    "protaugment_1shot": (5, 1, 5, 600),
    "protaugment_5shot": (5, 5, 5, 600),
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_protocol_presets_fix_their_episodes_by_seed(preset, compose_config):
    protocol = build(compose_config("eval", [f"protocol={preset}", "checkpoint=x"]).protocol, "protocol")
    n_way, k_shot, q_query, episodes = PRESETS[preset]
    assert (protocol.n_way, protocol.k_shot, protocol.q_query, protocol.num_episodes) == PRESETS[preset]
    split = keyword_split("test", range(10), examples_per_class=k_shot + q_query)

    def support_rows(seed: int) -> list[torch.Tensor]:
        protocol.seed = seed
        return [episode.support.inputs for episode in protocol.episodes(split, count=3)]

    first, again, other = support_rows(1), support_rows(1), support_rows(2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    episode = protocol.episodes(split, count=1)[0]
    assert (episode.n_way, len(episode.support), len(episode.query)) == (n_way, n_way * k_shot, n_way * q_query)


class CountingEncoder(nn.Module):
    """A float-input encoder (like cached frozen-layer outputs) that counts the rows it encodes."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.layer, self.output_dim, self.rows = nn.Linear(width, 3), 3, 0

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.rows += len(inputs)
        return torch.tanh(self.layer(inputs))


def test_protonet_episodes_on_features_encoded_once_score_as_episodes_encoded_each_time():
    from metanlp_cli.algorithms.base import LabelSpace
    from metanlp_cli.algorithms.protonet import ProtoNet
    from metanlp_cli.data.types import EncodedSplit
    from metanlp_cli.protocols import EpisodicProtocol, episode_scores, fixed_encoder_view

    torch.manual_seed(0)
    labels = np.repeat(np.arange(4), 12)
    inputs = torch.randn(len(labels), 6) + torch.from_numpy(labels).float().unsqueeze(1) * 0.3
    split = EncodedSplit.from_tensors("test", inputs, labels.tolist(), ["a", "b", "c", "d"])
    encoder = CountingEncoder(6)
    algo = ProtoNet(encoder, LabelSpace(3, 4), distance="cosine")
    protocol = EpisodicProtocol(n_way=3, k_shot=2, q_query=4, episodes=20, seed=5)

    per_episode = episode_scores(algo, protocol.episodes(split), torch.device("cpu"), progress=False)
    assert encoder.rows == 20 * 3 * (2 + 4)
    encoder.rows = 0
    view, features = fixed_encoder_view(algo, split, batch_size=7, progress=False)
    assert encoder.rows == len(labels)  # every row once
    once = episode_scores(view, protocol.episodes(features), torch.device("cpu"), progress=False)
    assert encoder.rows == len(labels)
    assert np.allclose(once, per_episode)
    assert protocol.score(algo, split, torch.device("cpu"), progress=False)["episode_accuracies"] == pytest.approx(once)
    # Token ids are left to the per-episode path (padding-width dependent encoders).
    token_split = EncodedSplit.from_tensors("test", torch.ones(len(labels), 4, dtype=torch.long), labels, list("abcd"))
    assert fixed_encoder_view(algo, token_split, progress=False) == (algo, token_split)


def test_kshot_with_protonet_encodes_shared_evaluation_rows_once_and_scores_the_same(monkeypatch):
    from metanlp_cli.algorithms.base import LabelSpace
    from metanlp_cli.algorithms.protonet import ProtoNet

    torch.manual_seed(1)
    evaluation_labels = torch.arange(40) % 2
    evaluation = torch.randn(40, 6) + evaluation_labels.float().unsqueeze(1)
    tasks = []
    for seed in range(3):
        labels = torch.tensor([0, 0, 1, 1])
        support = Batch(torch.randn(4, 6) + labels.float().unsqueeze(1), labels, torch.arange(2))
        tasks.append(KShotTask(f"t-seed{seed}", "t", support, evaluation, evaluation_labels, "test", ["accuracy"]))
    encoder = CountingEncoder(6)
    algo = ProtoNet(encoder, LabelSpace(2, 2))
    protocol = KShotProtocol(batch_size=16)
    once = protocol.score(algo, KShotTasks(tasks, encoder), torch.device("cpu"), progress=False)
    assert encoder.rows == 40 + 3 * 4  # the shared evaluation split once, each support set once
    encoder.rows = 0
    monkeypatch.setattr(ProtoNet, "with_fixed_encoder", lambda self: None)
    each_time = protocol.score(algo, KShotTasks(tasks, encoder), torch.device("cpu"), progress=False)
    assert encoder.rows == 3 * (40 + 4)
    scores = [
        run["tasks"]["t"]["training_sets"][f"t-seed{seed}"]["accuracy"]
        for run in (once, each_time)
        for seed in range(3)
    ]
    assert scores[:3] == pytest.approx(scores[3:]) and min(scores) > 0.6
