"""Named evaluation protocols: how a (meta-)trained model is scored."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from metanlp_cli.algorithms.base import Algorithm, Learner
from metanlp_cli.algorithms.finetune import fit_linear_probe
from metanlp_cli.algorithms.inner_loop import InnerLoop, require_lr
from metanlp_cli.data.types import EncodedSplit, Task
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.metrics import accuracy, mean_confidence_interval, task_scores
from metanlp_cli.sampling import Batch, Episode, EpisodeSampler


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
    ) -> None:
        if folds is not None and (not folds or len(set(folds)) < len(folds)):
            raise MetaNLPError(
                f"protocol.folds={list(folds)}; allowed: null or a list of distinct folds, e.g. [1,2,3,4,5]"
            )
        if episodes < 1:  # no test episodes: a run would end with results that have no score
            raise MetaNLPError(f"protocol.episodes={episodes} must be >= 1 (the number of test episodes)")
        self.n_way, self.k_shot, self.q_query = n_way, k_shot, q_query
        self.num_episodes, self.seed, self.folds = episodes, seed, folds

    def sampler(self, split: EncodedSplit) -> EpisodeSampler:
        return EpisodeSampler(split, self.n_way, self.k_shot, self.q_query, seed=self.seed, key="protocol")

    def episodes(self, split: EncodedSplit, count: int | None = None) -> list[Episode]:
        return self.sampler(split).episodes(self.num_episodes if count is None else count)

    def run(self, algo: Algorithm, split: EncodedSplit, device: torch.device, progress: bool = True) -> dict:
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
        if sampler.capped_query_sizes:
            results["q_query_per_task"] = sampler.capped_query_sizes  # tasks whose classes cannot hold q_query
        return results


@dataclass(frozen=True)
class KShotTask:
    """One training set of a task (`sst2-seed13`): its whole K-shot train split as one support set, and
    the evaluation split it is scored on. `group` is the benchmark task the training set belongs to
    (the training sets of a group share their evaluation split, as LM-BFF's seeds share the test set).
    A regression task (STS-B) has float labels and no classes."""

    name: str
    group: str
    support: Batch
    evaluation_inputs: torch.Tensor
    evaluation_labels: torch.Tensor
    evaluation_split: str
    metrics: list[str]
    regression: bool = False


def predict(learner, inputs: torch.Tensor, batch_size: int, regression: bool) -> torch.Tensor:
    """The learner's predictions for `inputs` (its single output where `regression`, else the argmax
    class), scored `batch_size` rows at a time."""
    with torch.no_grad():
        outputs = torch.cat([learner(chunk) for chunk in inputs.split(batch_size)])
    return outputs.squeeze(-1) if regression else outputs.argmax(dim=-1)


class KShotProtocol:
    """LM-BFF / LEOPARD style: for each training set of a task (one per seed), adapt on all its K
    examples per label and score the task's full evaluation split with the task's own metrics;
    report each metric's mean and sample standard deviation over the training sets. A regression
    task gets a 1-output head fitted with the MSE loss on the encoder's features (`regression_head`).

    A task's main score (what the average over tasks takes) is its `first` declared metric, as LM-BFF
    reports one per task (MRPC F1, STS-B Pearson), or GLUE's `combined` score (the mean of its metrics)."""

    name = "kshot"
    # Which split of a task is scored for `split=...`, in order of preference (GLUE hides its test labels).
    evaluation_splits = {"test": ("test", "dev"), "val": ("dev",)}

    def __init__(
        self,
        batch_size: int = 64,
        seed: int = 2024,
        regression_head: InnerLoop = InnerLoop(steps=100, lr=0.01),
        score: str = "first",
    ) -> None:
        if batch_size < 1:
            raise MetaNLPError(f"protocol.batch_size={batch_size}; allowed: an integer >= 1")
        if score not in ("first", "combined"):
            raise MetaNLPError(f"protocol.score={score!r}; allowed: first, combined")
        require_lr(regression_head, "protocol.regression_head", learned=False)
        self.batch_size, self.seed, self.regression_head, self.score = batch_size, seed, regression_head, score

    def training_sets(self, task: Task) -> list[tuple[str, np.ndarray | None]]:
        """The support sets of a task, as (name, rows of its train split); None = the whole split."""
        return [(task.name, None)]

    def fixed_encoder_tasks(
        self, algo: Algorithm, encoder: nn.Module, tasks: list[KShotTask], progress: bool
    ) -> tuple[Algorithm, nn.Module, list[KShotTask]]:
        """As `fixed_encoder_view` does for episodes: where adapting leaves the encoder as it is and the
        inputs are cached frozen-layer outputs, every support set and evaluation split (shared by the
        training sets of a task) is encoded once, and the algorithm's view runs on those features."""
        fixed = algo.with_fixed_encoder()
        if fixed is None or not all(task.support.inputs.is_floating_point() for task in tasks):
            return algo, encoder, tasks
        fixed_encoder, view = fixed
        algo.eval()
        features: dict[int, torch.Tensor] = {}

        def encoded(inputs: torch.Tensor) -> torch.Tensor:
            if id(inputs) not in features:  # the tasks' tensors stay alive: ids are not reused
                features[id(inputs)] = encode_rows(fixed_encoder, inputs, self.batch_size, "encode", progress)
            return features[id(inputs)]

        tasks = [
            dataclasses.replace(
                task,
                support=Batch(encoded(task.support.inputs), task.support.labels, task.support.classes),
                evaluation_inputs=encoded(task.evaluation_inputs),
            )
            for task in tasks
        ]
        return view, view.encoder, tasks

    def adapt(self, algo: Algorithm, encoder: nn.Module, task: KShotTask) -> Learner:
        with torch.enable_grad():
            if task.regression:
                return fit_linear_probe(encoder, task.support, self.regression_head)
            return algo.adapt(task.support)

    def run(
        self, algo: Algorithm, encoder: nn.Module, tasks: list[KShotTask], device: torch.device, progress: bool = True
    ) -> dict:
        """`encoder` is the algorithm's own (what a regression head is fitted on)."""
        torch.manual_seed(self.seed)  # for any randomness inside adaptation (fine-tuning's batches)
        algo, encoder, tasks = self.fixed_encoder_tasks(algo, encoder, tasks, progress)
        algo.eval()
        groups: dict[str, dict] = {}
        for task in tqdm(tasks, desc=f"{self.name} tasks", leave=False, disable=not progress, dynamic_ncols=True):
            learner = self.adapt(algo, encoder, task)
            predictions = predict(learner, task.evaluation_inputs, self.batch_size, task.regression)
            scores = task_scores(task.metrics, predictions.cpu().numpy(), task.evaluation_labels.cpu().numpy())
            per_label = [] if task.regression else sorted(set(torch.bincount(task.support.labels).tolist()))
            group = groups.setdefault(
                task.group,
                {
                    "metrics": task.metrics,
                    "regression": task.regression,
                    "evaluation_split": task.evaluation_split,
                    "evaluation_examples": len(task.evaluation_labels),
                    "support_examples": [],
                    **({} if task.regression else {"k_shot": []}),
                    "training_sets": {},
                },
            )
            # The sizes of the training sets (and examples per label): one value each, as a rule.
            group["support_examples"] = sorted({*group["support_examples"], len(task.support)})
            if not task.regression:
                group["k_shot"] = sorted({*group["k_shot"], *per_label})
            group["training_sets"][task.name] = scores
        for group in groups.values():
            runs = list(group["training_sets"].values())
            group["scores"] = {name: mean_confidence_interval([run[name] for run in runs]) for name in runs[0]}
            main = "combined" if self.score == "combined" and "combined" in runs[0] else group["metrics"][0]
            group["score_metric"] = main
            group["score"] = group["scores"][main]
        return {
            "protocol": self.name,
            "seed": self.seed,
            "score": self.score,
            "tasks": groups,
            "average": sum(group["score"]["mean"] for group in groups.values()) / len(groups),
        }


