"""Meta-hyper-parameter search: a current Optuna behind `metanlp train -m hparams_search=random|tpe|gp`.

The study lives in a database (SQLite in the sweep directory by default), so running the same command again
continues an interrupted search, and several processes given the same storage run trials of one study at once.
Hydra's launcher runs the trials (in this process, or hydra/launcher=joblib|slurm); the sweeper plugin that
drives this module is `hydra_plugins/metanlp_search`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from metanlp_cli.errors import MetaNLPError

log = logging.getLogger(__name__)

SAMPLERS = ("random", "tpe", "gp")
# Study user attributes: the trials a stopped process left unfinished (run again first), the processes that
# opened the study (each seeds its sampler differently), and the fixed overrides the study was started with.
INTERRUPTED, SESSIONS, OVERRIDES = "interrupted_trials", "sessions", "fixed_overrides"


def import_optuna():
    try:
        import optuna
    except ImportError:
        raise MetaNLPError("hparams_search needs Optuna: pip install 'metanlp_cli[sweeps]'") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def make_sampler(name: str, seed: int | None, n_startup_trials: int):
    """random: independent uniform draws; tpe: tree-structured Parzen estimator; gp: Gaussian-process BO."""
    samplers = import_optuna().samplers
    if name == "random":
        return samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials)
    if name == "gp":
        return samplers.GPSampler(seed=seed, n_startup_trials=n_startup_trials)
    raise MetaNLPError(f"hydra.sweeper.sampler={name!r} is not known; allowed: {', '.join(SAMPLERS)}")


def distribution(key: str, value: Any):
    """An Optuna distribution from Hydra's sweep syntax (`tag(log, interval(1e-4, 1e-2))`, `int(interval(1, 5))`,
    `choice(a, b)`, `a,b`, `range(1, 10)`) or a mapping ({low, high, log, int} or {choices}); None: a fixed value."""
    distributions = import_optuna().distributions
    if isinstance(value, Mapping):
        if "choices" in value:
            return distributions.CategoricalDistribution(list(value["choices"]))
        kind = distributions.IntDistribution if value.get("int") else distributions.FloatDistribution
        return kind(value["low"], value["high"], log=bool(value.get("log", False)))
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    try:
        parsed = OverridesParser.create().parse_override(f"{key}={value}").value()
    except Exception as error:  # Hydra's grammar errors have no common base worth naming
        raise MetaNLPError(f"search space {key}={value}: {error}") from None
    if isinstance(parsed, ChoiceSweep):
        return distributions.CategoricalDistribution(list(parsed.list))
    if isinstance(parsed, RangeSweep):
        return distributions.IntDistribution(int(parsed.start), int(parsed.stop) - 1, step=int(parsed.step))
    if isinstance(parsed, IntervalSweep):
        log_scale = "log" in parsed.tags
        if isinstance(parsed.start, int) and isinstance(parsed.end, int):
            return distributions.IntDistribution(parsed.start, parsed.end, log=log_scale)
        return distributions.FloatDistribution(float(parsed.start), float(parsed.end), log=log_scale)
    return None


def search_space(params: Mapping | None, spaces: Mapping, families: Mapping, algo: str) -> dict:
    """The searched keys: `params` when given, else the space of the algo's family (gradient, metric, ...)."""
    if not params:
        if algo not in families:
            raise MetaNLPError(
                f"no search space for algo={algo}: give one with 'hydra.sweeper.params={{KEY: RANGE, ...}}' "
                f"(families known: {', '.join(f'{name}={family}' for name, family in families.items())})"
            )
        params = spaces[families[algo]]
    space = {key: distribution(key, value) for key, value in params.items()}
    return {key: value for key, value in space.items() if value is not None}


def split_arguments(arguments: Sequence[str]) -> tuple[list[str], dict]:
    """The command line's fixed overrides, and its swept keys (`key=choice(a,b)`) added to the search space."""
    fixed, swept = [], {}
    for argument in arguments:
        key, _, value = argument.partition("=")
        parsed = distribution(key, value) if "=" in argument and not key.startswith(("+", "~")) else None
        if parsed is None:
            fixed.append(argument)
        elif "." not in key:
            raise MetaNLPError(f"{argument}: a search cannot sweep the config group {key}; run one search per {key}")
        else:
            swept[key] = parsed
    return fixed, swept


def sqlite_file(storage: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(storage[len(prefix) :]) if storage.startswith(prefix) else None


@contextlib.contextmanager
def study_lock(storage: str) -> Iterator[None]:
    """Serialise counting and asking trials among the processes sharing a local SQLite study, so that together
    they run exactly n_trials. (A remote database has no file to lock; there two processes finishing at once
    may run one trial more than n_trials each.)"""
    path = sqlite_file(storage)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_study(settings: Mapping, fixed: list[str]):
    """Create or load the study; check it was started with these overrides; seed this process's sampler."""
    optuna = import_optuna()
    storage = settings["storage"]
    engine = {"connect_args": {"timeout": 60}} if sqlite_file(storage) else {}
    with study_lock(storage):
        storage = optuna.storages.RDBStorage(storage, engine_kwargs=engine)
        study = optuna.create_study(
            storage=storage, study_name=settings["study_name"], direction=settings["direction"], load_if_exists=True
        )
        started_with = study.user_attrs.get(OVERRIDES)
        if started_with is None:
            study.set_user_attr(OVERRIDES, sorted(fixed))
        elif started_with != sorted(fixed):
            raise MetaNLPError(
                f"study {settings['study_name']!r} in {settings['storage']} was started with the overrides "
                f"{started_with}, not {sorted(fixed)}: give a new hydra.sweeper.study_name or hydra.sweep.dir"
            )
        session = study.user_attrs.get(SESSIONS, 0)
        study.set_user_attr(SESSIONS, session + 1)
        study.set_user_attr("sampler", settings["sampler"])  # for `metanlp report`
        if settings.get("resume_running"):  # after a crash that left trials RUNNING: run them again
            running = [t.number for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))]
            study.set_user_attr(INTERRUPTED, sorted(set(study.user_attrs.get(INTERRUPTED, []) + running)))
    seed = None if settings["seed"] is None else settings["seed"] + session  # a resumed search draws new points
    sampler = make_sampler(settings["sampler"], seed, settings["n_startup_trials"])
    return optuna.load_study(study_name=settings["study_name"], storage=storage, sampler=sampler)


