"""`metanlp report`: grouping seeds, confidence intervals, paired differences, files; on hand-made run directories."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import yaml
from scipy import stats

from metanlp_cli.errors import MetaNLPError
from metanlp_cli.report import find_runs, main, paired_difference, write_report

EPISODES = 40


def make_run(directory, algo, seed, episode_accuracies, k_shot=5, backbone="cnn", inner_lr=0.1, overrides=(), curve=()):
    """A run directory as `metanlp train` writes it (only what the report reads)."""
    directory.mkdir(parents=True)
    scores = [float(x) for x in episode_accuracies]
    results = {
        "protocol": "episodic",
        "split": "test",
        "n_way": 5,
        "k_shot": k_shot,
        "q_query": 15,
        "episodes": len(scores),
        "seed": 2024,
        "accuracy": {"mean": float(np.mean(scores)), "std": float(np.std(scores, ddof=1)), "ci95": 0.01},
        "episode_accuracies": scores,
        "dataset": "chatterbot",
        "algo": algo,
        "backbone": backbone,
        "checkpoint": str(directory / "checkpoints" / "best.pt"),
    }
    (directory / "results.json").write_text(json.dumps(results))
    config = {"seed": seed, "trainer": {"seed": seed, "steps": 100}, "algo": {"inner_train": {"lr": inner_lr}}}
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    (directory / ".hydra").mkdir()
    (directory / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"algo={algo}", f"seed={seed}", *overrides]))
    (directory / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "val_accuracy": v}) + "\n" for s, v in curve)
    )
    return results


def scores(seed: int, level: float) -> np.ndarray:
    """Per-episode accuracies: a difficulty shared by all runs (same episodes) plus the run's own noise."""
    difficulty = np.random.default_rng(0).normal(0, 0.1, EPISODES)
    noise = np.random.default_rng([seed, round(1000 * level)]).normal(0, 0.05, EPISODES)
    return np.clip(level + difficulty + noise, 0, 1)


@pytest.fixture
def sweep(tmp_path):
    """maml (2 seeds, 60%), protonet (2 seeds, 45%), reptile (1 seed, 60.5%): shared test episodes."""
    root = tmp_path / "multirun"
    runs = {
        ("maml", 1): make_run(root / "0", "maml", 1, scores(1, 0.60), curve=[(10, 0.4), (20, 0.5)]),
        ("maml", 2): make_run(root / "1", "maml", 2, scores(2, 0.62), curve=[(10, 0.3), (20, 0.6)]),
        ("protonet", 1): make_run(root / "2", "protonet", 1, scores(1, 0.45), curve=[(10, 0.4)]),
        ("protonet", 2): make_run(root / "3", "protonet", 2, scores(2, 0.45), curve=[(10, 0.4)]),
        ("reptile", 1): make_run(root / "4", "reptile", 1, scores(1, 0.605)),
    }
    return root, runs


def test_seeds_are_averaged_with_a_student_t_interval(sweep, tmp_path):
    root, runs = sweep
    report = write_report([root], tmp_path / "report")
    assert report.methods == ["maml/cnn", "protonet/cnn", "reptile/cnn"]
    (task,) = report.tasks
    maml = report.cells[("maml/cnn", task)]
    means = [runs[("maml", s)]["accuracy"]["mean"] for s in (1, 2)]
    low, high = stats.t.interval(0.95, 1, loc=np.mean(means), scale=stats.sem(means))
    assert len(maml.runs) == 2 and maml.ci_over == "seeds"
    assert maml.mean == pytest.approx(np.mean(means)) and maml.ci95 == pytest.approx((high - low) / 2)
    reptile = report.cells[("reptile/cnn", task)]
    assert reptile.ci_over == "episodes" and reptile.ci95 == 0.01  # one seed: its own CI over the episodes


