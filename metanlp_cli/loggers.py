"""Experiment trackers, chosen with the `logger` config group: csv (the default), tensorboard, mlflow, or several.

Every logger has the same four methods: `log_params(params)`, `log_metrics(metrics, step)`,
`log_artifacts(paths)` and `close(status)`. `Loggers` hands each call to the chosen ones, and always writes
the run directory's metrics.jsonl, which `metanlp report` and `resume` read.
"""

from __future__ import annotations

import atexit
import csv
import json
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from metanlp_cli.config import build
from metanlp_cli.errors import MetaNLPError

MLFLOW_PARAM_LENGTH = 6000  # MLflow's longest parameter value


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as dotted keys (`algo.inner_train.lr`); lists as JSON."""
    if isinstance(node, Mapping):
        return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: json.dumps(node) if isinstance(node, list | tuple) else node}


def result_metrics(results: Mapping) -> dict[str, float]:
    """The test results as metrics: `test_accuracy`, `test_accuracy_ci95`, ... and `best_val_*`."""
    metrics = {}
    for name, value in results.items():
        if isinstance(value, Mapping) and isinstance(value.get("mean"), int | float):
            metrics[f"test_{name}"] = value["mean"]
            if isinstance(value.get("ci95"), int | float):
                metrics[f"test_{name}_ci95"] = value["ci95"]
        elif name.startswith("best_val_") and isinstance(value, int | float):
            metrics[name] = value
    return {name: float(value) for name, value in metrics.items() if math.isfinite(value)}


class CSVLogger:
    """metrics.csv in the run directory, one `step,name,value` row per metric (next to metrics.jsonl,
    results.json/md and config.yaml, which every run writes)."""

    def __init__(self, run_dir: Path, filename: str = "metrics.csv") -> None:
        self.path = Path(run_dir) / filename

    def log_params(self, params: Mapping[str, Any]) -> None:
        """config.yaml holds them already."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        new = not self.path.is_file()
        with self.path.open("a", newline="") as file:
            writer = csv.writer(file)
            if new:
                writer.writerow(["step", "name", "value"])
            writer.writerows([step, name, value] for name, value in metrics.items())

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        """They are in the run directory already."""

    def close(self, status: str = "FINISHED") -> None:
        pass


class TensorBoardLogger:
    """Event files in RUN_DIR/tensorboard (or save_dir): scalars per step, the config and results.md as text."""

    def __init__(self, run_dir: Path, save_dir: str | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MetaNLPError("logger=tensorboard needs TensorBoard: pip install 'metanlp_cli[tracking]'") from None
        self.writer = SummaryWriter(log_dir=str(save_dir or Path(run_dir) / "tensorboard"))

    def log_params(self, params: Mapping[str, Any]) -> None:
        table = "\n".join(f"| {key} | {value} |" for key, value in params.items())
        self.writer.add_text("config", "| key | value |\n|---|---|\n" + table, 0)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        for path in paths:  # TensorBoard keeps no files: the text ones are shown as text
            if path.suffix == ".md":
                self.writer.add_text(path.name, path.read_text(), 0)

    def close(self, status: str = "FINISHED") -> None:
        self.writer.close()


class MLflowLogger:
    """One MLflow run per training run, in `experiment_name` (null: the sweep directory for the jobs of a -m
    sweep, so that a sweep is one experiment, else `metanlp`), at `tracking_uri` (a local sqlite:/// file or
    folder, or a server's http:// URL)."""

    def __init__(
        self,
        run_dir: Path,
        tracking_uri: str,
        experiment_name: str | None = None,
        artifact_location: str | None = None,
        run_name: str | None = None,
        tags: dict | None = None,
    ) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise MetaNLPError("logger=mlflow needs MLflow: pip install 'metanlp_cli[tracking]'") from None
        if "://" not in tracking_uri:  # a folder: MLflow's file store
            tracking_uri = Path(tracking_uri).resolve().as_uri()
        self.client = MlflowClient(tracking_uri=tracking_uri)
        name = experiment_name or default_experiment_name()
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            location = Path(artifact_location).resolve().as_uri() if artifact_location else None
            try:
                experiment_id = self.client.create_experiment(name, artifact_location=location)
            except Exception:  # another job of the sweep created it first
                experiment_id = self.client.get_experiment_by_name(name).experiment_id
        else:
            experiment_id = experiment.experiment_id
        run_tags = {"run_dir": str(Path(run_dir).resolve()), **(tags or {})}
        self.run_id = self.client.create_run(
            experiment_id, run_name=run_name or Path(run_dir).name, tags=run_tags
        ).info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        entries = [Param(key, str(value)[:MLFLOW_PARAM_LENGTH]) for key, value in params.items()]
        for start in range(0, len(entries), 100):  # MLflow takes at most 100 parameters a call
            self.client.log_batch(self.run_id, params=entries[start : start + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def log_artifacts(self, paths: Iterable[Path]) -> None:
        for path in paths:
            self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


def default_experiment_name() -> str:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return str(HydraConfig.get().sweep.dir)
    return "metanlp"


class Loggers:
    """The chosen loggers of one run, and its metrics.jsonl. A run that ends without `finish` (an error, a
    stop) is closed as FAILED when the process exits."""

    def __init__(self, run_dir: Path, loggers: list) -> None:
        self.run_dir, self.loggers = Path(run_dir), loggers
        atexit.register(self.close, "FAILED")

    def log_params(self, params: Mapping[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_params(params)

    def log_metrics(self, record: Mapping[str, Any]) -> None:
        """One metrics.jsonl record ({"step": N, name: value, ...}), to the file and to every logger."""
        with (self.run_dir / "metrics.jsonl").open("a") as file:
            file.write(json.dumps(dict(record)) + "\n")
        metrics = {name: value for name, value in record.items() if name != "step"}
        for logger in self.loggers:
            logger.log_metrics(metrics, record["step"])

    def finish(self, results: Mapping, step: int) -> None:
        """The test results with their CIs as metrics (results.json has them: not in metrics.jsonl), the run's
        files as artifacts, and close."""
        for logger in self.loggers:
            logger.log_metrics(result_metrics(results), step)
        files = [self.run_dir / name for name in ("results.md", "results.json", "config.yaml")]
        files += sorted(self.run_dir.glob("*.png"))
        for logger in self.loggers:
            logger.log_artifacts([path for path in files if path.is_file()])
        self.close("FINISHED")

    def close(self, status: str) -> None:
        atexit.unregister(self.close)
        loggers, self.loggers = self.loggers, []
        for logger in loggers:
            logger.close(status)


def open_loggers(cfg: DictConfig, run_dir: Path, enabled: bool = True) -> Loggers:
    """The loggers that cfg.logger names ({name: target config}), given the resolved config as parameters.
    `enabled=False` (a torchrun worker other than rank 0): none, and no metrics.jsonl."""
    if not enabled:
        return Loggers(run_dir, [])
    loggers = [build(node, f"logger.{name}", run_dir=run_dir) for name, node in (cfg.get("logger") or {}).items()]
    tracker = Loggers(run_dir, loggers)
    tracker.log_params(flatten(OmegaConf.to_container(cfg, resolve=True)))
    return tracker
