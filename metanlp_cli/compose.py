"""Hydra composition and its one-line checks: what `metanlp` checks before handing a command line to
Hydra, and what a recipe checks when it composes a config of its own (a training run's evaluations)."""

from __future__ import annotations

import contextlib
import importlib.util
import re

from metanlp_cli import CONFIG_DIR
from metanlp_cli.errors import MetaNLPError

# Keys that moved: the one-line error names the new place.
MOVED_KEYS = {
    "trainer.outer_lr": "optim.lr",
    "trainer.weight_decay": "optim.weight_decay",
    "trainer.outer_optimizer": "a config group: optim=adam|adamw|sgd",
}
# Overrides that need a Hydra plugin from the `sweeps` extra: (key, choice prefix) -> plugin module.
PLUGINS = {
    ("hparams_search", ""): "optuna",  # hydra/sweeper=metanlp_study (metanlp_cli/search.py) runs a current Optuna
    ("hydra/sweeper", "metanlp_study"): "optuna",
    ("hydra/launcher", "joblib"): "hydra_plugins.hydra_joblib_launcher",
    ("hydra/launcher", "submitit"): "hydra_plugins.hydra_submitit_launcher",
    ("hydra/launcher", "slurm"): "hydra_plugins.hydra_submitit_launcher",
}


def config_groups() -> dict[str, list[str]]:
    """Every config group (a folder of configs/) with its choices, nested ones as `glue/cola`."""
    groups = {}
    for folder in sorted(p for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name != "hydra"):
        groups[folder.name] = sorted(str(f.relative_to(folder).with_suffix("")) for f in folder.rglob("*.yaml"))
    return groups


def check_group_choices(overrides: list[str]) -> None:
    """`algo=foo` where no configs/algo/foo.yaml exists: one line naming what is allowed."""
    groups = config_groups()
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key == "trainer" and value == "smoke":
            raise MetaNLPError("debug=smoke is now debug=smoke (a run in seconds)")
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
                if key in MOVED_KEYS:
                    raise MetaNLPError(f"{key} is now {MOVED_KEYS[key]}") from None
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
