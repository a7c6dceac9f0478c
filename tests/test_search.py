"""hparams_search=random|tpe|gp: search spaces per algo family, the study on disk (resume, shared by processes)."""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from metanlp_cli import CONFIG_DIR, search
from metanlp_cli.algorithms.base import LabelSpace
from metanlp_cli.algorithms.protonet import ProtoNet, similarities
from metanlp_cli.errors import MetaNLPError
from tests.test_cli import metanlp

needs_optuna = pytest.mark.skipif(importlib.util.find_spec("optuna") is None, reason="needs the sweeps extra")
SWEEPER = yaml.safe_load((CONFIG_DIR / "hydra" / "sweeper" / "metanlp_study.yaml").read_text())
ALGOS = sorted(p.stem for p in (CONFIG_DIR / "algo").glob("*.yaml"))


def study_of(sweep_dir, name):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{sweep_dir}/study.db")


def settings(storage: str, **changes) -> dict:
    base = {key: SWEEPER[key] for key in ("sampler", "seed", "n_startup_trials", "direction", "n_trials", "n_jobs")}
    return {**base, "study_name": "test", "storage": storage, "resume_running": False, **changes}


@needs_optuna
@pytest.mark.parametrize("algo", ALGOS)
def test_every_algo_has_a_search_space_whose_keys_it_has(algo, compose_config):
    space = search.search_space(None, SWEEPER["spaces"], SWEEPER["families"], algo)
    config = compose_config("train", [f"algo={algo}"])
    overrides = [
        f"{key}={distribution.choices[0] if hasattr(distribution, 'choices') else distribution.low}"
        for key, distribution in space.items()
    ]
    composed = compose_config("train", [f"algo={algo}", *overrides])  # an unknown key would fail here
    assert set(space) and composed.algo._target_ == config.algo._target_
    family = SWEEPER["families"][algo]
    expected = {
        "gradient": "algo.inner_train.lr",
        "learned_rate": "algo.init_lr",
        "metric": "algo.temperature",
        "finetune": "algo.inner_eval.steps",
        "matching": "algo.scale",
        "relation": "algo.hidden_size",
        "induction": "algo.routing_iterations",
        "metanet": "algo.generator_layers",
        "ridge": "algo.init_lambda",
        "setfit": "algo.contrastive.lr",
    }[family]
    assert expected in space


@needs_optuna
def test_spaces_parse_hydra_sweep_syntax_and_mappings():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    assert search.distribution("a", "tag(log, interval(0.01, 1.0))") == FloatDistribution(0.01, 1.0, log=True)
    assert search.distribution("a", "int(interval(1, 5))") == IntDistribution(1, 5)
    assert search.distribution("a", "choice(euclidean, cosine)") == CategoricalDistribution(["euclidean", "cosine"])
    assert search.distribution("a", "range(1, 4)") == IntDistribution(1, 3)
    assert search.distribution("a", {"low": 1, "high": 9, "int": True}) == IntDistribution(1, 9)
    assert search.distribution("a", "3") is None  # a fixed value
    fixed, swept = search.split_arguments(["debug=smoke", "seed=1", "trainer.steps=choice(2, 4)"])
    assert fixed == ["debug=smoke", "seed=1"] and swept == {"trainer.steps": CategoricalDistribution([2, 4])}
    with pytest.raises(MetaNLPError, match="cannot sweep the config group algo"):
        search.split_arguments(["algo=maml,reptile"])
    with pytest.raises(MetaNLPError, match="no search space for algo=mine: give one with 'hydra.sweeper.params="):
        search.search_space(None, SWEEPER["spaces"], SWEEPER["families"], "mine")
    given = search.search_space({"optim.lr": "interval(0.001, 0.1)"}, SWEEPER["spaces"], {}, "mine")
    assert given == {"optim.lr": FloatDistribution(0.001, 0.1)}


