"""The episodic protocol: fixed N-way K-shot Q-query episodes drawn from a split's held-out classes (or a
task collection's tasks), each adapted on and scored; the mean score and its 95% CI."""

from __future__ import annotations

import dataclasses
import logging

import torch
from torch import nn
from tqdm.auto import tqdm

from metanlp_cli.algorithms.base import Algorithm
from metanlp_cli.components import Dataset, encode_splits
from metanlp_cli.data.cache import cache_frozen_features
from metanlp_cli.data.types import EncodedSplit
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.metrics import accuracy, task_scores
from metanlp_cli.sampling import Batch, Episode, EpisodeSampler
from metanlp_cli.stats import mean_confidence_interval

log = logging.getLogger(__name__)


def episode_score(outputs: torch.Tensor, query: Batch, metric: str) -> float:
    """A query set's score: the accuracy of a classification episode's logits, or a regression
    episode's `metric` (its task's first: Pearson for STS-B; 0 for a constant prediction)."""
    if not query.is_regression:
        return accuracy(outputs, query.labels)
    if not outputs.isfinite().all():  # a diverged MSE inner loop: a score of it would be silently 0
        raise MetaNLPError(
            "a regression episode's predictions are not finite: the MSE inner loop diverged; lower "
            "algo.inner_eval.lr (algo.init_lr for metasgd and metalstm), e.g. 0.001 with backbone=cnn"
        )
    return task_scores([metric], outputs.squeeze(-1).cpu().numpy(), query.labels.cpu().numpy())[metric]


def episode_scores(
    algo: Algorithm, episodes: list[Episode], device: torch.device, description: str = "eval", progress: bool = True
) -> list[float]:
    """Adapt on each support set (with gradients where the algorithm needs them), score the query
    (`episode_score`: accuracy, or the regression metric of a regression episode)."""
    algo.eval()
    scores = []
    for episode in tqdm(episodes, desc=description, leave=False, disable=not progress, dynamic_ncols=True):
        episode = episode.to(device)
        with torch.enable_grad():
            learner = algo.adapt(episode.support)
        with torch.no_grad():
            scores.append(episode_score(learner(episode.query.inputs), episode.query, episode.metric))
    return scores


def fixed_encoder_view(
    algo: Algorithm, split: EncodedSplit, batch_size: int = 256, progress: bool = True
) -> tuple[Algorithm, EncodedSplit]:
    """The algorithm and split that evaluation episodes run on: where adapting leaves the encoder as it
    is (`Algorithm.with_fixed_encoder`), the encoder's output for every row of the split, computed once in
    eval mode, and the algorithm that reads such features; else both as they are. The same scores, without
    encoding a row again in every episode that contains it (ProtoNet over a trained transformer layer).

    Only for cached frozen-layer outputs (float inputs: a pretrained encoder's, which masks its padding):
    token ids go per episode as before, since the word CNN's and BiLSTM's features depend on how wide the
    padded batch is, and a whole split is wider than an episode."""
    fixed = algo.with_fixed_encoder()
    if fixed is None or not split.inputs.is_floating_point():
        return algo, split
    encoder, view = fixed
    algo.eval()
    features = encode_rows(encoder, split.inputs, batch_size, f"encode {split.name}", progress)
    return view.to(features.device), dataclasses.replace(split, inputs=features)


def encode_rows(encoder: nn.Module, inputs: torch.Tensor, batch_size: int, description: str, progress: bool):
    """`encoder`'s output for every row, `batch_size` rows at a time, without gradients."""
    chunks = tqdm(inputs.split(batch_size), desc=description, leave=False, disable=not progress)
    with torch.no_grad():
        return torch.cat([encoder(chunk) for chunk in chunks])


def score_name(episodes: list[Episode]) -> str:
    """What the mean of these episodes' scores is called: their one metric (accuracy, pearson), or
    `score` where classification and regression episodes mix (validation on a mixed collection)."""
    metrics = {episode.metric for episode in episodes}
    return metrics.pop() if len(metrics) == 1 else "score"


