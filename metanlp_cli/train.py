"""The train recipe: data -> tokenizer -> model -> meta-training with validation -> test results.

Reads top to bottom; every building block lives in its own module.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from metanlp_cli import distributed, loggers
from metanlp_cli.algorithms.base import Algorithm, LabelSpace
from metanlp_cli.algorithms.meta_step import meta_batch_episodes, meta_step
from metanlp_cli.checkpoint import (
    StopOnSignal,
    load_checkpoint,
    prepare_run_directory,
    restore_training_state,
    save_checkpoints,
    training_state,
    truncate_metrics,
)
from metanlp_cli.components import (
    build_algorithm,
    build_encoder,
    encode_splits,
    load_dataset,
    resolve_device,
    training_texts,
)
from metanlp_cli.config import TrainerConfig, build, validate
from metanlp_cli.data.cache import cache_frozen_features
from metanlp_cli.data.types import EncodedSplit
from metanlp_cli.divergence import check_meta_loss
from metanlp_cli.errors import MetaNLPError, RunInterrupted
from metanlp_cli.evaluate import check_evaluations, run_evaluations
from metanlp_cli.protocols import EpisodicProtocol, episode_scores, fixed_encoder_view, score_name
from metanlp_cli.results import summary_line, write_results
from metanlp_cli.stats import format_score, mean_confidence_interval

log = logging.getLogger(__name__)

# Unlike cross-entropy, whose gradient saturates, the MSE inner loop diverges once lr exceeds about
# 1 / (the features' squared norm): ~0.003 for the word CNN at initialisation (README, Regression).
REGRESSION_HINT = (
    " (regression tasks: the MSE inner loop needs a much smaller inner rate, algo.inner_train.lr or algo.init_lr,"
    " e.g. 0.001 with backbone=cnn)"
)


def outer_optimizer(algo: Algorithm, cfg: DictConfig, encoder: torch.nn.Module) -> torch.optim.Optimizer | None:
    """The meta-optimizer (`optim=`, a torch.optim class) over the trainable parameters; None when every
    parameter is frozen. With `trainer.encoder_lr` the encoder's trained parameters take that step size
    and the rest (a head, a metric module) optim.lr: a pretrained layer wants ~3e-5, a new head ~1e-2."""
    parameters = [p for p in algo.parameters() if p.requires_grad]
    if not parameters:
        return None
    encoder_lr = cfg.trainer.get("encoder_lr")
    if encoder_lr is None:
        return build(cfg.optim, "optim", params=parameters)
    in_encoder = {id(p) for p in encoder.parameters()}
    groups = [
        {"params": [p for p in parameters if id(p) in in_encoder], "lr": encoder_lr},
        {"params": [p for p in parameters if id(p) not in in_encoder]},
    ]
    return build(cfg.optim, "optim", params=[group for group in groups if group["params"]])


def validate_and_checkpoint(
    algo: Algorithm,
    protocol: EpisodicProtocol,
    val_split: EncodedSplit,
    trainer: TrainerConfig,
    checkpoint_dir: Path,
    checkpoint: dict,
    optimizer: torch.optim.Optimizer | None,
    step: int,
    best_val: float,
    tracker: loggers.Loggers | None = None,
    episodes_per_s: float | None = None,
) -> tuple[dict, float]:
    """Score the validation episodes, write last.pt (and best.pt if better); returns the score and the best.

    The score is the mean of the episodes' scores (`protocols.episode_score`): accuracy, or a regression
    episode's metric (Pearson) where a task collection has regression tasks. Both are at most 1 and
    higher is better, so one mean ranks checkpoints; it is named after its metric (`score` when mixed).
    """
    device = next(algo.parameters()).device
    view, val_split = fixed_encoder_view(algo, val_split, progress=trainer.progress)  # ProtoNet: encode rows once
    val_episodes = protocol.episodes(val_split, trainer.val_episodes)  # the same episodes at every validation
    val = mean_confidence_interval(episode_scores(view, val_episodes, device, "validate", trainer.progress))
    state = {
        **checkpoint,
        **training_state(algo, optimizer, step, max(best_val, val["mean"])),
        "val_accuracy": val["mean"],  # the validation score, whatever its metric (`val_metric`)
        "val_metric": score_name(val_episodes),
    }
    if tracker is not None:  # before last.pt: a run killed between the two logs this validation again
        record = {"step": step, f"val_{state['val_metric']}": val["mean"], "val_ci95": val["ci95"]}
        tracker.log_metrics({**record, "episodes_per_s": episodes_per_s})
    save_checkpoints(checkpoint_dir, state, is_best=val["mean"] > best_val)
    return val, max(best_val, val["mean"])


def run(cfg: DictConfig, run_dir: Path, choices: dict[str, str]) -> float:
    """Meta-train, keep the best checkpoint by validation score, score it on the test protocol.

    Returns the best validation score (what a hyper-parameter search maximises): the accuracy, or
    where the validation episodes include regression ones, see `validate_and_checkpoint`.
    """
    trainer = validate(cfg.trainer, TrainerConfig, "trainer")
    ranks = distributed.start(trainer.distributed, resolve_device(trainer.device), trainer.meta_batch_size)
    device = ranks.device
    torch.manual_seed(trainer.seed)
    if ranks.is_main:  # under torchrun, rank 0 alone writes files
        prepare_run_directory(run_dir, cfg.get("resume"))
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    evaluations = check_evaluations(cfg.get("evaluations") or [])  # a bad one fails now, not after training
    tracker = loggers.open_loggers(cfg, run_dir, enabled=ranks.is_main)  # metrics.jsonl and cfg.logger's trackers

    # Data, tokenized once (or read from the cache): the vocabulary comes from the meta-train split only.
    dataset = load_dataset(cfg)
    tokenizer = build(cfg.backbone.tokenizer, "backbone.tokenizer").fit(training_texts(dataset))
    splits, seconds = encode_splits(tokenizer, dataset, ("train", "val", "test"), device, cfg.paths.get("cache_dir"))
    log.info(
        "%s: %s classes and %s regression tasks (train/val/test), vocabulary %d, tokenized in %.2fs",
        dataset.name,
        "/".join(str(len(splits[name].class_names)) for name in ("train", "val", "test")),
        "/".join(str(sum(task.regression for task in splits[name].tasks)) for name in ("train", "val", "test")),
        tokenizer.vocab_size,
        seconds,
    )

    # Model, episodes, optimizer. Validation and test episodes are fixed by the protocol's seed.
    regression = any(task.regression for task in splits["train"].tasks)
    label_space = LabelSpace(cfg.sampler.n_way, len(splits["train"].class_names), regression)
    encoder = build_encoder(cfg, tokenizer.vocab_size)
    algo = build_algorithm(cfg, encoder, label_space).to(device)
    # Nothing meta-trains (no step, or every parameter frozen): the train split is never sampled, so its
    # features are not computed (ARSC's 56,000 meta-training reviews would take a quarter of an hour).
    meta_trains = trainer.steps > 0 and any(p.requires_grad for p in algo.parameters())
    used = {name: split for name, split in splits.items() if meta_trains or name != "train"}
    cached, seconds = cache_frozen_features(encoder, used, trainer.progress, cfg.paths.get("cache_dir"))
    splits = {**splits, **cached}
    if seconds:
        log.info("frozen layers: their output for every example computed once, in %.2fs", seconds)
    sampler = build(cfg.sampler, "sampler", split=splits["train"], seed=trainer.seed)
    protocol = build(cfg.protocol, "protocol")
    if not isinstance(protocol, EpisodicProtocol):
        raise MetaNLPError(
            f"training validates on episodes; protocol={choices.get('protocol', '?')} is for metanlp eval"
        )
    for name in ("val", "test"):  # fail now, not after training, if a split cannot hold the protocol's episodes
        protocol.sampler(splits[name])
    val_name = score_name(protocol.episodes(splits["val"], trainer.val_episodes))  # accuracy; pearson; score (mixed)
    optimizer = outer_optimizer(algo, cfg, encoder)
    steps = trainer.steps if optimizer else 0
    start_step, best_val = restore_training_state(cfg.get("resume"), algo, optimizer)
    ranks.broadcast_state(algo)
    log.info(
        "%s with %s on %s: %d parameters, %d of them trained",
        choices.get("algo"),
        choices.get("backbone"),
        device,
        sum(p.numel() for p in algo.parameters()),
        sum(p.numel() for p in algo.parameters() if p.requires_grad),
    )
    if not optimizer:
        log.info("every parameter is frozen: nothing to meta-train, validating and testing the model as it is")

    checkpoint_dir = run_dir / "checkpoints"
    checkpoint = {
        "config": OmegaConf.to_container(cfg, resolve=False),
        "choices": choices,
        "tokenizer": tokenizer.state_dict(),
        "label_space": dataclasses.asdict(label_space),
    }
    if ranks.is_main:
        truncate_metrics(run_dir / "metrics.jsonl", start_step)
    train_seconds = 0.0  # meta-training time in this process, validation left out
    progress = tqdm(
        range(start_step, steps),
        desc="meta-train",
        initial=start_step,
        total=steps,
        disable=not (trainer.progress and ranks.is_main),
        dynamic_ncols=True,
    )
    with StopOnSignal() as stop:
        for step in progress:
            started = time.perf_counter()
            episodes, seeds = meta_batch_episodes(sampler, step, trainer.meta_batch_size, device, ranks)
            measured = meta_step(algo, optimizer, episodes, seeds, trainer.meta_batch_size, trainer.grad_clip, ranks)
            meta_loss = measured.meta_loss
            hint = REGRESSION_HINT if regression else ""
            check_meta_loss(meta_loss, measured.gradient_norm, step + 1, checkpoint_dir, hint)  # diverged: stop
            train_seconds += time.perf_counter() - started

            if ranks.is_main and (step + 1) % trainer.log_interval == 0:
                tracker.log_metrics({"step": step + 1, "meta_loss": meta_loss})
            if ranks.is_main and ((step + 1) % trainer.eval_interval == 0 or step + 1 == steps):
                val, best_val = validate_and_checkpoint(
                    algo, protocol, splits["val"], trainer, checkpoint_dir, checkpoint, optimizer, step + 1, best_val,
                    tracker, (step + 1 - start_step) * trainer.meta_batch_size / train_seconds,
                )  # fmt: skip
                progress.set_postfix(loss=f"{meta_loss:.3f}", val=format_score(val))
                log.info("step %d: meta-loss %.4f, validation %s %s", step + 1, meta_loss, val_name, format_score(val))
            if ranks.any(stop.requested):
                if ranks.is_main:
                    state = {**checkpoint, **training_state(algo, optimizer, step + 1, best_val)}
                    save_checkpoints(checkpoint_dir, state, is_best=False)
                raise RunInterrupted(
                    f"stopped at step {step + 1} of {steps}; saved {checkpoint_dir / 'last.pt'}; "
                    f"continue with: metanlp train resume={run_dir}",
                    stop.signal_number or 2,
                )
    ranks.close()
    if not ranks.is_main:
        return best_val  # rank 0 alone tests and writes the results
    if steps == 0:
        val, best_val = validate_and_checkpoint(
            algo, protocol, splits["val"], trainer, checkpoint_dir, checkpoint, optimizer, 0, best_val
        )
        log.info("validation %s %s", val_name, format_score(val))

    # Test: the best checkpoint by validation score, on the protocol's fixed test episodes.
    algo.load_state_dict(load_checkpoint(checkpoint_dir / "best.pt")["model"])
    results = protocol.score(algo, splits["test"], device, trainer.progress)
    results.update(
        dataset=choices.get("dataset"),
        algo=choices.get("algo"),
        backbone=choices.get("backbone"),
        checkpoint=str(checkpoint_dir / "best.pt"),
        **{f"best_val_{val_name}": best_val},
    )
    write_results(run_dir, results)
    log.info(summary_line(results))
    print(summary_line(results))
    print(f"results: {run_dir / 'results.md'}")
    if evaluations:  # "meta-train, then score on many targets" in one command; listed in results.md
        results["evaluations"] = run_evaluations(evaluations, cfg.paths, run_dir, checkpoint_dir / "best.pt")
        write_results(run_dir, results)
    tracker.finish(results, steps)
    return best_val
