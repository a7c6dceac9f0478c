"""Methods from outside metanlp, run on our training and test sets:

- `setfit`: the alternative a user would try first, the `setfit` package (Tunstall et al. 2022) with its
  default training arguments, on the benchmark's own encoder: the same all-MiniLM-L6-v2 directory
  (`backbone=minilm`), or multilingual-e5-small's rebuilt directory (`backbone=me5_small`, SIB-200) with E5's
  `query: ` prefix, mean pooling and L2 normalisation;
- `majority`: a constant, each task's most frequent test label (with hindsight): the floor a method
  must clear where the test sets are unbalanced (ARSC's are 57-94% positive).

    python -m reproduce.peers --peer setfit|majority --out DIR [--episodes N] OVERRIDE...

The overrides compose a train config (the benchmark's preset, then its evaluation's overrides, e.g.
`experiment=arsc protocol=arsc`), whose dataset and task protocol give the tasks and each task's
training sets exactly as `metanlp eval` chooses them; DIR/results.json is written in the k-shot
protocol's format (each task's training sets, mean and std over them, the average), so `make results`
and `metanlp report` pair it with metanlp's methods set by set. SetFit classifies single texts: a sentence
pair (MRPC, QNLI) is given to it as one text, the two sentences joined by the encoder's separator token
(`first [SEP] second`, which its tokenizer reads as the special token), the way a user would feed it pairs;
regression tasks (STS-B) are left out with a note. The package missing is one line.

Under an episodic protocol (HuffPost, BANKING77, ...) the setfit peer trains on each fixed test episode's
support set and scores its query set: the first `--episodes` of the episodes metanlp's runs are scored on
(episode i is a function of the protocol's seed and i alone), so `make results` pairs it with every method
over those episodes. SetFit trains a model per episode, so it runs on a prefix of the 600-1,000 episodes.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from metanlp_cli.backbones import me5
from metanlp_cli.backbones.pretrained import resolve_model_path
from metanlp_cli.components import encode_splits, load_dataset
from metanlp_cli.compose import check_composition, config_search_path
from metanlp_cli.config import build
from metanlp_cli.data.types import TaskCollection
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.metrics import task_scores
from metanlp_cli.protocols.episodic import EpisodicProtocol
from metanlp_cli.protocols.kshot import KShotProtocol, record_training_set, summarise_groups
from metanlp_cli.stats import mean_confidence_interval
from reproduce.plan import EPISODE_PREFIX

PACKAGE = "setfit"
MISSING = f"the {PACKAGE} package is not installed (the peers extra: pip install 'metanlp_cli[peers]')"


def available() -> bool:
    return importlib.util.find_spec(PACKAGE) is not None


@dataclass(frozen=True)
class SetFitEncoder:
    """The encoder SetFit starts from: the benchmark's own (`backbone`), as a directory, and the prefix its
    texts get (E5's `query: `)."""

    backbone: str  # minilm | me5_small
    directory: str
    prefix: str = ""


def setfit_encoder(cfg) -> SetFitEncoder:
    """The preset's pretrained encoder for SetFit: all-MiniLM-L6-v2's sentence-transformers directory, or
    multilingual-e5-small's rebuilt directory (`backbone=me5_small`, with its `query: ` prefix)."""
    name = str(cfg.backbone.get("name_or_path"))
    if name == "minilm":
        return SetFitEncoder(name, resolve_model_path(name, "backbone.name_or_path")[0])
    if name == me5.PACKAGED_NAME:
        return SetFitEncoder(name, str(me5.model_directory(cfg.backbone.cache_dir)), cfg.backbone.prefix)
    raise MetaNLPError(
        f"peers: backbone.name_or_path={name!r}: the setfit peer runs on minilm or {me5.PACKAGED_NAME} (offline)"
    )


def setfit_model(encoder: SetFitEncoder):
    """A SetFit model over `encoder`: its sentence-transformers directory as it is (MiniLM's modules: mean
    pooling, normalisation), or for a plain transformers directory (the rebuilt E5) the modules E5's own
    sentence-transformers release has: mean pooling, then L2 normalisation. The head is SetFit's default."""
    from setfit import SetFitModel

    if (Path(encoder.directory) / "modules.json").is_file():
        return SetFitModel.from_pretrained(encoder.directory, local_files_only=True)
    from sentence_transformers import SentenceTransformer, models
    from sklearn.linear_model import LogisticRegression

    transformer = models.Transformer(encoder.directory, max_seq_length=128)
    pooling = models.Pooling(transformer.auto_model.config.hidden_size, pooling_mode="mean")
    body = SentenceTransformer(modules=[transformer, pooling, models.Normalize()], device="cpu")
    return SetFitModel(model_body=body, model_head=LogisticRegression())


def setfit_predictions(
    encoder: SetFitEncoder, texts: list[str], labels: list[int], evaluation: list[str], seed: int, scratch: Path
):
    """Train SetFit with its default arguments on one training set; its predictions on `evaluation`.
    What it writes (its trainer's output folder) goes under `scratch`, not into the working directory."""
    from datasets import Dataset
    from setfit import Trainer, TrainingArguments

    model = setfit_model(encoder)
    texts, evaluation = ([encoder.prefix + text for text in part] for part in (texts, evaluation))
    arguments = TrainingArguments(  # the default training arguments; only where it writes and logs is set
        seed=seed,
        report_to="none",
        show_progress_bar=False,
        output_dir=str(scratch),
        logging_dir=str(scratch / "logs"),
        save_strategy="no",
    )
    trainer = Trainer(model=model, args=arguments, train_dataset=Dataset.from_dict({"text": texts, "label": labels}))
    trainer.train()
    return [int(p) for p in model.predict(evaluation, batch_size=64, show_progress_bar=False)]


def single_texts(texts: list, separator: str) -> list[str]:
    """SetFit's input: each text as it is, a sentence pair as one text joined by `separator` (the encoder's
    own separator token, e.g. `[SEP]`)."""
    return [text if isinstance(text, str) else f" {separator} ".join(text) for text in texts]


def separator_token(model_dir: str) -> str:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir, local_files_only=True).sep_token