@needs_optuna
@pytest.mark.parametrize("name", search.SAMPLERS)
def test_each_sampler_is_the_one_named(name):
    kinds = {"random": "RandomSampler", "tpe": "TPESampler", "gp": "GPSampler"}
    assert type(search.make_sampler(name, 0, 2)).__name__ == kinds[name]
    with pytest.raises(MetaNLPError, match="allowed: random, tpe, gp"):
        search.make_sampler("cmaes", 0, 2)


@needs_optuna
def test_a_study_stops_at_n_trials_runs_interrupted_trials_first_and_refuses_other_overrides(tmp_path):
    storage = f"sqlite:///{tmp_path}/study.db"
    space = search.search_space(None, SWEEPER["spaces"], SWEEPER["families"], "maml")
    study = search.open_study(settings(storage, n_trials=3, n_jobs=2), ["debug=smoke"])
    first = search.next_trials(study, space, 3, 2)
    assert [number for number, _ in first] == [0, 1] and set(first[0][1]) == set(space)
    search.keep_for_later(study, storage, [1])  # the process stopped during trial 1
    study.tell(0, 0.5)
    again = search.open_study(settings(storage, n_trials=3, n_jobs=2), ["debug=smoke"])
    batch = search.next_trials(again, space, 3, 2)
    assert [number for number, _ in batch] == [1, 2] and batch[0][1] == first[1][1]  # the same parameters
    assert search.next_trials(again, space, 3, 2) == []  # 3 trials in the study: full
    assert again.user_attrs[search.SESSIONS] == 2
    with pytest.raises(MetaNLPError, match=r"was started with the overrides \['debug=smoke'\], not \[\]"):
        search.open_study(settings(storage), [])


def test_protonet_temperature_divides_the_similarities():
    features, references = torch.randn(4, 3), torch.randn(2, 3)
    for distance in ("euclidean", "cosine"):
        base = similarities(features, references, distance)
        assert torch.allclose(similarities(features, references, distance, 0.5), 2 * base)
    with pytest.raises(ValueError, match="algo.temperature=0 must be positive"):
        ProtoNet(torch.nn.Identity(), LabelSpace(2, 2), temperature=0)


def searched(sweep, *overrides):
    return metanlp("train", "-m", *overrides, "debug=smoke", f"hydra.sweep.dir={sweep}")


def complete_trials(study) -> list:
    return [t for t in study.trials if t.state.name == "COMPLETE"]


@pytest.mark.smoke
@pytest.mark.slow
@needs_optuna
def test_the_optuna_alias_is_tpe_over_maml_and_its_report_has_the_best_trial_and_plots(tmp_path):
    sweep = tmp_path / "search"
    result = searched(sweep, "hparams_search=optuna", "hydra.sweeper.n_trials=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "study 'maml_optuna'" in result.stdout and "tpe over algo.inner_train.lr" in result.stdout
    study = study_of(sweep, "maml_optuna")
    assert len(complete_trials(study)) == 2 and sorted(p.name for p in sweep.glob("*_maml_cnn_seed0")) == [
        "0_maml_cnn_seed0",
        "1_maml_cnn_seed0",
    ]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_value"] == pytest.approx(study.best_value) and best["best_params"] == study.best_params

    out = tmp_path / "report"
    reported = metanlp("report", str(sweep), "--out", str(out))
    assert reported.returncode == 0, reported.stderr
    text = (out / "report.md").read_text()
    assert "## Test accuracy (%)" in text and "### Search `maml_optuna` (tpe;" in text
    assert f"**Best trial: #{study.best_trial.number}**, validation score {100 * study.best_value:.2f}%" in text
    assert "| trial | state | validation (%) | algo.inner_train.lr | algo.inner_train.steps | optim.lr |" in text
    for png in ("search_history_maml_optuna.png", "search_importances_maml_optuna.png"):
        assert f"]({png})" in text and (out / png).stat().st_size > 1000


@pytest.mark.slow
@needs_optuna
@pytest.mark.parametrize("sampler", ["random", "gp"])
def test_a_six_trial_search_over_protonets_space(tmp_path, sampler):
    sweep = tmp_path / sampler
    result = searched(sweep, f"hparams_search={sampler}", "algo=protonet", "hydra.sweeper.n_trials=6")
    assert result.returncode == 0, result.stderr[-3000:]
    study = study_of(sweep, f"protonet_{sampler}")
    trials = complete_trials(study)
    assert len(study.trials) == len(trials) == 6
    assert f"{sampler} over optim.lr, algo.distance, algo.temperature" in result.stdout
    for trial in trials:
        assert set(trial.params) == {"optim.lr", "algo.distance", "algo.temperature"}
        run = next(sweep.glob(f"{trial.number}_protonet_cnn_seed0"))
        config = yaml.safe_load((run / "config.yaml").read_text())
        assert config["algo"]["temperature"] == pytest.approx(trial.params["algo.temperature"])
        assert trial.value == pytest.approx(yaml.safe_load((run / "results.json").read_text())["best_val_accuracy"])
    assert len({trial.params["optim.lr"] for trial in trials}) == 6
    if sampler == "gp":  # 4 random startup points (the same as random search's), then the GP's proposals
        import optuna

        space = search.search_space(None, SWEEPER["spaces"], SWEEPER["families"], "protonet")
        random = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=SWEEPER["seed"]))
        draws = [random.ask(space).params for _ in range(6)]
        assert [t.params for t in trials[:4]] == draws[:4] and trials[4].params != draws[4]


