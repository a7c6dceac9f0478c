"""`metanlp train|eval ...`: check the overrides, then hand them to that command's Hydra app.
`metanlp report ...` is a plain command (no Hydra)."""

from __future__ import annotations

import contextlib
import importlib.util
import re
import sys
from pathlib import Path

from metanlp_cli import CONFIG_DIR, __version__
from metanlp_cli.errors import MetaNLPError, report_errors, traceback_requested

COMMANDS = {
    "train": ("train", "meta-train a model, validate it, score the best checkpoint on the test protocol"),
    "eval": ("eval", "score a checkpoint: metanlp eval checkpoint=RUN_DIR/checkpoints/best.pt [protocol.*=...]"),
    "data": ("data", "check a dataset before training: metanlp data describe dataset=NAME"),
    "report": (None, "compare runs: metanlp report PATH... [--out DIR] (tables, paired differences, plots)"),
}
# Overrides that need a Hydra plugin from the `sweeps` extra: (key, choice prefix) -> plugin module.
PLUGINS = {
    ("hparams_search", ""): "optuna",  # hydra/sweeper=metanlp_study (metanlp_cli/search.py) runs a current Optuna
    ("hydra/sweeper", "metanlp_study"): "optuna",
    ("hydra/launcher", "joblib"): "hydra_plugins.hydra_joblib_launcher",
    ("hydra/launcher", "submitit"): "hydra_plugins.hydra_submitit_launcher",
    ("hydra/launcher", "slurm"): "hydra_plugins.hydra_submitit_launcher",
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


def config_groups() -> dict[str, list[str]]:
    """Every config group (a folder of configs/) with its choices, nested ones as `glue/cola`."""
    groups = {}
    for folder in sorted(p for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra"):
        groups[folder.name] = sorted(str(f.relative_to(folder).with_suffix("")) for f in folder.rglob("*.yaml"))
    return groups


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


def check_group_choices(overrides: list[str]) -> None:
    """`algo=foo` where no configs/algo/foo.yaml exists: one line naming what is allowed."""
    groups = config_groups()
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key not in groups or "(" in value or value in ("", "null"):
            continue
        for choice in value.strip("[]").split(","):  # a sweep a,b or a list [a,b] (logger=[csv,mlflow])
            if choice not in groups[key]:
                raise MetaNLPError(f"{key}={choice!r} is not a known choice; allowed: {', '.join(groups[key])}")


def check_sweep_options(overrides: list[str], multirun: bool) -> None:
    """Searches and launchers need the `sweeps` extra, and a search needs -m."""
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        for (plugin_key, prefix), module in PLUGINS.items():
            if key == plugin_key and value.startswith(prefix) and importlib.util.find_spec(module) is None:
                raise MetaNLPError(f"{key}={value} needs the sweeps extra: pip install 'metanlp_cli[sweeps]'")
        if key == "hparams_search" and value not in ("", "null") and not multirun:
            raise MetaNLPError(f"hparams_search={value} runs many trainings: add -m (metanlp train -m {override} ...)")


def missing_keys(node: dict, prefix: str = "") -> list[str]:
    """Keys whose value is `???` (a value the user must give), without resolving interpolations."""
    missing = []
    for key, value in node.items():
        if value == "???":
            missing.append(f"{prefix}{key}")
        elif isinstance(value, dict):
            missing += missing_keys(value, f"{prefix}{key}.")
    return missing


@contextlib.contextmanager
def config_search_path(config_name: str):
    """Where `compose` finds configs/: set up here, or the running app's (a training run's evaluations)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3", job_name=config_name):
        yield


def check_composition(config_name: str, overrides: list[str]):
    """Compose the config once before Hydra does, so a bad key or type is one line, not a report.
    Returns the composed config."""
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    plain = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    with config_search_path(config_name):
        try:
            composed = compose(config_name, overrides=plain)
        except (HydraException, OmegaConfBaseException) as error:
            unknown = re.match(r"Could not override '([^']+)'", str(error))
            if unknown:
                key = unknown.group(1)
                parent, _, leaf = key.rpartition(".")
                others = [o for o in plain if not o.startswith(f"{key}=")]
                node = OmegaConf.select(compose(config_name, overrides=others), parent) if parent else None
                allowed = f"; allowed: {', '.join(map(str, node))}" if hasattr(node, "keys") else ""
                raise MetaNLPError(f"{key} is not a known key{allowed} (add a new key with +{key}=...)") from None
            message = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
            raise MetaNLPError(message) from None
    missing = missing_keys(OmegaConf.to_container(composed, resolve=False))
    if missing:
        raise MetaNLPError(f"{missing[0]} is required: add {missing[0]}=... to the command line")
    return composed


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
    from metanlp_cli.data import describe

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
            from metanlp_cli.checkpoint import resume_arguments
            from metanlp_cli.distributed import launch_arguments

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