def majority_predictions(labels: list[int], evaluation_labels: list[int]) -> list[int]:
    """The evaluation split's most frequent label for every example (ties: the smaller label)."""
    counts = {label: evaluation_labels.count(label) for label in sorted(set(evaluation_labels))}
    return [max(counts, key=counts.get)] * len(evaluation_labels)


PEERS = {"setfit": "setfit (package)", "majority": "majority label"}
EPISODIC = "metanlp_cli.protocols.EpisodicProtocol"  # the episodic protocols' `_target_` (configs/protocol/)


class RowIds:
    """A stand-in tokenizer: each text becomes one id of its own (1, 2, ...), so that the episodes an
    episodic protocol draws from the encoded split name the texts they hold (`texts_of`)."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def encode(self, texts) -> torch.Tensor:
        start = len(self.texts)
        self.texts.extend(texts)
        return torch.arange(start + 1, len(self.texts) + 1).unsqueeze(1)

    def texts_of(self, inputs: torch.Tensor) -> list[str]:
        return [self.texts[int(row_id) - 1] for row_id in inputs[:, 0]]


def episodic_results(
    protocol: EpisodicProtocol, dataset, count: int, encoder: SetFitEncoder, seed: int, scratch: Path
) -> dict:
    """The setfit package trained on the support set of each of the protocol's first `count` fixed test
    episodes, scored on its query set: results.json's episodic fields (the accuracies in episode order)."""
    rows = RowIds()
    split = encode_splits(rows, dataset, ("test",), torch.device("cpu"))[0]["test"]
    episodes = protocol.episodes(split, min(count, protocol.num_episodes))
    accuracies = []
    for index, episode in enumerate(episodes):
        if episode.support.is_regression:
            raise MetaNLPError("peers: setfit classifies; this protocol's episodes are regression episodes")
        labels = episode.support.labels.tolist()
        print(f"   setfit: episode {index + 1} of {len(episodes)} ({len(labels)} examples)", flush=True)
        predictions = setfit_predictions(
            encoder, rows.texts_of(episode.support.inputs), labels, rows.texts_of(episode.query.inputs), seed, scratch
        )
        accuracies.append(float((torch.tensor(predictions) == episode.query.labels).double().mean()))
    return {
        "protocol": "episodic",
        "split": "test",
        "n_way": protocol.n_way,
        "k_shot": protocol.k_shot,
        "q_query": protocol.q_query,
        "episodes": len(episodes),
        "of_episodes": protocol.num_episodes,
        "seed": protocol.seed,
        "accuracy": mean_confidence_interval(accuracies),
        "episode_accuracies": accuracies,
    }


