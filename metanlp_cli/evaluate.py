"""The eval recipe: checkpoint -> its saved config (plus command-line overrides) -> protocol -> results."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from metanlp_cli.algorithms.base import LabelSpace
from metanlp_cli.checkpoint import load_checkpoint
from metanlp_cli.components import (
    build_algorithm,
    build_encoder,
    cache_frozen_features,
    encode_splits,
    kshot_tasks,
    load_dataset,
    resolve_device,
)
from metanlp_cli.config import TrainerConfig, apply_overrides, build, validate
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.protocols import KShotProtocol
from metanlp_cli.results import summary_line, write_results

log = logging.getLogger(__name__)

EVAL_ONLY_KEYS = {"checkpoint", "split", "paths"}


def run(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict:
    """Score a checkpoint. With no overrides this reproduces the training run's results.json."""
    checkpoint = load_checkpoint(cfg.checkpoint)
    run_cfg = apply_overrides(OmegaConf.create(checkpoint["config"]), cfg, overrides, skip=EVAL_ONLY_KEYS)
    run_cfg.paths = cfg.paths  # where data lives is this machine's business, not the checkpoint's
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(run_cfg, resolve=True))
    if cfg.split not in ("train", "val", "test"):
        raise MetaNLPError(f"split={cfg.split!r} is not allowed; allowed: train, val, test")

    trainer = validate(run_cfg.trainer, TrainerConfig, "trainer")
    device = resolve_device(trainer.device)
    tokenizer = build(run_cfg.backbone.tokenizer, "backbone.tokenizer")
    tokenizer.load_state_dict(checkpoint["tokenizer"])
    dataset, cache_dir = load_dataset(run_cfg), cfg.paths.get("cache_dir")
    encoder = build_encoder(run_cfg, tokenizer.vocab_size)
    algo = build_algorithm(run_cfg, encoder, LabelSpace(**checkpoint["label_space"])).to(device)
    algo.load_state_dict(checkpoint["model"])
    protocol = build(run_cfg.protocol, "protocol")

    if isinstance(protocol, KShotProtocol):  # whole tasks: each training set adapted on, its evaluation set scored
        tasks = kshot_tasks(tokenizer, dataset, cfg.split, encoder, device, cache_dir, trainer.progress)
        results = protocol.run(algo, encoder, tasks, device, trainer.progress)
    else:  # episodes sampled from the split
        splits, _ = encode_splits(tokenizer, dataset, (cfg.split,), device, cache_dir)
        splits, seconds = cache_frozen_features(encoder, splits, trainer.progress)
        if seconds:
            log.info("frozen layers: their output for every example computed once, in %.2fs", seconds)
        results = protocol.run(algo, splits[cfg.split], device, trainer.progress)
    results["split"] = cfg.split

    choices = {**checkpoint["choices"], **{k: v for k, v in _group_choices(overrides).items()}}
    results.update(
        dataset=choices.get("dataset"),
        algo=choices.get("algo"),
        backbone=choices.get("backbone"),
        checkpoint=str(cfg.checkpoint),
        **{f"best_val_{checkpoint.get('val_metric', 'accuracy')}": checkpoint.get("val_accuracy")},
    )
    write_results(run_dir, results)
    print(summary_line(results).replace("test ", f"{cfg.split} ", 1))
    print(f"results: {run_dir / 'results.md'}")
    return results


def _group_choices(overrides: list[str]) -> dict[str, str]:
    """`dataset=glue/mrpc` style overrides, which rename what is being scored."""
    choices = {}
    for override in overrides:
        key, _, value = override.partition("=")
        if key in ("dataset", "protocol") and value:
            choices[key] = value
    return choices
