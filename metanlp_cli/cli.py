"""`metanlp train|eval|data ...`: check the overrides (compose.py), rewrite the command line for a resumed
run or a torchrun rank, then hand it to that command's Hydra app, which runs the recipe.
`metanlp report ...` is a plain command (no Hydra)."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

from metanlp_cli import CONFIG_DIR, __version__
from metanlp_cli.checkpoint import find_last_checkpoint
from metanlp_cli.compose import check_composition, check_group_choices, check_sweep_options, config_groups
from metanlp_cli.distributed import launched_world_size
from metanlp_cli.errors import MetaNLPError, report_errors, traceback_requested

COMMANDS = {
    "train": ("train", "meta-train a model, validate it, score the best checkpoint on the test protocol"),
    "eval": ("eval", "score a checkpoint: metanlp eval checkpoint=RUN_DIR/checkpoints/best.pt [protocol.*=...]"),
    "data": ("data", "check a dataset before training: metanlp data describe dataset=NAME"),
    "report": (None, "compare runs: metanlp report PATH... [--out DIR] (tables, paired differences, plots)"),
}
DATA_ACTIONS = ("describe",)
HYDRA_FLAGS_WITH_VALUE = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--info",
    "--experimental-rerun",
}


def usage() -> str:
    lines = [
        f"metanlp {__version__}: meta-learning experiments for NLP",
        "",
        "usage: metanlp COMMAND [key=value ...] [group=choice ...] [-m] [--cfg job] [--help]",
        "",
        "commands:",
    ]
    lines += [f"  {name:<8}{help_text}" for name, (_, help_text) in COMMANDS.items()]
    lines += ["", "config groups (choose with group=choice; defaults in configs/train.yaml):"]
    lines += [f"  {group:<15}{', '.join(choices) or '-'}" for group, choices in config_groups().items()]
    lines += [
        "",
        "examples:",
        "  metanlp train",
        "  metanlp train algo=reptile backbone=lstm trainer.steps=500",
        "  metanlp train -m algo=maml,protonet seed=1,2,3",
        "  metanlp train -m hparams_search=optuna algo=reptile hydra.sweeper.n_trials=20",
        "  metanlp train resume=outputs/train/DATE/TIME      # or resume=true: the newest run",
        "  metanlp eval checkpoint=outputs/train/DATE/TIME/checkpoints/best.pt protocol.k_shot=1",
        "  metanlp data describe dataset=glue/mrpc",
        "  metanlp report outputs/multirun/DATE/TIME --out report/",
        "",
        "`metanlp COMMAND --help` shows Hydra's help for that command.",
    ]
    return "\n".join(lines)


def _overrides(arguments: list[str]) -> list[str]:
    """The key=value words of a command line (Hydra's flags and their values left out)."""
    result, skip_next = [], False
    for argument in arguments:
        if skip_next:
            skip_next = False
        elif argument.startswith("-"):
            skip_next = argument in HYDRA_FLAGS_WITH_VALUE and "=" not in argument
        elif "=" in argument:
            result.append(argument)
    return result


def _train_task(cfg):
    from hydra.core.hydra_config import HydraConfig

    from metanlp_cli import folds, train
    from metanlp_cli.checkpoint import resumed_config

    hydra_cfg = HydraConfig.get()
    cfg, choices = resumed_config(cfg, dict(hydra_cfg.runtime.choices), list(hydra_cfg.overrides.task))
    if cfg.protocol.get("folds"):  # one run per fold, in RUN/fold<K>/, and the mean over them
        return folds.run(cfg, Path(hydra_cfg.runtime.output_dir), choices, train.run)
    return train.run(cfg, Path(hydra_cfg.runtime.output_dir), choices)


def _eval_task(cfg):
    from hydra.core.hydra_config import HydraConfig

    from metanlp_cli import evaluate

    hydra_cfg = HydraConfig.get()
    evaluate.run(cfg, Path(hydra_cfg.runtime.output_dir), list(hydra_cfg.overrides.task))


def _data_task(cfg):
    from metanlp_cli import describe

    describe.run(cfg)


TASKS = {"train": _train_task, "eval": _eval_task, "data": _data_task}


def main(argv: list[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if not arguments or arguments[0] in ("-h", "--help", "help"):
        print(usage())
        return
    if arguments[0] in ("--version", "-V"):
        print(__version__)
        return
    command, rest = arguments[0], arguments[1:]
    try:
        if command not in COMMANDS:
            raise MetaNLPError(f"unknown command {command!r}; allowed: {', '.join(COMMANDS)}")
        if command == "report":
            from metanlp_cli import report

            report.main(rest)
            return
        if command == "data":
            action = rest.pop(0) if rest and "=" not in rest[0] and not rest[0].startswith("-") else None
            if action not in DATA_ACTIONS:
                given = f"unknown action {action!r}" if action else "an action is needed"
                raise MetaNLPError(f"metanlp data: {given}; allowed: {', '.join(DATA_ACTIONS)}")
        if not CONFIG_DIR.is_dir():
            raise MetaNLPError(f"config folder {CONFIG_DIR} not found; install metanlp with `pip install -e .`")
        overrides = _overrides(rest)
        multirun = any(flag in rest for flag in ("-m", "--multirun"))
        check_group_choices(overrides)
        check_sweep_options(overrides, multirun)
        cfg = None
        if not multirun and not any(flag in rest for flag in ("--help", "-h", "--hydra-help")):
            cfg = check_composition(COMMANDS[command][0], overrides)
        if command == "train":
            rest = resume_arguments(rest, cfg.paths.output_root if cfg else None, multirun)
            rest = launch_arguments(rest, multirun)
    except MetaNLPError as error:
        if traceback_requested():
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)

    import hydra

    sys.argv = [f"metanlp {command}", *rest]  # `metanlp data describe`: the action is already taken off
    app = hydra.main(config_path=str(CONFIG_DIR), config_name=COMMANDS[command][0], version_base="1.3")(
        report_errors(TASKS[command])
    )
    app()


def _quoted(value: str) -> str:
    """A path as a Hydra override value (quoted when it has characters the override grammar reads)."""
    return value if re.fullmatch(r"[\w./:-]+", value) else "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def resume_arguments(arguments: list[str], output_root: str | None, multirun: bool) -> list[str]:
    """`resume=true|RUN_DIR|last.pt` on the command line -> the resolved last.pt, and Hydra told to write
    into that run's own directory (its records of this command go to .hydra/resume_DATE_TIME/)."""
    values = [a.partition("=")[2] for a in arguments if a.startswith("resume=")]
    if not values or values[-1].lower() in ("null", "false", ""):
        return arguments
    if multirun:
        raise MetaNLPError("resume continues one run; drop -m")
    if any(a.startswith("hydra.run.dir=") for a in arguments):
        raise MetaNLPError("resume writes into the run's own directory; drop hydra.run.dir=")
    last = find_last_checkpoint(values[-1], output_root or "outputs")
    run_dir = last.parent.parent if last.parent.name == "checkpoints" else last.parent
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    return [
        *(a for a in arguments if not a.startswith("resume=")),
        f"resume={_quoted(str(last))}",
        f"hydra.run.dir={_quoted(str(run_dir))}",
        f"hydra.output_subdir=.hydra/resume_{stamp}",
    ]


def launch_arguments(arguments: list[str], multirun: bool) -> list[str]:
    """Under torchrun, every rank runs the same command: they must share one run directory, and only
    rank 0 keeps Hydra's records; the other ranks log to train_rankN.log beside it."""
    world_size = launched_world_size()
    if world_size == 1:
        return arguments
    if multirun:
        raise MetaNLPError("torchrun runs one training job; drop -m (sweep over torchrun launches instead)")
    if not any(a.startswith("hydra.run.dir=") for a in arguments):
        raise MetaNLPError(
            f"under torchrun (WORLD_SIZE={world_size}) all ranks must write to one run directory; "
            "add hydra.run.dir=outputs/train/NAME"
        )
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        return arguments
    return [*arguments, "hydra.output_subdir=null", f"hydra.job.name=train_rank{rank}"]