def as_train_overrides(overrides: list[str]) -> list[str]:
    """The overrides as the peer composes them: on the preset's train config, where `metanlp eval` merges an
    evaluation's overrides over the checkpoint's config. An evaluation's addition (`+dataset.k=1`,
    `+dataset.target_languages=null`) may name a key the preset already has, so it adds or overrides (`++`)."""
    return [f"+{o}" if o.startswith("+") and not o.startswith("++") else o for o in overrides]


def protocol_of(cfg, overrides: list[str]):
    """The protocol as `metanlp eval` builds it: its own group's config, not merged with the preset's episodic
    keys; an episodic one (no evaluation: the train run's own test) as `metanlp train` builds it, the preset's in."""
    if cfg.protocol._target_ == EPISODIC:
        return build(cfg.protocol, "protocol")
    protocol_overrides = [o for o in overrides if o.lstrip("+~").startswith("protocol")]
    return build(check_composition("train", protocol_overrides).protocol, "protocol")


def run(peer: str, overrides: list[str], out: Path, seed: int = 42, episodes: int = EPISODE_PREFIX) -> dict:
    if peer not in PEERS:
        raise MetaNLPError(f"peers: --peer {peer!r} is not known; allowed: {', '.join(PEERS)}")
    if peer == "setfit" and not available():
        raise MetaNLPError(MISSING)
    if episodes < 1:
        raise MetaNLPError(f"peers: --episodes {episodes}; allowed: an integer >= 1")
    overrides = as_train_overrides(overrides)
    cfg = check_composition("train", overrides)
    protocol = protocol_of(cfg, overrides)
    if isinstance(protocol, EpisodicProtocol) and peer == "setfit":
        started = time.perf_counter()
        encoder = setfit_encoder(cfg)
        results = episodic_results(protocol, load_dataset(cfg), episodes, encoder, seed, out / "setfit_trainer")
        shutil.rmtree(out / "setfit_trainer", ignore_errors=True)
        results |= {
            "dataset": dataset_choice(overrides),
            "algo": PEERS[peer],
            "backbone": encoder.backbone,
            "peer": setfit_fields(seed),
            "wall_seconds": time.perf_counter() - started,
        }
        return write_results(out, results)
    if not isinstance(protocol, KShotProtocol):
        raise MetaNLPError(
            f"peers: protocol={cfg.protocol._target_} is not a task protocol (kshot, arsc, glue_lowres)"
            + ("; the episodic protocols take --peer setfit only" if isinstance(protocol, EpisodicProtocol) else "")
        )
    dataset = load_dataset(cfg)
    if not isinstance(dataset, TaskCollection):
        raise MetaNLPError(f"peers: {dataset.name} is a class split; give a task collection (e.g. dataset=lmbff/sst2)")
    encoder = setfit_encoder(cfg) if peer == "setfit" else None
    groups, notes, left_out, started = {}, [], [], time.perf_counter()
    for task in dataset.phase_tasks("test"):
        if task.regression:
            notes.append(f"{task.name}: left out (regression)")
            left_out.append(task.group or task.name)  # the table's column (a task), not one training set
            continue
        separator = separator_token(encoder.directory) if encoder and task.is_pair else ""
        if separator:
            notes.append(f"{task.name}: each sentence pair joined into one text by {separator}")
        split = next(s for s in protocol.evaluation_splits["test"] if task.split(s) is not None)
        evaluation = task.split(split)
        for name, rows in protocol.training_sets(task):
            chosen = range(len(task.train.labels)) if rows is None else rows
            texts, labels = [task.train.texts[i] for i in chosen], [int(task.train.labels[i]) for i in chosen]
            print(f"   {peer}: {name} ({len(texts)} examples), scoring {len(evaluation.labels)}", flush=True)
            if peer == "setfit":
                predictions = setfit_predictions(
                    encoder,
                    single_texts(texts, separator),
                    labels,
                    single_texts(evaluation.texts, separator),
                    seed,
                    out / "setfit_trainer",
                )
            else:
                predictions = majority_predictions(labels, [int(label) for label in evaluation.labels])
            scores = task_scores(task.metrics, predictions, evaluation.labels)
            record_training_set(
                groups, task.group or task.name, name, task.metrics, False, split, len(evaluation.labels), labels,
                scores,
            )  # fmt: skip
    shutil.rmtree(out / "setfit_trainer", ignore_errors=True)  # its trainer's scratch: nothing there is a result
    if not groups:
        raise MetaNLPError(f"peers: no task of {dataset.name} is a classification task; " + "; ".join(notes))
    results = {
        "protocol": protocol.name,
        "seed": protocol.seed,
        "score": protocol.main_score,
        **summarise_groups(groups, protocol.main_score),
        "split": "test",
        "dataset": dataset_choice(overrides),  # as `metanlp eval` names it, so `metanlp report` pairs the runs
        "algo": PEERS[peer],
        "backbone": encoder.backbone if encoder else "none",
        "peer": (
            setfit_fields(seed)
            if peer == "setfit"
            else {"constant": "the most frequent label of each task's evaluation split"}
        ),
        "notes": notes,
        "left_out": list(dict.fromkeys(left_out)),  # tasks not scored: the average is over the others
        "wall_seconds": time.perf_counter() - started,
    }
    return write_results(out, results)


