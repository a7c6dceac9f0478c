"""The Hydra sweeper behind `metanlp train -m hparams_search=random|tpe|gp`: an Optuna study on disk.

Hydra finds sweepers only in the `hydra_plugins` package; this class is the thin adapter, metanlp_cli.search
does the work.
"""

# No `from __future__ import annotations`: Hydra runs this module without registering it in sys.modules, where
# dataclasses would look the string annotations up; and OmegaConf reads the schema's typing.Optional/Dict.
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional  # noqa: UP035

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from metanlp_cli import search
from metanlp_cli.errors import report_errors


@dataclass
class StudySweeperConf:
    """The schema of configs/hydra/sweeper/metanlp_study.yaml (which holds the defaults and their comments)."""

    _target_: str = "hydra_plugins.metanlp_search.study_sweeper.StudySweeper"
    sampler: str = "tpe"
    seed: Optional[int] = None  # noqa: UP045
    n_startup_trials: int = 8
    direction: str = "maximize"
    study_name: str = "metanlp"
    storage: str = "sqlite:///study.db"
    n_trials: int = 20
    n_jobs: int = 1
    resume_running: bool = False
    params: Optional[Dict[str, Any]] = None  # noqa: UP006, UP045
    spaces: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # noqa: UP006
    families: Dict[str, str] = field(default_factory=dict)  # noqa: UP006


ConfigStore.instance().store(group="hydra/sweeper", name="metanlp_study_schema", node=StudySweeperConf)


class StudySweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = {
            key: OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
            for key, value in settings.items()
        }

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.algo = config.hydra.runtime.choices.get("algo")

    def launch(self, overrides: list[list[str]], numbers: list[int]) -> list:
        """One launch per run of consecutive trial numbers, so that job directory N holds trial N."""
        returns, start = [], 0
        for end in range(1, len(numbers) + 1):
            if end == len(numbers) or numbers[end] != numbers[end - 1] + 1:
                returns += self.launcher.launch(overrides[start:end], initial_job_idx=numbers[start])
                start = end
        return returns

    @report_errors  # a MetaNLPError (a bad space, a study started otherwise) is one line, exit status 2
    def sweep(self, arguments: list[str]) -> Any:
        fixed, swept = search.split_arguments(arguments)
        space = search.search_space(
            self.settings["params"], self.settings["spaces"], self.settings["families"], self.algo
        )
        space.update(swept)
        study = search.open_study(self.settings, fixed)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        print(
            f"study {study.study_name!r} in {self.settings['storage']}: {len(study.trials)} of "
            f"{self.settings['n_trials']} trials so far; {self.settings['sampler']} over {', '.join(space)}"
        )
        try:
            search.run_search(study, space, fixed, self.settings, self.launch)
        finally:
            best = search.write_best(study, sweep_dir)
        print(f"study {study.study_name!r}: {len(study.trials)} trials; best in {best}")
        return study