def k_shot_rows(labels: Sequence[int] | Sequence[float], k_shot: int, regression: bool, seed: int) -> np.ndarray:
    """A seeded K-shot sample of a train split's rows: K per label, or 2K examples of a regression task
    (the size of a binary task's K-shot set). The same seed gives the same rows."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    if regression:
        if len(labels) < 2 * k_shot:
            raise ValueError(
                f"protocol.k_shot={k_shot} needs {2 * k_shot} examples but the train split has {len(labels)}"
            )
        return np.sort(rng.choice(len(labels), size=2 * k_shot, replace=False))
    rows = []
    for label in np.unique(labels):
        of_label = np.flatnonzero(labels == label)
        if len(of_label) < k_shot:
            raise ValueError(f"protocol.k_shot={k_shot} but label {label} has {len(of_label)} train examples")
        rows.append(rng.choice(of_label, size=k_shot, replace=False))
    return np.sort(np.concatenate(rows))


class GlueLowResourceProtocol(KShotProtocol):
    """Dou et al. 2019 style, GLUE-like: for each target task of the collection, adapt on its train split
    (all of it; or, with `k_shot`, K examples per label sampled per seed of `seeds`) and score its dev
    split with the task's metrics; report each task (mean and std over the seeds) and the average of the
    tasks' main scores (GLUE's combined score by default)."""

    name = "glue_lowres"
    evaluation_splits = {"test": ("dev",)}  # GLUE hides its test labels: scores are on dev, as in the paper

    def __init__(
        self,
        batch_size: int = 64,
        seed: int = 2024,
        regression_head: InnerLoop = InnerLoop(steps=100, lr=0.01),
        score: str = "combined",
        k_shot: int | None = None,
        seeds: list[int] = (1, 2, 3, 4, 5),
    ) -> None:
        super().__init__(batch_size, seed, regression_head, score)
        if k_shot is not None and k_shot < 1:
            raise MetaNLPError(f"protocol.k_shot={k_shot}; allowed: null (the whole train split) or an integer >= 1")
        if k_shot is not None and not seeds:
            raise MetaNLPError("protocol.seeds is empty; with protocol.k_shot give at least one seed")
        self.k_shot, self.seeds = k_shot, list(seeds)

    def training_sets(self, task: Task) -> list[tuple[str, np.ndarray | None]]:
        if self.k_shot is None:
            return [(task.name, None)]
        try:
            return [
                (f"{task.name}-seed{seed}", k_shot_rows(task.train.labels, self.k_shot, task.regression, seed))
                for seed in self.seeds
            ]
        except ValueError as error:
            raise MetaNLPError(f"task {task.name}: {error}") from None


class ArscProtocol(KShotProtocol):
    """ARSC (Yu et al. 2018): for each target task of `dataset=arsc`, adapt on its 5-shot support file
    (the task's train split) and score its test file's accuracy; report each task and the mean over
    the targets. This is the k-shot protocol where every task has one training set."""

    name = "arsc"
