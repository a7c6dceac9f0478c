"""The k-shot protocols (LM-BFF, LEOPARD; GLUE low-resource and ARSC are variants): whole tasks, each
training set of a task adapted on and the task's evaluation split scored with its own metrics."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from metanlp_cli.algorithms.base import Algorithm, Learner
from metanlp_cli.algorithms.finetune import fit_linear_probe
from metanlp_cli.algorithms.inner_loop import InnerLoop, require_lr
from metanlp_cli.components import Dataset
from metanlp_cli.data.cache import FeatureCache, TokenCache, frozen_features_of
from metanlp_cli.data.types import Task, TaskCollection
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.metrics import task_scores
from metanlp_cli.protocols.episodic import encode_rows
from metanlp_cli.sampling import Batch
from metanlp_cli.stats import mean_confidence_interval

log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class KShotTasks:
    """What a k-shot protocol scores: the training sets of its tasks, and the algorithm's encoder (what the
    frozen features were computed with, and what a regression head is fitted on)."""

    tasks: list[KShotTask]
    encoder: nn.Module


def predict(learner, inputs: torch.Tensor, batch_size: int, regression: bool) -> torch.Tensor:
    """The learner's predictions for `inputs` (its single output where `regression`, else the argmax
    class), scored `batch_size` rows at a time, in the rows' order. Token ids are scored shortest first:
    a learner that runs the encoder itself cuts each chunk to its longest row (`AdaptedEncoderLearner`),
    so rows of like length in a chunk mean little padding (a row's prediction does not depend on its
    chunk: padding is masked)."""
    order = None if inputs.is_floating_point() else torch.argsort((inputs != 0).sum(1), stable=True)
    with torch.no_grad():
        outputs = torch.cat(
            [learner(chunk) for chunk in (inputs if order is None else inputs[order]).split(batch_size)]
        )
    if order is not None:
        outputs = torch.empty_like(outputs).index_copy_(0, order, outputs)
    return outputs.squeeze(-1) if regression else outputs.argmax(dim=-1)


class KShotProtocol:
    """LM-BFF / LEOPARD style: for each training set of a task (one per seed), adapt on all its K
    examples per label and score the task's full evaluation split with the task's own metrics;
    report each metric's mean and sample standard deviation over the training sets. A regression
    task gets a 1-output head fitted with the MSE loss on the encoder's features (`regression_head`),
    unless the algorithm adapts one itself (`Algorithm.adapt_regression`: fine-tuning the encoder).

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
        self.batch_size, self.seed, self.regression_head, self.main_score = batch_size, seed, regression_head, score

    def training_sets(self, task: Task) -> list[tuple[str, np.ndarray | None]]:
        """The support sets of a task, as (name, rows of its train split); None = the whole split."""
        return [(task.name, None)]

    def prepare(
        self,
        tokenizer,
        dataset: Dataset,
        split: str,
        encoder: nn.Module,
        device: torch.device,
        cache_dir: str | None = None,
        progress: bool = True,
    ) -> KShotTasks:
        """Each target task of a collection as the protocol's training sets (rows of its train split, each one
        support set) and the evaluation split that `split` asks for. Every split (or the rows of it that the
        training sets use) is tokenized, and for a frozen encoder embedded, once: LM-BFF's seeds share their
        test set. The training sets of a task are reported together, under its `group` (or its name)."""
        named = f"protocol={self.name}"
        if not isinstance(dataset, TaskCollection):
            raise MetaNLPError(
                f"{named} needs a task collection (e.g. dataset=lmbff/sst2); {dataset.name} is a class split"
            )
        if split not in self.evaluation_splits:
            allowed = ", ".join(self.evaluation_splits)
            raise MetaNLPError(f"split={split!r} with {named}; allowed: {allowed} (the train split is the support set)")
        wanted = self.evaluation_splits[split]
        cache, inputs_of, chosen = TokenCache(tokenizer, cache_dir), {}, []
        for task in dataset.phase_tasks("test"):
            evaluation_split = next((s for s in wanted if task.split(s) is not None), None)
            if task.train is None or evaluation_split is None:
                raise MetaNLPError(
                    f"task {task.name} of {dataset.name} needs a train split and a {' or '.join(wanted)} split "
                    f"for {named}"
                )
            training_sets = self.training_sets(task)
            used = [rows for _, rows in training_sets]
            train_rows = None if any(rows is None for rows in used) else np.unique(np.concatenate(used))
            evaluation = task.split(evaluation_split)
            # Keyed by the texts' identity and the rows taken: the training sets of a task share its evaluation split.
            train_key = (id(task.train), None if train_rows is None else train_rows.tobytes())
            for key, texts, rows in ((train_key, task.train, train_rows), ((id(evaluation), None), evaluation, None)):
                if key not in inputs_of:
                    inputs_of[key] = cache.encode(texts.texts if rows is None else [texts.texts[i] for i in rows])[0]
                    inputs_of[key] = inputs_of[key].to(device)
            chosen.append((task, evaluation_split, training_sets, train_rows, train_key))
        start, features_cache, from_cache = time.perf_counter(), FeatureCache(encoder, cache_dir), 0
        for key, inputs in inputs_of.items():
            features, hit = frozen_features_of(encoder, inputs, progress, features_cache)
            if features is None:
                break
            inputs_of[key] = features
            from_cache += hit
        else:
            seconds = time.perf_counter() - start
            log.info("frozen layers: their output for every example computed once, in %.2fs", seconds)
            if features_cache.cache_dir is not None:
                log.info("features from cache: %d of %d splits, in %s", from_cache, len(inputs_of), cache_dir)

        tasks = []
        for task, evaluation_split, training_sets, train_rows, train_key in chosen:
            evaluation, train_inputs = task.split(evaluation_split), inputs_of[train_key]
            label_type = torch.float32 if task.regression else torch.int64
            train_labels = torch.tensor(task.train.labels, dtype=label_type, device=device)
            for name, rows in training_sets:
                if rows is None:
                    support_inputs, support_labels = train_inputs, train_labels
                else:  # the encoded rows are `train_rows`: find these among them
                    positions = torch.as_tensor(np.searchsorted(train_rows, rows), device=device)
                    support_inputs = train_inputs[positions]
                    support_labels = train_labels[torch.as_tensor(rows, device=device)]
                support = Batch(support_inputs, support_labels, torch.arange(len(task.label_names), device=device))
                tasks.append(
                    KShotTask(
                        name,
                        task.group or task.name,
                        support,
                        inputs_of[(id(evaluation), None)],
                        torch.tensor(evaluation.labels, dtype=label_type, device=device),
                        evaluation_split,
                        task.metrics,
                        task.regression,
                    )
                )
        return KShotTasks(tasks, encoder)

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
            if not task.regression:
                return algo.adapt(task.support)
            learner = algo.adapt_regression(task.support)  # the algorithm's own (whole-encoder fine-tuning), or
            return learner if learner is not None else fit_linear_probe(encoder, task.support, self.regression_head)

    def score(self, algo: Algorithm, prepared: KShotTasks, device: torch.device, progress: bool = True) -> dict:
        """Adapt on each training set, score its task's evaluation split; results.json's fields."""
        torch.manual_seed(self.seed)  # for any randomness inside adaptation (fine-tuning's batches)
        algo, encoder, tasks = self.fixed_encoder_tasks(algo, prepared.encoder, prepared.tasks, progress)
        algo.eval()
        groups: dict[str, dict] = {}
        for task in tqdm(tasks, desc=f"{self.name} tasks", leave=False, disable=not progress, dynamic_ncols=True):
            learner = self.adapt(algo, encoder, task)
            predictions = predict(learner, task.evaluation_inputs, self.batch_size, task.regression)
            labels = task.evaluation_labels.cpu().numpy()
            scores = task_scores(task.metrics, predictions.cpu().numpy(), labels)
            record_training_set(
                groups, task.group, task.name, task.metrics, task.regression, task.evaluation_split, len(labels),
                task.support.labels.tolist(), scores,
            )  # fmt: skip
        return {
            "protocol": self.name,
            "seed": self.seed,
            "score": self.main_score,
            **summarise_groups(groups, self.main_score),
        }


