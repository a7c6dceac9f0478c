"""`protocol.folds=[1,2,3,4,5]`: one training run per fold of a fold-based class split (ProtAugment's
BANKING77 / CLINC150 folds, `dataset.fold`), each in its own sub-run `RUN/fold1/`, ..., then the mean over
the folds at the run directory, as ProtAugment reports its 5 folds."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from metanlp_cli.errors import MetaNLPError
from metanlp_cli.results import n_way_text, q_query_text
from metanlp_cli.stats import format_score, mean_confidence_interval

log = logging.getLogger(__name__)


def fold_config(cfg: DictConfig, fold: int) -> DictConfig:
    """The config of one fold's run: that `dataset.fold`, and no folds of its own."""
    fold_cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    fold_cfg.dataset.fold, fold_cfg.protocol.folds = fold, None
    return fold_cfg


def check_folds(cfg: DictConfig, choices: dict[str, str]) -> list[int]:
    folds = list(cfg.protocol.folds)
    if "fold" not in cfg.dataset:
        raise MetaNLPError(
            f"protocol.folds={folds} but dataset={choices.get('dataset', '?')} has no folds (no dataset.fold); "
            "folds are for fold-based class splits such as banking77, clinc150"
        )
    if cfg.get("resume"):
        raise MetaNLPError("resume with protocol.folds: resume the interrupted fold instead, resume=RUN_DIR/foldK")
    if cfg.trainer.get("distributed"):
        raise MetaNLPError("protocol.folds with trainer.distributed=true: run one fold per torchrun (dataset.fold=K)")
    return folds


def run(cfg: DictConfig, run_dir: Path, choices: dict[str, str], train_run: Callable) -> float:
    """Train and test each fold with `train_run` (train.run) in RUN/fold<K>/, then write the aggregate
    results.json / results.md to RUN. Returns the mean of the folds' best validation accuracies."""
    folds = check_folds(cfg, choices)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    best_val = []
    for fold in folds:
        fold_dir = run_dir / f"fold{fold}"
        fold_dir.mkdir(parents=True, exist_ok=True)
        log.info("fold %d (%d of %d): %s", fold, len(best_val) + 1, len(folds), fold_dir)
        print(f"fold {fold}:")
        best_val.append(train_run(fold_config(cfg, fold), fold_dir, choices))
    per_fold = {fold: json.loads((run_dir / f"fold{fold}" / "results.json").read_text()) for fold in folds}
    results = fold_results(per_fold)
    write_fold_results(run_dir, results)
    print(fold_summary_line(results))
    print(f"results: {run_dir / 'results.md'}")
    return sum(best_val) / len(best_val)


def fold_results(per_fold: dict[int, dict]) -> dict:
    """The folds' test results and their aggregate: the mean of the fold means with their sample std, and
    the mean and 95% CI of all the folds' test episodes pooled."""
    first = next(iter(per_fold.values()))
    means = [results["accuracy"]["mean"] for results in per_fold.values()]
    pooled = [score for results in per_fold.values() for score in results["episode_accuracies"]]
    return {
        **{key: first.get(key) for key in ("protocol", "split", "n_way", "k_shot", "q_query", "episodes", "seed")},
        **{key: first.get(key) for key in ("dataset", "algo", "backbone")},
        "folds": list(per_fold),
        "per_fold": {
            f"fold{fold}": {
                "accuracy": results["accuracy"],
                "best_val_accuracy": results.get("best_val_accuracy"),
                "results": f"fold{fold}/results.json",
            }
            for fold, results in per_fold.items()
        },
        "mean_over_folds": sum(means) / len(means),
        "std_over_folds": mean_confidence_interval(means)["std"],
        "pooled_episodes": mean_confidence_interval(pooled),
    }


def fold_summary_line(results: dict) -> str:
    pooled = results["pooled_episodes"]
    return (
        f"test accuracy over {len(results['folds'])} folds: {100 * results['mean_over_folds']:.2f} "
        f"(std over folds {100 * results['std_over_folds']:.2f}; 95% CI of the {pooled['count']} pooled episodes "
        f"+/- {100 * pooled['ci95']:.2f}); "
        + ", ".join(f"{name} {format_score(fold['accuracy'])}" for name, fold in results["per_fold"].items())
    )


def write_fold_results(run_dir: Path, results: dict) -> None:
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    pooled, count = results["pooled_episodes"], len(results["folds"])
    std = results["std_over_folds"]
    rows = [
        f"| {name} | {format_score(fold['accuracy'])} | `{fold['results']}` |"
        for name, fold in results["per_fold"].items()
    ]
    text = "\n".join(
        [
            f"# Results: {results['split']} split, {count} folds",
            "",
            f"{results['dataset']}, {results['algo']} ({results['backbone']}): {n_way_text(results)}-way "
            f"{results['k_shot']}-shot, {q_query_text(results)} query examples per class, "
            f"{results['episodes']} test episodes per fold.",
            "",
            "| fold | accuracy (%) | results |",
            "|---|---|---|",
            *rows,
            f"| **mean over {count} folds** | **{100 * results['mean_over_folds']:.2f}** "
            f"(std {'n/a' if math.isnan(std) else f'{100 * std:.2f}'} over folds) | |",
            f"| all episodes pooled | {format_score(pooled)} ({pooled['count']} episodes) | |",
            "",
            "Each fold's accuracy is the mean over its fixed test episodes with the 95% CI "
            "(1.96 x std / sqrt(episodes)). "
            "The mean over folds is the mean of the folds' means (what ProtAugment reports), with the sample standard "
            "deviation of those means (fold-to-fold variation). The pooled row is the mean and 95% CI over every "
            "fold's test episodes together: it measures the episode sampling only, not the variation between folds.",
            "",
        ]
    )
    (run_dir / "results.md").write_text(text)
