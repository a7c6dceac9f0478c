"""The eval recipe: checkpoint -> its saved config (plus command-line overrides) -> protocol -> results."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from metanlp_cli.algorithms.base import LabelSpace
from metanlp_cli.checkpoint import load_checkpoint, load_model_state
from metanlp_cli.components import build_algorithm, build_encoder, load_dataset, resolve_device
from metanlp_cli.compose import check_composition, check_group_choices
from metanlp_cli.config import TrainerConfig, apply_overrides, build, validate
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.results import KSHOT_PROTOCOLS, kshot_table, summary_line, write_results

log = logging.getLogger(__name__)

EVAL_ONLY_KEYS = {"checkpoint", "split", "paths"}


def drop_unresolvable_sampler(run_cfg: DictConfig) -> None:
    """Leave out the training sampler where it no longer resolves: it plays no part in evaluation, and a
    preset's sampler may follow its training protocol (`k_shot: ${protocol.k_shot}`), which an eval-time
    `protocol=arsc` replaces."""
    try:
        OmegaConf.to_container(run_cfg.get("sampler", {}), resolve=True)
    except OmegaConfBaseException:
        run_cfg.pop("sampler")


def run(cfg: DictConfig, run_dir: Path, overrides: list[str]) -> dict:
    """Score a checkpoint. With no overrides this reproduces the training run's results.json."""
    checkpoint = load_checkpoint(cfg.checkpoint)
    run_cfg = apply_overrides(OmegaConf.create(checkpoint["config"]), cfg, overrides, skip=EVAL_ONLY_KEYS)
    run_cfg.paths = cfg.paths  # where data lives is this machine's business, not the checkpoint's
    drop_unresolvable_sampler(run_cfg)
    try:
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(run_cfg, resolve=True))
    except OmegaConfBaseException as error:  # e.g. a key the checkpoint's config refers to is gone
        message = str(error).splitlines()[0]
        raise MetaNLPError(f"the checkpoint's config does not resolve with these overrides: {message}") from None
    if cfg.split not in ("train", "val", "test"):
        raise MetaNLPError(f"split={cfg.split!r} is not allowed; allowed: train, val, test")

    trainer = validate(run_cfg.trainer, TrainerConfig, "trainer")
    device = resolve_device(trainer.device)
    tokenizer = build(run_cfg.backbone.tokenizer, "backbone.tokenizer")
    tokenizer.load_state_dict(checkpoint["tokenizer"])
    dataset, cache_dir = load_dataset(run_cfg), cfg.paths.get("cache_dir")
    encoder = build_encoder(run_cfg, tokenizer.vocab_size)
    algo = build_algorithm(run_cfg, encoder, LabelSpace(**checkpoint["label_space"])).to(device)
    load_model_state(algo, checkpoint["model"])
    protocol = build(run_cfg.protocol, "protocol")

    prepared = protocol.prepare(tokenizer, dataset, cfg.split, encoder, device, cache_dir, trainer.progress)
    results = protocol.score(algo, prepared, device, trainer.progress)
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
    """`dataset=glue/mrpc`, `+algo=setfit` style overrides, which rename what is being scored (or how it adapts)."""
    choices = {}
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key in ("dataset", "protocol", "algo") and value:
            choices[key] = value
    return choices


EVALUATIONS_EXAMPLE = "\"evaluations=[['protocol=kshot','dataset=lmbff/glue'],['protocol=glue_lowres']]\""


def evaluation_name(overrides: list[str]) -> str:
    """A folder name for an evaluation: `kshot_lmbff-glue`, `glue_lowres_protocol.k_shot-16`."""
    parts = []
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        parts.append(value if key in ("protocol", "dataset") else f"{key}-{value}")
    return re.sub(r"[^A-Za-z0-9_.]+", "-", "_".join(parts)).strip("-") or "eval"


def check_evaluations(evaluations) -> list[tuple[str, list[str], DictConfig]]:
    """A train config's `evaluations` (override lists of `metanlp eval`), each composed with the eval config
    now, so that a bad one stops the run before training. Returns (folder name, overrides, eval config)."""
    plain = OmegaConf.to_container(evaluations) if isinstance(evaluations, ListConfig) else evaluations
    if not isinstance(plain, list) or not all(
        isinstance(overrides, list) and all(isinstance(o, str) for o in overrides) for overrides in plain
    ):
        raise MetaNLPError(f"evaluations={plain!r} must be a list of override lists, e.g. {EVALUATIONS_EXAMPLE}")
    checked, names = [], set()
    for index, overrides in enumerate(plain):
        for override in overrides:
            key = override.lstrip("+~").partition("=")[0]
            if "=" not in override or key in ("checkpoint", "hydra") or key.startswith("hydra."):
                raise MetaNLPError(
                    f"evaluations[{index}]: {override!r} is not allowed; give key=value or group=choice overrides "
                    f"of metanlp eval (the checkpoint is the run's best.pt), e.g. {EVALUATIONS_EXAMPLE}"
                )
        try:
            check_group_choices(overrides)
            composed = check_composition("eval", ["checkpoint=best.pt", *overrides])
        except MetaNLPError as error:
            raise MetaNLPError(f"evaluations[{index}]={overrides}: {error}") from None
        name, number = evaluation_name(overrides), 2
        while name in names:  # the same overrides twice: keep both
            name, number = f"{evaluation_name(overrides)}_{number}", number + 1
        names.add(name)
        checked.append((name, overrides, composed))
    return checked


def run_evaluations(
    evaluations: list[tuple[str, list[str], DictConfig]], paths: DictConfig, run_dir: Path, checkpoint: Path
) -> list[dict]:
    """Score a training run's checkpoint with each checked evaluation, into RUN/eval/<name>/; print each
    table. Returns what the run's results list: name, overrides, folder and summary line."""
    done = []
    for name, overrides, eval_cfg in evaluations:
        eval_dir = run_dir / "eval" / name
        eval_dir.mkdir(parents=True, exist_ok=True)
        eval_cfg.checkpoint, eval_cfg.paths = str(checkpoint), paths  # this run's data, cache and outputs
        log.info("evaluation %s: metanlp eval checkpoint=%s %s", name, checkpoint, " ".join(overrides))
        print(f"\nevaluation {name} ({' '.join(overrides)}):")
        results = run(eval_cfg, eval_dir, overrides)
        if results.get("protocol") in KSHOT_PROTOCOLS:
            print("\n".join(kshot_table(results)))
        done.append(
            {
                "name": name,
                "overrides": overrides,
                "directory": str(eval_dir),
                "summary": summary_line(results).replace("test ", f"{results['split']} ", 1),
            }
        )
    return done