def setfit_fields(seed: int) -> dict:
    """What results.json says of the setfit package run."""
    return {"package": PACKAGE, "version": package_version(), "training_arguments": "defaults", "seed": seed}


def write_results(out: Path, results: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    return results


def dataset_choice(overrides: list[str]) -> str:
    """The dataset group's choice (`arsc`, `lmbff/sst2`), from the preset or the overrides."""
    from hydra import compose

    with config_search_path("train"):
        return str(compose("train", overrides=overrides, return_hydra_config=True).hydra.runtime.choices.dataset)


def package_version() -> str:
    from importlib.metadata import version

    return version(PACKAGE)


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reproduce.peers", description=__doc__.splitlines()[0])
    parser.add_argument("--peer", choices=sorted(PEERS), default="setfit")
    parser.add_argument("--out", type=Path, required=True, help="the run directory for results.json")
    parser.add_argument("--seed", type=int, default=42, help="SetFit's seed (its default, 42)")
    parser.add_argument(
        "--episodes",
        type=int,
        default=EPISODE_PREFIX,
        help="episodic protocols: SetFit on the first N fixed test episodes",
    )
    parser.add_argument("overrides", nargs="*", help="a train config's overrides: the preset, then the evaluation's")
    return parser


def main() -> None:
    options = argument_parser().parse_args()
    logging.basicConfig(level=logging.WARNING)
    try:
        results = run(options.peer, options.overrides, options.out, options.seed, options.episodes)
    except MetaNLPError as error:
        raise SystemExit(f"error: {error}") from None
    score = results["accuracy"]["mean"] if "accuracy" in results else results["average"]
    print(f"{PEERS[options.peer]}: {100 * score:.2f} -> {options.out / 'results.json'}")


if __name__ == "__main__":
    sys.exit(main())