def test_paired_difference_matches_a_paired_t_test(sweep, tmp_path):
    root, runs = sweep
    report = write_report([root], tmp_path / "report")
    (task,) = report.tasks
    maml = np.mean([runs[("maml", s)]["episode_accuracies"] for s in (1, 2)], axis=0)
    protonet = np.mean([runs[("protonet", s)]["episode_accuracies"] for s in (1, 2)], axis=0)
    expected = stats.ttest_rel(maml, protonet).confidence_interval(0.95)
    difference = paired_difference(report.cells[("maml/cnn", task)].runs, report.cells[("protonet/cnn", task)].runs)
    assert difference["mean"] == pytest.approx(np.mean(maml - protonet))
    assert (difference["low"], difference["high"]) == pytest.approx((expected.low, expected.high))
    assert difference["episodes"] == EPISODES


def test_report_files_mark_the_best_and_say_who_is_significantly_better(sweep, tmp_path):
    root, _ = sweep
    write_report([root], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| maml/cnn | **" in text and "(n=2)**" in text  # best column entry, 2 seeds
    assert "| maml/cnn | protonet/cnn |" in text and "| maml/cnn better |" in text
    assert "| reptile/cnn | protonet/cnn |" in text and "| reptile/cnn better |" in text
    # reptile (1 seed) and maml (mean of 2) are about equal: not significant on 40 episodes
    assert any(
        line.startswith(("| maml/cnn | reptile/cnn |", "| reptile/cnn | maml/cnn |"))
        and "no significant difference" in line
        for line in text.splitlines()
    )
    rows = list(csv.DictReader((tmp_path / "report" / "report.csv").open()))
    assert [(r["method"], r["runs"], r["seeds"], r["best"]) for r in rows] == [
        ("maml/cnn", "2", "1 2", "True"),
        ("protonet/cnn", "2", "1 2", "False"),
        ("reptile/cnn", "1", "1", "False"),
    ]
    paired = list(csv.DictReader((tmp_path / "report" / "paired.csv").open()))
    assert len(paired) == 3 and all(float(r["ci95_low_pct"]) <= float(r["difference_pct"]) for r in paired)
    pngs = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert pngs == ["accuracy_chatterbot_5_way_5_shot.png", "validation_chatterbot_5_way_5_shot.png"]
    assert "![validation_chatterbot_5_way_5_shot](validation_chatterbot_5_way_5_shot.png)" in text
    assert "Settings shared by every run: none." in text  # algo= and seed= differ


def test_differing_settings_name_the_method_and_several_k_get_a_plot(tmp_path):
    make_run(tmp_path / "a", "maml", 1, scores(1, 0.5), inner_lr=0.1, overrides=["trainer.steps=100"])
    make_run(tmp_path / "b", "maml", 1, scores(2, 0.5), inner_lr=0.0123456, overrides=["trainer.steps=100"])
    make_run(tmp_path / "c", "maml", 1, scores(3, 0.4), k_shot=1, overrides=["trainer.steps=100"])
    report = write_report([tmp_path], tmp_path / "report")
    assert report.methods == ["maml/cnn algo.inner_train.lr=0.01235", "maml/cnn algo.inner_train.lr=0.1"]
    assert [t.k_shot for t in report.tasks] == [1, 5]
    assert (tmp_path / "report" / "accuracy_vs_k_chatterbot_5_way_test.png").is_file()
    assert (
        "Settings shared by every run: `algo=maml`, `seed=1`, `trainer.steps=100`."
        in (tmp_path / "report" / "report.md").read_text()
    )


def test_a_reproduced_run_is_not_counted_as_another_seed(tmp_path):
    make_run(tmp_path / "train", "maml", 1, scores(1, 0.5))
    make_run(tmp_path / "eval", "maml", 1, scores(1, 0.5))  # `metanlp eval` of the same checkpoint
    make_run(tmp_path / "seed2", "maml", 2, scores(2, 0.5))
    assert len(find_runs([tmp_path])) == 2


def test_bad_paths_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(MetaNLPError, match="does not exist"):
        find_runs([tmp_path / "nope"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text('{"something": "else"}')
    with pytest.raises(MetaNLPError, match="no results.json under"):
        find_runs([tmp_path])
    assert "skipping" in capsys.readouterr().err


def test_main_prints_the_table(sweep, tmp_path, capsys):
    root, _ = sweep
    main([str(root), "--out", str(tmp_path / "out")])
    output = capsys.readouterr().out
    assert "| method | chatterbot 5-way 5-shot |" in output and f"report: {tmp_path / 'out' / 'report.md'}" in output
    assert not math.isnan(float(output.split("| protonet/cnn | ")[1].split(" ")[0]))


def test_a_regression_only_run_is_left_out_with_a_note_saying_why(sweep, capsys):
    root, _ = sweep
    results = json.loads((root / "0" / "results.json").read_text())
    for key in ("accuracy", "episode_accuracies"):
        results.pop(key)
    results.update(pearson={"mean": 0.3, "ci95": 0.1, "count": 3}, episode_pearson=[0.2, 0.3, 0.4])
    (root / "0" / "results.json").write_text(json.dumps(results))
    assert len(find_runs([root])) == 4
    assert "0/results.json: regression episodes only (report compares accuracies)" in capsys.readouterr().err


def make_kshot_run(directory, algo, per_set: dict[str, dict[str, float]], k_shot=16, dataset="lmbff/sst2"):
    """A `metanlp eval protocol=kshot` directory: per task, each training set's accuracy."""
    directory.mkdir(parents=True)
    tasks = {
        name: {
            "metrics": ["accuracy"], "regression": False, "k_shot": [k_shot], "score_metric": "accuracy",
            "training_sets": {seed: {"accuracy": value} for seed, value in sets.items()},
            "score": {"mean": float(np.mean(list(sets.values())))},
        }
        for name, sets in per_set.items()
    }  # fmt: skip
    average = float(np.mean([task["score"]["mean"] for task in tasks.values()]))
    results = {"protocol": "kshot", "seed": 0, "score": "first", "tasks": tasks, "average": average,
               "split": "test", "dataset": dataset, "algo": algo, "backbone": "minilm"}  # fmt: skip
    (directory / "results.json").write_text(json.dumps(results))
    (directory / "config.yaml").write_text(yaml.safe_dump({"seed": 0, "algo": {"name": algo}}))
    return results


def test_k_shot_runs_are_compared_per_task_and_training_set(tmp_path):
    """A k-shot results.json is a run: its score the protocol's average, its paired units the (task,
    training set) pairs, so two methods on the same training sets get a paired difference."""
    frozen = {"sst2": {"13": 0.60, "21": 0.70, "42": 0.65}, "cr": {"13": 0.50, "21": 0.55, "42": 0.60}}
    tuned = {"sst2": {"13": 0.70, "21": 0.75, "42": 0.80}, "cr": {"13": 0.60, "21": 0.60, "42": 0.65}}
    make_kshot_run(tmp_path / "frozen", "protonet", frozen)
    make_kshot_run(tmp_path / "tuned", "finetune", tuned)
    runs = find_runs([tmp_path])
    assert len(runs) == 2 and runs[0].task == runs[1].task
    assert runs[0].task.name == "kshot lmbff/sst2 16-shot" and runs[0].task.episodes == 6
    by_algo = {run.algo_backbone: run for run in runs}
    # units sorted by task, then training set: cr 13, 21, 42, then sst2 13, 21, 42
    assert by_algo["finetune/minilm"].episode_accuracies == [0.60, 0.60, 0.65, 0.70, 0.75, 0.80]
    difference = paired_difference([by_algo["finetune/minilm"]], [by_algo["protonet/minilm"]])
    gains = np.array([0.10, 0.05, 0.05, 0.10, 0.05, 0.15])
    assert difference["mean"] == pytest.approx(gains.mean())
    assert difference["ci95"] == pytest.approx(stats.t.ppf(0.975, 5) * gains.std(ddof=1) / math.sqrt(6))
    report = write_report([tmp_path], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert report.best(runs[0].task) == "finetune/minilm" and "kshot lmbff/sst2 16-shot" in text
    assert "finetune/minilm better" in text
