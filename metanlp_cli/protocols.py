"""Named evaluation protocols: how a (meta-)trained model is scored."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from metanlp_cli.algorithms.base import Algorithm
from metanlp_cli.data.types import EncodedSplit
from metanlp_cli.metrics import accuracy, mean_confidence_interval
from metanlp_cli.sampling import Episode, EpisodeSampler


def episode_accuracies(
    algo: Algorithm, episodes: list[Episode], device: torch.device, description: str = "eval", progress: bool = True
) -> list[float]:
    """Adapt on each support set (with gradients where the algorithm needs them), score the query."""
    algo.eval()
    scores = []
    for episode in tqdm(episodes, desc=description, leave=False, disable=not progress, dynamic_ncols=True):
        episode = episode.to(device)
        with torch.enable_grad():
            learner = algo.adapt(episode.support)
        with torch.no_grad():
            scores.append(accuracy(learner(episode.query.inputs), episode.query.labels))
    return scores


class EpisodicProtocol:
    """N-way K-shot Q-query episodes on held-out classes, fixed by `seed`: mean accuracy and 95% CI."""

    def __init__(
        self, n_way: int = 5, k_shot: int = 5, q_query: int = 15, episodes: int = 600, seed: int = 2024
    ) -> None:
        self.n_way, self.k_shot, self.q_query = n_way, k_shot, q_query
        self.num_episodes, self.seed = episodes, seed

    def sampler(self, split: EncodedSplit) -> EpisodeSampler:
        return EpisodeSampler(split, self.n_way, self.k_shot, self.q_query, seed=self.seed, key="protocol")

    def episodes(self, split: EncodedSplit, count: int | None = None) -> list[Episode]:
        return self.sampler(split).episodes(self.num_episodes if count is None else count)

    def run(self, algo: Algorithm, split: EncodedSplit, device: torch.device, progress: bool = True) -> dict:
        torch.manual_seed(self.seed)  # for any randomness inside adaptation: `metanlp eval` reproduces it
        sampler = self.sampler(split)
        episodes = sampler.episodes(self.num_episodes)
        scores = episode_accuracies(algo, episodes, device, f"{split.name} episodes", progress)
        ways = sorted({episode.n_way for episode in episodes})
        results = {
            "protocol": "episodic",
            "split": split.name,
            "n_way": ways[0] if len(ways) == 1 else ways,  # a task collection's tasks may have fewer labels
            "k_shot": self.k_shot,
            "q_query": self.q_query,
            "episodes": self.num_episodes,
            "seed": self.seed,
            "chance": sum(1 / episode.n_way for episode in episodes) / len(episodes),
            "accuracy": mean_confidence_interval(scores),
            "episode_accuracies": scores,
        }
        if sampler.capped_query_sizes:
            results["q_query_per_task"] = sampler.capped_query_sizes  # tasks whose classes cannot hold q_query
        return results
