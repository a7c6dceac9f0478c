"""Sweeps through the CLI: Hydra's basic sweeper then `metanlp report`, an Optuna search (hparams_search=optuna, the
former preset's name; tests/test_search.py has the rest), the joblib launcher."""

from __future__ import annotations

import importlib.util
import json

import pytest
import yaml

from metanlp_cli import compose
from metanlp_cli.errors import MetaNLPError
from tests.test_cli import metanlp


def has_plugin(name: str) -> bool:
    try:
        return importlib.util.find_spec(f"hydra_plugins.{name}") is not None
    except ModuleNotFoundError:  # no Hydra plugin installed at all: no `hydra_plugins` package
        return False


@pytest.mark.smoke
def test_a_sweep_gets_one_directory_per_job_and_a_report(tmp_path):
    sweep = tmp_path / "sweep"
    swept = metanlp("train", "-m", "debug=smoke", "algo=protonet,reptile", "seed=1,2", f"hydra.sweep.dir={sweep}")
    assert swept.returncode == 0, swept.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0_protonet_cnn_seed1", "1_protonet_cnn_seed2", "2_reptile_cnn_seed1", "3_reptile_cnn_seed2"]
    for job in jobs:
        assert (sweep / job / "results.json").is_file() and (sweep / job / "checkpoints" / "best.pt").is_file()

    out = tmp_path / "report"
    reported = metanlp("report", str(sweep), "--out", str(out))
    assert reported.returncode == 0, reported.stderr
    text = (out / "report.md").read_text()
    assert "4 runs from" in text and "`debug=smoke`" in text
    assert "| protonet/cnn | " in text and "| reptile/cnn | " in text and text.count("(n=2)") == 2
    assert "### chatterbot 5-way 5-shot: 10 test episodes, protocol seed 2024" in text
    assert (out / "validation_chatterbot_5_way_5_shot.png").stat().st_size > 1000

    missing = metanlp("report", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and missing.stderr.startswith("error: report: ")


@pytest.mark.smoke
@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("optuna") is None, reason="needs the sweeps extra (optuna)")
def test_an_optuna_search_maximises_the_validation_accuracy(tmp_path):
    sweep = tmp_path / "search"
    searched = metanlp(
        "train", "-m", "hparams_search=optuna", "debug=smoke", "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}"
    )
    assert searched.returncode == 0, searched.stderr[-3000:]
    trials = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(trials) == 3
    best_val = {}
    for trial in trials:
        overrides = dict(o.split("=", 1) for o in yaml.safe_load((trial / ".hydra" / "overrides.yaml").read_text()))
        assert (
            0.01 <= float(overrides["algo.inner_train.lr"]) <= 1.0
            and 1 <= int(overrides["algo.inner_train.steps"]) <= 5
        )
        assert 1e-4 <= float(overrides["optim.lr"]) <= 1e-2
        best_val[trial.name] = json.loads((trial / "results.json").read_text())["best_val_accuracy"]
    optimum = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert optimum["best_value"] == pytest.approx(max(best_val.values()))
    assert set(optimum["best_params"]) == {"algo.inner_train.lr", "algo.inner_train.steps", "optim.lr"}


@pytest.mark.slow
@pytest.mark.skipif(not has_plugin("hydra_joblib_launcher"), reason="needs the sweeps extra (hydra-joblib-launcher)")
def test_the_joblib_launcher_runs_jobs_in_parallel_processes(tmp_path):
    sweep = tmp_path / "sweep"
    swept = metanlp(
        "train",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "debug=smoke",
        "algo=protonet,reptile",
        f"hydra.sweep.dir={sweep}",
    )
    assert swept.returncode == 0, swept.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in swept.stderr + swept.stdout
    assert len(list(sweep.glob("*/results.json"))) == 2


def test_sweep_options_need_their_plugin_and_a_search_needs_multirun(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MetaNLPError, match=r"hydra/launcher=joblib needs the sweeps extra: pip install"):
        compose.check_sweep_options(["hydra/launcher=joblib"], multirun=True)
    with pytest.raises(MetaNLPError, match=r"hparams_search=optuna needs the sweeps extra"):
        compose.check_sweep_options(["hparams_search=optuna"], multirun=True)
    monkeypatch.undo()
    if importlib.util.find_spec("optuna") is not None:
        with pytest.raises(MetaNLPError, match=r"hparams_search=optuna runs many trainings: add -m"):
            compose.check_sweep_options(["hparams_search=optuna"], multirun=False)
