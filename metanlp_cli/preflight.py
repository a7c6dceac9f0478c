"""Checks of a command line before Hydra starts: override words, the folders it will write, a run
directory that already holds a run, and every job of a `-m` sweep, so that a bad value in the last job
stops the sweep before the first one runs. Each problem is one line (a MetaNLPError)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig

from metanlp_cli.errors import MetaNLPError


def parse_overrides(overrides: list[str]) -> list:
    """Hydra's reading of the key=value words; a word it cannot read is one line naming the word."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    for word in overrides:
        if not word.lstrip("+~").partition("=")[0].strip():
            raise MetaNLPError(f"{word!r} has no key before '='; write key=value, e.g. trainer.steps=5")
    parser = OverridesParser.create()
    parsed = []
    for word in overrides:
        try:
            parsed += parser.parse_overrides([word])
        except HydraException as error:
            lines = [line.strip() for line in str(error).splitlines() if line.strip() and "hydra.cc" not in line]
            reason = " ".join(lines)
            raise MetaNLPError(f"{word!r} is not a valid override ({reason}); see metanlp --help") from None
    return parsed


def sweep_jobs(overrides: list[str]) -> list[list[str]] | None:
    """The override list of every job a basic `-m` sweep runs (the product of its comma lists and ranges);
    None where only the sweeper knows them (a search space, an Optuna search)."""
    parsed = parse_overrides(overrides)
    if any(o.key_or_group == "hparams_search" or o.is_interval_sweep() for o in parsed):
        return None
    axes = []
    for word, override in zip(overrides, parsed, strict=True):
        if override.is_sweep_override() and not override.is_hydra_override():
            if override.value_type.name == "GLOB_CHOICE_SWEEP":
                return None
            axes.append([f"{override.get_key_element()}={value}" for value in override.sweep_string_iterator()])
        elif not override.is_hydra_override():
            axes.append([word])
    return [list(job) for job in itertools.product(*axes)]


def check_sweep(overrides: list[str], compose: Callable[[list[str]], DictConfig]) -> None:
    """Compose and check every job of a `-m` training sweep; the first bad one is one line naming it."""
    jobs = sweep_jobs(overrides) or []
    for number, job in enumerate(jobs):
        try:
            check_train_job(compose(job))
        except MetaNLPError as error:
            raise MetaNLPError(f"-m job #{number} of {len(jobs)} ({' '.join(job)}): {error}") from None


def check_train_job(cfg: DictConfig) -> None:
    """What a training run checks first, without data: the trainer's values and the test protocol."""
    from metanlp_cli.config import TrainerConfig, build, validate

    validate(cfg.trainer, TrainerConfig, "trainer")
    build(cfg.protocol, "protocol")


def check_writable_folder(value: str, key: str) -> None:
    """A folder the run will create (hydra.run.dir, paths.output_root): one line where it cannot be,
    under a file, /proc or a read-only place, instead of Hydra's traceback."""
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise MetaNLPError(f"{key}={value!r} is a file; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".metanlp-write-check-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as error:
        parent = next((p for p in path.parents if p.exists()), None)
        where = f" ({parent} is a file)" if parent is not None and not parent.is_dir() else ""
        raise MetaNLPError(
            f"{key}={value!r}: cannot create or write that folder{where}: {error.strerror}; give another folder"
        ) from None


def hydra_value(parsed: list, key: str) -> str | None:
    """The last value given on the command line for a hydra key such as hydra.run.dir."""
    values = [o for o in parsed if o.key_or_group == key and not o.is_sweep_override()]
    return str(values[-1].value()) if values else None


def check_run(command: str, cfg: DictConfig, parsed: list) -> None:
    """A single run's command line, composed: the folder it writes and, for train, its first checks."""
    from metanlp_cli.checkpoint import refuse_existing_run

    run_dir = hydra_value(parsed, "hydra.run.dir")
    if run_dir is not None and "${" in run_dir:  # an interpolation: only Hydra knows the folder
        run_dir = None
    resuming = command == "train" and cfg.get("resume") not in (None, False, "", "null", "false")
    if run_dir is not None and command == "train" and not resuming:
        refuse_existing_run(Path(run_dir))
    if run_dir is not None:
        check_writable_folder(run_dir, "hydra.run.dir")
    elif command in ("train", "eval") and "paths" in cfg and cfg.paths.get("output_root"):
        check_writable_folder(str(cfg.paths.output_root), "paths.output_root")
    cache_dir = cfg.paths.get("cache_dir") if "paths" in cfg else None
    if cache_dir is not None and Path(str(cache_dir)).exists() and not Path(str(cache_dir)).is_dir():
        raise MetaNLPError(f"paths.cache_dir={str(cache_dir)!r} is a file; give a folder, or paths.cache_dir=null")
    if command == "train" and not resuming:
        check_train_job(cfg)
