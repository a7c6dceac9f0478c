"""The logger group: csv, tensorboard, mlflow (read back through their own readers), several at once."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys

import pytest
from omegaconf import OmegaConf

from metanlp_cli import loggers
from metanlp_cli.errors import MetaNLPError
from tests.test_cli import metanlp

needs_mlflow = pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="needs the tracking extra")
needs_tensorboard = pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="needs the tracking extra"
)


class Recorder:
    def __init__(self):
        self.calls = []

    def log_params(self, params):
        self.calls.append(("params", dict(params)))

    def log_metrics(self, metrics, step):
        self.calls.append(("metrics", dict(metrics), step))

    def log_artifacts(self, paths):
        self.calls.append(("artifacts", sorted(p.name for p in paths)))

    def close(self, status="FINISHED"):
        self.calls.append(("close", status))


def test_loggers_write_metrics_jsonl_and_hand_every_call_to_each_logger(tmp_path):
    recorder = Recorder()
    tracker = loggers.Loggers(tmp_path, [recorder])
    tracker.log_params(loggers.flatten({"algo": {"inner_train": {"lr": 0.1}}, "evaluations": [["protocol=kshot"]]}))
    tracker.log_metrics({"step": 1, "meta_loss": 1.5})
    (tmp_path / "results.md").write_text("# Results\n")
    (tmp_path / "curve.png").write_bytes(b"png")
    results = {"accuracy": {"mean": 0.5, "ci95": 0.1, "count": 10}, "best_val_accuracy": 0.4, "algo": "maml"}
    tracker.finish(results, 4)
    tracker.close("FAILED")  # again (at exit): nothing more
    assert [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [
        {"step": 1, "meta_loss": 1.5}  # the test results are in results.json (resume keeps the records <= its step)
    ]
    assert recorder.calls == [
        ("params", {"algo.inner_train.lr": 0.1, "evaluations": '[["protocol=kshot"]]'}),
        ("metrics", {"meta_loss": 1.5}, 1),
        ("metrics", {"test_accuracy": 0.5, "test_accuracy_ci95": 0.1, "best_val_accuracy": 0.4}, 4),
        ("artifacts", ["curve.png", "results.md"]),
        ("close", "FINISHED"),
    ]


def test_csv_logger_writes_step_name_value_rows(tmp_path):
    logger = loggers.CSVLogger(tmp_path)
    logger.log_metrics({"meta_loss": 2.0}, 1)
    logger.log_metrics({"val_accuracy": 0.5, "val_ci95": 0.1}, 2)
    rows = list(csv.reader((tmp_path / "metrics.csv").open()))
    assert rows == [
        ["step", "name", "value"],
        ["1", "meta_loss", "2.0"],
        ["2", "val_accuracy", "0.5"],
        ["2", "val_ci95", "0.1"],
    ]


def test_a_logger_without_its_package_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(MetaNLPError, match=r"^logger=mlflow needs MLflow: pip install 'metanlp_cli\[tracking\]'$"):
        loggers.MLflowLogger(tmp_path, "sqlite:///x.db")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(MetaNLPError, match=r"^logger=tensorboard needs TensorBoard: pip install"):
        loggers.TensorBoardLogger(tmp_path)


@pytest.mark.parametrize(
    ("choice", "names"),
    [
        ("csv", ["csv"]),
        ("mlflow", ["mlflow"]),
        ("many", ["csv", "tensorboard", "mlflow"]),
        ("[csv,mlflow]", ["csv", "mlflow"]),
    ],
)
def test_the_logger_group_composes_one_or_several(compose_config, choice, names):
    assert list(compose_config("train", [f"logger={choice}"]).logger) == names


def test_open_loggers_builds_the_configured_ones_and_none_for_other_ranks(tmp_path):
    cfg = OmegaConf.create({"logger": {"csv": {"_target_": "metanlp_cli.loggers.CSVLogger"}}, "seed": 0})
    tracker = loggers.open_loggers(cfg, tmp_path)
    assert [type(logger).__name__ for logger in tracker.loggers] == ["CSVLogger"]
    tracker.close("FINISHED")
    assert loggers.open_loggers(cfg, tmp_path, enabled=False).loggers == []


def train(tmp_path, *overrides):
    run_dir = tmp_path / "run"
    result = metanlp("train", "debug=smoke", *overrides, f"paths.output_root={tmp_path}", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


@pytest.mark.smoke
@needs_mlflow
def test_an_mlflow_run_is_read_back_with_mlflows_client(tmp_path):
    from mlflow.tracking import MlflowClient

    run_dir = train(tmp_path, "logger=mlflow", "algo=maml")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name("metanlp")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED" and run.data.tags["run_dir"] == str(run_dir)
    params = run.data.params
    assert params["algo._target_"] == "metanlp_cli.algorithms.maml.MAML" and params["trainer.steps"] == "4"
    assert params["algo.inner_train.lr"] == "0.1" and params["algo.inner_eval.lr"] == "0.1"  # resolved
    history = client.get_metric_history(run.info.run_id, "meta_loss")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [(m.step, m.value) for m in history] == [(r["step"], r["meta_loss"]) for r in records if "meta_loss" in r]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [2, 4]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "episodes_per_s")] == [2, 4]
    results = json.loads((run_dir / "results.json").read_text())
    assert run.data.metrics["test_accuracy"] == pytest.approx(results["accuracy"]["mean"])
    assert run.data.metrics["test_accuracy_ci95"] == pytest.approx(results["accuracy"]["ci95"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"config.yaml", "results.json", "results.md"}
    local = client.download_artifacts(run.info.run_id, "results.md", str(tmp_path))
    assert open(local).read() == (run_dir / "results.md").read_text()
    assert not (run_dir / "metrics.csv").exists()  # logger=mlflow alone: no csv logger


@pytest.mark.smoke
@needs_tensorboard
def test_a_tensorboard_run_is_read_back_with_tensorboards_event_reader(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = train(tmp_path, "logger=[csv,tensorboard]")
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert {"meta_loss", "val_accuracy", "val_ci95", "episodes_per_s", "test_accuracy", "test_accuracy_ci95"} <= set(
        events.Tags()["scalars"]
    )
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = [(r["step"], r["val_accuracy"]) for r in records if "val_accuracy" in r]
    assert [(s.step, s.value) for s in events.Scalars("val_accuracy")] == [(step, pytest.approx(v)) for step, v in val]
    assert "config/text_summary" in events.Tags()["tensors"] and "results.md/text_summary" in events.Tags()["tensors"]
    assert (run_dir / "metrics.csv").read_text().startswith("step,name,value\n1,meta_loss,")


@pytest.mark.smoke
@pytest.mark.slow
@needs_mlflow
def test_a_sweep_is_one_mlflow_experiment_with_a_run_per_job(tmp_path):
    from mlflow.tracking import MlflowClient

    sweep = tmp_path / "sweep"
    result = metanlp(
        "train", "-m", "debug=smoke", "logger=mlflow", "algo=protonet,reptile",
        f"paths.output_root={tmp_path}", f"hydra.sweep.dir={sweep}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment = client.get_experiment_by_name(str(sweep))
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.data.tags["run_dir"] for run in runs) == [
        str(sweep / "0_protonet_cnn_seed0"),
        str(sweep / "1_reptile_cnn_seed0"),
    ]
    assert {run.data.params["algo._target_"].rsplit(".", 1)[1] for run in runs} == {"ProtoNet", "Reptile"}