def next_trials(study, space: dict, n_trials: int, n_jobs: int) -> list[tuple[int, dict]]:
    """Up to n_jobs (trial number, params) to run: interrupted ones first, then new ones while the study has
    fewer than n_trials. Call under `study_lock`."""
    interrupted = list(study.user_attrs.get(INTERRUPTED, []))
    batch = []
    if interrupted:
        claimed, rest = interrupted[:n_jobs], interrupted[n_jobs:]
        study.set_user_attr(INTERRUPTED, rest)
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        batch = [(number, trials[number].params) for number in claimed]
    room = min(n_jobs - len(batch), n_trials - len(study.get_trials(deepcopy=False)))
    for _ in range(max(room, 0)):
        trial = study.ask(space)
        batch.append((trial.number, trial.params))
    return batch


def trial_overrides(params: Mapping) -> list[str]:
    return [f"{key}={value!r}" if isinstance(value, str) else f"{key}={value}" for key, value in params.items()]


class StopBetweenTrials:
    """SIGINT/SIGTERM outside a trial's training loop: finish the trial, then stop the search. (Inside the loop,
    training's own handler stops the trial at once; the search then keeps it to be run again.)"""

    def __init__(self) -> None:
        self.signal_number: int | None = None
        self._previous: dict = {}

    def _request(self, signal_number: int, frame) -> None:
        if self.signal_number is None:
            os.write(2, b"\nstopping the search after the current trial\n")
            self.signal_number = signal_number

    def check(self) -> None:
        if self.signal_number is not None:
            raise SystemExit(128 + self.signal_number)

    def __enter__(self) -> StopBetweenTrials:
        for number in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(number) is not signal.SIG_IGN:
                self._previous[number] = signal.signal(number, self._request)
        return self

    def __exit__(self, *exception) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


def run_search(study, space: dict, fixed: list[str], settings: Mapping, launch: Callable) -> None:
    """Launch trials until the study holds n_trials. `launch(list of overrides, trial numbers)` returns Hydra's
    JobReturns. A stopped process (Ctrl-C, SIGTERM) leaves its trials to be run again by the next one."""
    with StopBetweenTrials() as stop:
        while True:
            stop.check()
            if not run_batch(study, space, fixed, settings, launch):
                return


def run_batch(study, space: dict, fixed: list[str], settings: Mapping, launch: Callable) -> bool:
    """Run the next trials (False: the study is full)."""
    from hydra.core.utils import JobStatus

    optuna = import_optuna()
    with study_lock(settings["storage"]):
        batch = next_trials(study, space, settings["n_trials"], settings["n_jobs"])
    if not batch:
        return False
    numbers = [number for number, _ in batch]
    try:
        returns = launch([fixed + trial_overrides(params) for _, params in batch], numbers)
    except SystemExit as error:  # a trial's one-line error (a NaN meta-loss at a high rate, ...) exits
        if isinstance(error.code, int) and error.code >= 128:  # 128 + signal: training was stopped
            keep_for_later(study, settings["storage"], numbers)
            raise
        for number in numbers:
            study.tell(number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        log.warning("trials %s failed (exit status %s)", numbers, error.code)
        return True
    except BaseException:
        keep_for_later(study, settings["storage"], numbers)
        raise
    for number, job in zip(numbers, returns, strict=True):
        value = job.return_value if job.status == JobStatus.COMPLETED else None
        if isinstance(value, int | float):
            study.tell(number, float(value))
        else:
            study.tell(number, state=optuna.trial.TrialState.FAIL)
            log.warning("trial %d failed: %s", number, job._return_value)
    return True


def keep_for_later(study, storage: str, numbers: list[int]) -> None:
    with study_lock(storage):
        study.set_user_attr(INTERRUPTED, sorted(set(study.user_attrs.get(INTERRUPTED, []) + numbers)))
    log.warning("search stopped: trials %s will be run again when the same command is run again", numbers)


def write_best(study, sweep_dir: Path) -> Path | None:
    """optimization_results.yaml in the sweep directory: the best trial's value and parameters."""
    import yaml

    complete = [t for t in study.get_trials(deepcopy=False) if t.value is not None]
    if not complete:
        return None
    best = study.best_trial
    path = sweep_dir / "optimization_results.yaml"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    summary = {
        "name": "optuna",
        "study_name": study.study_name,
        "best_trial": best.number,
        "best_value": best.value,
        "best_params": best.params,
        "trials": len(study.trials),
        "complete": len(complete),
    }
    path.write_text(yaml.safe_dump(summary, sort_keys=False))
    return path