def record_training_set(
    groups: dict[str, dict],
    group: str,
    name: str,
    metrics: list[str],
    regression: bool,
    evaluation_split: str,
    evaluation_examples: int,
    support_labels: list,
    scores: dict[str, float],
) -> None:
    """Add one training set's scores to its task's group (results.json's `tasks`), with the sizes of the
    training sets (and examples per label): one value each, as a rule. A peer that adapts on the same
    training sets (reproduce/peers.py) reports through here too, so its results pair with ours."""
    entry = groups.setdefault(
        group,
        {
            "metrics": metrics,
            "regression": regression,
            "evaluation_split": evaluation_split,
            "evaluation_examples": evaluation_examples,
            "support_examples": [],
            **({} if regression else {"k_shot": []}),
            "training_sets": {},
        },
    )
    entry["support_examples"] = sorted({*entry["support_examples"], len(support_labels)})
    if not regression:
        entry["k_shot"] = sorted({*entry["k_shot"], *Counter(support_labels).values()})
    entry["training_sets"][name] = scores


def summarise_groups(groups: dict[str, dict], main_score: str) -> dict:
    """Each task's metrics over its training sets (mean, std, CI), its main score, and the average of
    the tasks' main scores: results.json's `tasks` and `average`."""
    for group in groups.values():
        runs = list(group["training_sets"].values())
        group["scores"] = {name: mean_confidence_interval([run[name] for run in runs]) for name in runs[0]}
        main = "combined" if main_score == "combined" and "combined" in runs[0] else group["metrics"][0]
        group["score_metric"] = main
        group["score"] = group["scores"][main]
    return {"tasks": groups, "average": sum(group["score"]["mean"] for group in groups.values()) / len(groups)}


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