def start_search(sweep, n_trials: int) -> subprocess.Popen:
    arguments = ["train", "-m", "hparams_search=random", "debug=smoke", f"hydra.sweeper.n_trials={n_trials}"]
    return subprocess.Popen(
        [sys.executable, "-m", "metanlp_cli", *arguments, f"hydra.sweep.dir={sweep}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@pytest.mark.slow
@needs_optuna
def test_a_search_stopped_after_three_trials_resumes_to_six_not_nine(tmp_path):
    sweep = tmp_path / "search"
    process = start_search(sweep, 6)
    deadline = time.monotonic() + 240
    while len(list(sweep.glob("*/results.json"))) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)  # what `kill` and a cluster send; Ctrl-C (SIGINT) takes the same path
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
    stopped = study_of(sweep, "protonet_random")
    before = len(stopped.trials)  # the study reads its database: count now
    assert 3 <= len(complete_trials(stopped)) < 6 and before < 6

    resumed = searched(sweep, "hparams_search=random", "hydra.sweeper.n_trials=6")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"{before} of 6 trials so far" in resumed.stdout
    study = study_of(sweep, "protonet_random")
    assert len(study.trials) == len(complete_trials(study)) == 6
    assert len({trial.params["optim.lr"] for trial in study.trials}) == 6  # new draws after the resume
    assert len(list(sweep.glob("*/results.json"))) == 6


@pytest.mark.slow
@needs_optuna
def test_two_processes_fill_one_study(tmp_path):
    sweep = tmp_path / "search"
    processes = [start_search(sweep, 6) for _ in range(2)]
    outputs = [process.communicate(timeout=400)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    study = study_of(sweep, "protonet_random")
    assert len(study.trials) == len(complete_trials(study)) == 6
    assert study.user_attrs[search.SESSIONS] == 2
    ran = [sum(f"] \t#{number} :" in output for number in range(6)) for output in outputs]
    assert sum(ran) == 6 and min(ran) >= 1, ran  # both took part
    assert len(list(sweep.glob("*/results.json"))) == 6


@pytest.mark.smoke
@needs_optuna
def test_a_search_error_is_one_line(tmp_path):
    refused = searched(tmp_path / "search", "hparams_search=random", "algo=maml,reptile")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and lines == [
        "error: algo=maml,reptile: a search cannot sweep the config group algo; run one search per algo"
    ], refused.stderr[-2000:]