def scores_by_metric(episodes: list[Episode], scores: list[float]) -> dict:
    """results.json's scores, one entry per metric the episodes are scored with: `accuracy` and
    `episode_accuracies` for the classification episodes (with their `chance`), and e.g. `pearson`
    and `episode_pearson` for the regression ones (chance 0; their sizes in `regression_examples`),
    each a mean with its 95% CI."""
    results = {}
    for metric in sorted({episode.metric for episode in episodes}):
        chosen = [(e, score) for e, score in zip(episodes, scores, strict=True) if e.metric == metric]
        values = [score for _, score in chosen]
        if metric == "accuracy":
            results["chance"] = sum(1 / e.n_way for e, _ in chosen) / len(chosen)
            results["accuracy"], results["episode_accuracies"] = mean_confidence_interval(values), values
        else:
            results[metric], results[f"episode_{metric}"] = mean_confidence_interval(values), values
            results["regression_examples"] = {  # N x K and N x Q (less where a small task caps the query)
                "support": sorted({len(e.support) for e, _ in chosen}),
                "query": sorted({len(e.query) for e, _ in chosen}),
            }
    return results


class EpisodicProtocol:
    """N-way K-shot Q-query episodes on held-out classes, fixed by `seed`: mean accuracy and 95% CI.
    A regression task's episodes (N x K support, N x Q query examples) are scored apart, by their metric.
    `folds` (a fold-based class split's `dataset.fold` values) makes `metanlp train` train and test one run
    per fold and report the mean over them (folds.py)."""

    def __init__(
        self,
        n_way: int = 5,
        k_shot: int = 5,
        q_query: int = 15,
        episodes: int = 600,
        seed: int = 2024,
        folds: list[int] | None = None,
        class_order: str = "shuffled",
        query: str = "balanced",
    ) -> None:
        if folds is not None and (not folds or len(set(folds)) < len(folds)):
            raise MetaNLPError(
                f"protocol.folds={list(folds)}; allowed: null or a list of distinct folds, e.g. [1,2,3,4,5]"
            )
        if episodes < 1:  # no test episodes: a run would end with results that have no score
            raise MetaNLPError(f"protocol.episodes={episodes} must be >= 1 (the number of test episodes)")
        self.n_way, self.k_shot, self.q_query = n_way, k_shot, q_query
        self.num_episodes, self.seed, self.folds = episodes, seed, folds
        self.class_order, self.query = class_order, query

    def sampler(self, split: EncodedSplit) -> EpisodeSampler:
        return EpisodeSampler(
            split,
            self.n_way,
            self.k_shot,
            self.q_query,
            seed=self.seed,
            class_order=self.class_order,
            query=self.query,
            key="protocol",
        )

    def episodes(self, split: EncodedSplit, count: int | None = None) -> list[Episode]:
        return self.sampler(split).episodes(self.num_episodes if count is None else count)

    def prepare(
        self,
        tokenizer,
        dataset: Dataset,
        split: str,
        encoder: nn.Module,
        device: torch.device,
        cache_dir: str | None = None,
        progress: bool = True,
    ) -> EncodedSplit:
        """The split the episodes are drawn from, tokenized once (and, where the encoder has frozen layers,
        their output computed once), from `cache_dir` when done before."""
        splits, _ = encode_splits(tokenizer, dataset, (split,), device, cache_dir)
        splits, seconds = cache_frozen_features(encoder, splits, progress, cache_dir)
        if seconds:
            log.info("frozen layers: their output for every example computed once, in %.2fs", seconds)
        return splits[split]

    def score(self, algo: Algorithm, split: EncodedSplit, device: torch.device, progress: bool = True) -> dict:
        """Adapt on each fixed episode's support set, score its query set; results.json's fields."""
        torch.manual_seed(self.seed)  # for any randomness inside adaptation: `metanlp eval` reproduces it
        algo, split = fixed_encoder_view(algo, split, progress=progress)
        sampler = self.sampler(split)
        episodes = sampler.episodes(self.num_episodes)
        scores = episode_scores(algo, episodes, device, f"{split.name} episodes", progress)
        ways = sorted({episode.n_way for episode in episodes if episode.n_way}) or [self.n_way]
        results = {
            "protocol": "episodic",
            "split": split.name,
            "n_way": ways[0] if len(ways) == 1 else ways,  # a task collection's tasks may have fewer labels
            "k_shot": self.k_shot,
            "q_query": self.q_query,
            "episodes": self.num_episodes,
            "seed": self.seed,
            **scores_by_metric(episodes, scores),
        }
        if (self.class_order, self.query) != ("shuffled", "balanced"):
            results["class_order"], results["query"] = self.class_order, self.query
        if sampler.capped_query_sizes:
            results["q_query_per_task"] = sampler.capped_query_sizes  # tasks whose classes cannot hold q_query
        return results
