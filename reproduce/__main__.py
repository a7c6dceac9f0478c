"""`make results`: run the published-setting presets through the metanlp CLI and write RESULTS.md
(and RESULTS.json, the same numbers for machines).

    python -m reproduce [--size cpu|full] [--output-root DIR] [--report-only] [NAME ...]

Every number comes from a run directory's results.json, written by the command shown next to it;
a run whose results.json exists is not run again (so an interrupted `make results` resumes), and a
run that is not on disk keeps the record the committed RESULTS.json holds for it (so a session on a
fresh machine can run some benchmarks without losing the rows of the others).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from metanlp_cli import stats
from metanlp_cli.checkpoint import RESUMABLE_KEYS
from metanlp_cli.compose import check_composition
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.stats import mean_confidence_interval
from reproduce import peers
from reproduce.plan import BENCHMARKS, METHODS, SIZES, Benchmark, Method, Published, Setting

ROOT = Path(__file__).resolve().parent.parent


def metanlp() -> list[str]:
    return [sys.executable, "-m", "metanlp_cli"]


def run_command(command: list[str], run_dir: Path) -> None:
    """Run one metanlp command into `run_dir` (its output in run_dir/log.txt) unless it has run."""
    if (run_dir / "results.json").is_file():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    shown = shlex.join(["python", *command[1:]] if command[2] == "reproduce.peers" else ["metanlp", *command[3:]])
    (run_dir / "command.txt").write_text(shown + "\n")
    if command[3] == "train" and (run_dir / "checkpoints" / "last.pt").is_file():  # interrupted: continue it
        kept = [word for word in command[4:] if word.startswith(RESUMABLE_KEYS) and not word.startswith("resume")]
        command = [*command[:4], f"resume={run_dir}", *kept]
    started = time.perf_counter()
    print(f"   $ {shown}", flush=True)
    with (run_dir / "log.txt").open("w") as log:
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ.copy())
    if finished.returncode != 0:
        tail = (run_dir / "log.txt").read_text().strip().splitlines()[-1:]
        raise RunFailed(f"error: {shlex.join(command[3:])} exited {finished.returncode}: {' '.join(tail)}")
    seconds = time.perf_counter() - started
    (run_dir / WALL_TIME).write_text(f"{seconds:.1f}\n")  # of this command alone (an interrupted one: the last part)
    print(f"     {seconds:.0f}s -> {run_dir}/results.json", flush=True)


WALL_TIME = "wall_seconds.txt"


class RunFailed(Exception):
    """One run of the plan failed: the others still run, and `make results` exits non-zero at the end."""


def wall_seconds(*run_dirs: Path) -> float | None:
    """The wall time of the commands that wrote these run directories (train, then eval), in seconds."""
    times = [run_dir / WALL_TIME for run_dir in dict.fromkeys(run_dirs)]
    return sum(float(path.read_text()) for path in times) if all(path.is_file() for path in times) else None


def peer_overrides(benchmark: Benchmark, setting: Setting, subset: tuple[str, ...] = ()) -> list[str]:
    """A peer's overrides: the preset, the setting's, then its evaluation's (on the planned training sets)."""
    evaluation = (*setting.evaluation.overrides, *subset) if setting.evaluation else ()
    return [f"experiment={benchmark.train_preset or benchmark.name}", *setting.overrides, *evaluation]


def peer_arguments(
    benchmark: Benchmark, setting: Setting, method: Method, size: str, run_dir: Path, subset: tuple[str, ...] = ()
) -> list[str]:
    """`python -m reproduce.peers`'s arguments for a peer method's run: on an episodic test, the first
    `peer_episodes` of the fixed test episodes where the benchmark sets them for this size and column."""
    episodes = benchmark.peer_episodes.get(size, {}).get(setting.fold_of or setting.name)
    return [
        *("--peer", str(method.peer), "--out", str(run_dir)),
        *(("--episodes", str(episodes)) if episodes else ()),
        *peer_overrides(benchmark, setting, subset),
    ]


def score_run(
    benchmark: Benchmark,
    setting: Setting,
    method: Method,
    size: str,
    output_root: Path,
    execute: bool,
    committed: dict[tuple[str, str, str], dict],
) -> dict | None:
    """Train (and evaluate) one method in one setting where `execute`; returns its score record: from
    the run directory, else the committed one (RESULTS.json), else None (it has not run)."""
    preset = benchmark.train_preset or benchmark.name
    run_dir = output_root / size / preset / method.key / (setting.train_name or setting.name)
    train_overrides = [
        f"experiment={preset}",
        *setting.overrides,
        *SIZES[size],
        *benchmark.size_overrides.get(size, ()),
        *method.overrides,
        f"hydra.run.dir={run_dir}",
        "trainer.progress=false",
    ]
    results_dir = run_dir
    subset = benchmark.subsets.get(size, {}).get(method.key, ())  # scored on part of the training sets
    kept = committed.get((benchmark.name, setting.name, method.key))
    # a committed row is not run again, except a baseline without its paired units (rows pair against it)
    execute = execute and (kept is None or (method.baseline and kept.get("paired_units") is None))
    if method.peer is not None:  # outside metanlp: on the evaluation's tasks and training sets, nothing trained
        # on a task protocol's training sets (the evaluation's); setfit also on an episodic test's first episodes
        if (setting.evaluation is None and method.peer != "setfit") or (
            method.peer == "setfit" and not peers.available()
        ):
            return kept
        run_dir = output_root / size / preset / method.key / setting.name  # a peer's run is per setting, not shared
        if execute:
            arguments = peer_arguments(benchmark, setting, method, size, run_dir, subset)
            run_command([sys.executable, "-m", "reproduce.peers", *arguments], run_dir)
        return record_of(benchmark, setting, method, run_dir, run_dir, kept, bool(subset))
    planned = {"train_command": shlex.join(["metanlp", "train", *train_overrides])}
    if execute:
        run_command([*metanlp(), "train", *train_overrides], run_dir)
    if setting.evaluation is not None:
        results_dir = run_dir / f"eval_{setting.evaluation.name}"
        eval_overrides = [
            f"checkpoint={run_dir}",
            *setting.evaluation.overrides,
            *subset,
            f"hydra.run.dir={results_dir}",
        ]
        planned["command"] = shlex.join(["metanlp", "eval", *eval_overrides, "trainer.progress=false"])
        if execute:
            run_command([*metanlp(), "eval", *eval_overrides, "trainer.progress=false"], results_dir)
    if kept is not None:  # used only where the run is not on disk: say whether today's plan would run it so
        kept = {name: value for name, value in kept.items() if name != "plan_changed"}
        changes = {name: plan_change(kept[name], command) for name, command in planned.items() if name in kept}
        if any(changes.values()):
            kept["plan_changed"] = {name: change for name, change in changes.items() if change}
    return record_of(benchmark, setting, method, run_dir, results_dir, kept, bool(subset))


def same_train_config(first: list[str], second: list[str]) -> bool:
    """Whether two `metanlp train` commands compose the same config (False where either does not compose)."""
    if first[:2] != ["metanlp", "train"] or second[:2] != ["metanlp", "train"]:
        return False
    try:
        configs = [OmegaConf.to_container(check_composition("train", words[2:])) for words in (first, second)]
    except MetaNLPError:  # a key the committed command used is gone: a change
        return False
    return configs[0] == configs[1]


# Words of a command that name where it writes (or reads its checkpoint), not what it runs.
PLACES = ("hydra.run.dir=", "checkpoint=")


def plan_change(committed: str, planned: str) -> dict | None:
    """The overrides that tell a committed row's command from today's plan command for the same row (None:
    the same run), the run directory's name aside. Train commands whose words differ but compose the same
    config (a default written out, e.g. `dataset.fold=1`) are the same run; an eval command's config depends
    on its checkpoint's, so there any other word counts as a change: the report shows both sides."""
    committed_words, planned_words = (
        [w for w in shlex.split(c) if not w.startswith(PLACES)] for c in (committed, planned)
    )
    if committed_words == planned_words or same_train_config(committed_words, planned_words):
        return None
    return {
        "committed_only": [word for word in committed_words if word not in planned_words],
        "plan_only": [word for word in planned_words if word not in committed_words],
    }


def record_of(
    benchmark: Benchmark,
    setting: Setting,
    method: Method,
    run_dir: Path,
    results_dir: Path,
    kept: dict | None,
    subset: bool = False,
) -> dict | None:
    """The score record of a run directory's results.json, or the committed one where it is not on disk.
    `subset`: the run scored part of each task's training sets (the benchmark's `subsets`), and its cell says
    how many."""
    if not (results_dir / "results.json").is_file():
        return kept
    results = json.loads((results_dir / "results.json").read_text())
    record = {
        "benchmark": benchmark.name,
        "setting": setting.name,
        "method": method.key,
        "run_dir": str(results_dir),
        "command": shown_command(results_dir),
        "train_command": shown_command(run_dir),
        "wall_seconds": wall_seconds(run_dir, results_dir) or results.get("wall_seconds"),  # a peer times itself
    }
    if "accuracy" in results:  # episodic: per-episode accuracies, paired across methods
        record["score"] = results["accuracy"]
        record["paired_units"] = results["episode_accuracies"]
        record["cells"] = {setting.name: stats.format_score(results["accuracy"])}
        if "of_episodes" in results:  # a peer on the first of the fixed test episodes: paired over those
            record["episode_prefix"] = results["episodes"]
            record["cells"][setting.name] += f" ({results['episodes']} of {results['of_episodes']} episodes)"
        elif method.episodes:  # a costly method of ours, likewise
            record["episode_prefix"] = results["episodes"]
            record["cells"][setting.name] += f" (the first {results['episodes']} episodes)"
        return record
    # task protocols (arsc, kshot, glue_lowres): each task's main score, paired across methods by task
    tasks = results["tasks"]
    record["tasks"] = {name: task["score"] for name, task in tasks.items()}
    record["task_scores"] = {name: {m: s["mean"] for m, s in task["scores"].items()} for name, task in tasks.items()}
    record["average"] = results["average"]
    record["training_sets"] = {  # each task's main score per training set (seed), paired across methods by seed
        name: {seed: scores[task["score_metric"]] for seed, scores in task["training_sets"].items()}
        for name, task in tasks.items()
        if "training_sets" in task
    }
    record["paired_units"] = [tasks[name]["score"]["mean"] for name in sorted(tasks)]
    record["score"] = mean_confidence_interval(record["paired_units"])
    if not benchmark.task_columns:  # one column per setting: the mean over its tasks
        only = next(iter(tasks.values())) if len(tasks) == 1 else None
        record["cells"] = {setting.name: task_cell(only) if only else stats.format_score(record["score"])}
    else:  # a GLUE-style table: a column per task, then the average
        record["cells"] = {name: task_cell(task) for name, task in tasks.items()}
        average = f"{100 * results['average']:.2f}"
        # a peer that left tasks out (the setfit package: regression, sentence pairs) averages the others only
        left_out = results.get("left_out", results.get("notes"))  # older peer runs: every note was a task left out
        record["cells"]["average"] = f"{average} ({', '.join(tasks)} only)" if left_out else average
        if results.get("left_out"):  # by design, not "not run"
            record["left_out"] = results["left_out"]
            record["cells"] |= {name: "left out" for name in results["left_out"]}
    if subset and record["training_sets"]:
        counts = sorted({len(sets) for sets in record["training_sets"].values()})
        column = "average" if "average" in record["cells"] else setting.name
        record["cells"][column] += f" ({'-'.join(map(str, counts))} training sets per task)"
    return record


def shown_command(run_dir: Path) -> str:
    """The command that wrote a run directory, with paths relative to the repository (where it runs)."""
    return (run_dir / "command.txt").read_text().strip().replace(f"{ROOT}/", "")


def task_cell(task: dict) -> str:
    """A task's metrics as the papers print them: mean (std over training sets) of each, `/`-joined."""
    scores = [task["scores"][metric] for metric in task["metrics"]]
    means = "/".join(f"{100 * score['mean']:.1f}" for score in scores)
    if scores[0].get("count", 1) < 2:
        return means
    stds = "/".join(f"{100 * score['std']:.1f}" for score in scores)
    return f"{means} ({stds})"


def published_counterpart(record: dict, column: str, metric: str = "") -> float | None:
    """Our number for a published one's column (a setting, or a task of a task table), in percent: the
    published number's metric where a task has several (MRPC's F1, not GLUE's F1/accuracy mean)."""
    if column in record.get("tasks", {}):
        scores = record.get("task_scores", {}).get(column, {})  # a record committed before it kept the main score
        return 100 * (scores[metric] if metric in scores else record["tasks"][column]["mean"])
    if column == "average" and "average" in record:
        return 100 * record["average"]
    if column == record["setting"]:
        return 100 * record["score"]["mean"]
    return None


def paired_difference(record: dict, baseline: dict) -> dict | None:
    """The paired difference over the units both were scored on (test episodes, seeds or tasks; for a
    mean over folds, the episodes of the folds both have); a record committed before RESULTS.json kept
    its units has the difference to the baseline it had then."""
    prefix = "episode_prefix" in record or "episode_prefix" in baseline  # a peer scored the first episodes only

    def paired(a: list[float], b: list[float]) -> tuple[list[float], list[float]]:
        return (a[: len(b)], b[: len(a)]) if prefix else (a, b)  # episode i is the same on both sides

    if "fold_units" in record and "fold_units" in baseline:
        shared = sorted(record["fold_units"].keys() & baseline["fold_units"].keys())
        if shared:
            folds = [paired(record["fold_units"][fold], baseline["fold_units"][fold]) for fold in shared]
            return stats.paired_difference(*([unit for fold in folds for unit in fold[side]] for side in (0, 1)))
    if record.get("training_sets") and baseline.get("training_sets"):  # task protocols: the same training sets
        shared = sorted(
            (task, name)
            for task in record["training_sets"].keys() & baseline["training_sets"].keys()  # a peer may leave some out
            for name in record["training_sets"][task].keys() & baseline["training_sets"][task].keys()
        )
        units = [[side["training_sets"][task][name] for task, name in shared] for side in (record, baseline)]
        return stats.paired_difference(*units) if shared else None
    if record.get("paired_units") is not None and baseline.get("paired_units") is not None:
        return stats.paired_difference(*paired(record["paired_units"], baseline["paired_units"]))
    return record.get("differences", {}).get(baseline["method"])


def verdict(difference: dict) -> str:
    if difference["mean"] - difference["ci95"] > 0:
        return "beats"
    return "is below" if difference["mean"] + difference["ci95"] < 0 else "is not distinguishable from"


def per_task_differences(record: dict, baseline: dict) -> dict[str, str]:
    """Per task (language, target): the paired difference over its training sets (seeds)."""
    cells = {}
    for task, scores in record.get("training_sets", {}).items():
        other = baseline.get("training_sets", {}).get(task)
        if not other or sorted(other) != sorted(scores):
            continue
        seeds = sorted(scores)
        difference = stats.paired_difference([scores[s] for s in seeds], [other[s] for s in seeds])
        cells[task] = (
            stats.format_score(difference, signed=True) if len(seeds) > 1 else f"{100 * difference['mean']:+.1f}"
        )
    if cells and "average" in record and "average" in baseline and same_tasks(record, baseline):
        cells["average"] = f"{100 * (record['average'] - baseline['average']):+.2f}"
    return cells


def same_tasks(record: dict, other: dict) -> bool:
    """Whether two task-table records cover the same tasks (so their averages are comparable)."""
    return record.get("tasks", {}).keys() == other.get("tasks", {}).keys()


def average(record: dict) -> float:
    """A task table's average over its tasks (the column; older records hold it as text only)."""
    return record["average"] if "average" in record else float(record["cells"]["average"]) / 100


def wall_cell(records: list[dict]) -> str:
    times = [r.get("wall_seconds") for r in records]
    return " / ".join("" if t is None else f"{t:.0f}" for t in times) if any(t is not None for t in times) else ""


def columns_of(benchmark: Benchmark) -> list[str]:
    """The table's settings: each setting, or for settings that are folds, the column they are folds of."""
    return list(dict.fromkeys(s.fold_of or s.name for s in benchmark.settings))


def fold_means(benchmark: Benchmark, records: list[dict]) -> list[dict]:
    """For settings that are folds of one column: per method, a record of the mean over the folds that
    have run (Student-t CI over the folds), the folds' test episodes kept for pairing."""
    folds = {s.name: s.fold_of for s in benchmark.settings if s.fold_of}
    total = {column: sum(1 for fold_of in folds.values() if fold_of == column) for column in set(folds.values())}
    groups: dict[tuple[str, str], dict[str, dict]] = {}
    for record in records:
        if record["setting"] in folds:
            groups.setdefault((record["method"], folds[record["setting"]]), {})[record["setting"]] = record
    merged = []
    for (method, column), by_fold in groups.items():
        means = [r["score"]["mean"] for r in by_fold.values()]
        score = stats.seed_confidence_interval(means) if len(means) > 1 else next(iter(by_fold.values()))["score"]
        if len(by_fold) == total[column]:
            cell = f"{stats.format_score(score)} ({len(by_fold)} folds)"
        else:
            ran = ", ".join(name.rsplit(" ", 1)[-1] for name in sorted(by_fold))
            cell = f"{stats.format_score(score)} (fold{'s' * (len(by_fold) > 1)} {ran} of {total[column]})"
        prefix = [r["episode_prefix"] for r in by_fold.values() if "episode_prefix" in r]
        if prefix:  # a peer on the first of each fold's test episodes
            cell += f", the first {min(prefix)} episodes of each"
        only = next(iter(by_fold.values())) if len(by_fold) == 1 else {}
        times = [r.get("wall_seconds") for r in by_fold.values()]
        merged.append(
            {
                "benchmark": benchmark.name,
                "setting": column,
                "method": method,
                "score": score,
                "cells": {column: cell},
                "fold_units": {f: r["paired_units"] for f, r in by_fold.items() if r.get("paired_units") is not None},
                **({"differences": only["differences"]} if "differences" in only else {}),
                "wall_seconds": sum(times) if None not in times else None,
                "folds": sorted(by_fold),
                **({"plan_changed": "in a fold"} if any("plan_changed" in r for r in by_fold.values()) else {}),
                **({"episode_prefix": True} if any("episode_prefix" in r for r in by_fold.values()) else {}),
            }
        )
    return merged


def per_task_tables(benchmark: Benchmark, by_key: dict, settings: list[str]) -> list[str]:
    """Where a column is the mean over several tasks (ARSC's 12 targets): each task's score per method."""
    lines = []
    for setting in settings:
        records = {key: r for key in benchmark.methods if (r := by_key.get((key, setting))) and "tasks" in r}
        tasks = sorted({task for r in records.values() for task in r["tasks"]})
        if len(tasks) < 2:
            continue
        lines += [
            "",
            f"<details><summary>{setting}: each task</summary>",
            "",
            "| method | " + " | ".join(tasks) + " |",
            "|---|" + "---|" * len(tasks),
        ]
        for key, record in records.items():
            row = [f"{100 * record['tasks'][t]['mean']:.1f}" if t in record["tasks"] else "" for t in tasks]
            lines.append(f"| {key} | " + " | ".join(row) + " |")
        lines += ["", "</details>"]
    return lines


CHANGED = " (†)"  # marks a row whose committed command differs from today's plan


def describe(benchmark: Benchmark, key: str) -> str:
    return METHODS[key].description.format(encoder=benchmark.encoder, pooling=benchmark.pooling)


def references(benchmark: Benchmark) -> list[str]:
    """What each method is paired against: the frozen baseline, then the peers the table has (the setfit
    package, the majority-label constant)."""
    baseline = next(key for key in benchmark.methods if METHODS[key].baseline)
    return [baseline, *(key for key in ("setfit_package", "majority") if key in benchmark.methods)]


def ours(benchmark: Benchmark) -> list[str]:
    """metanlp's rows (the peers are not ours)."""
    return [key for key in benchmark.methods if METHODS[key].peer is None]


def headline(benchmark: Benchmark, by_key: dict, settings: list[str]) -> list[str]:
    """The table's first line: which method wins each setting, and whether it beats the references and
    the best published number."""
    parts = []
    for setting in settings:
        scored = [(r["score"]["mean"], key) for key in ours(benchmark) if (r := by_key.get((key, setting)))]
        if not scored:
            continue
        best_score, best = max(scored)
        claims = []
        for reference in references(benchmark):
            if reference == best or (reference, setting) not in by_key:
                continue
            difference = paired_difference(by_key[(best, setting)], by_key[(reference, setting)])
            if difference is not None:
                claims.append(f"{verdict(difference)} {reference} ({stats.format_score(difference, signed=True)})")
        published = [p.value for p in benchmark.published if p.setting == setting]
        if published:
            value = published_counterpart(by_key[(best, setting)], setting)
            claims.append(f"{'above' if value > max(published) else 'below'} the best published {max(published):.2f}")
        parts.append(f"{setting}: **{best}** ({100 * best_score:.2f})" + (f", {'; '.join(claims)}" if claims else ""))
    return [f"Best metanlp method: {'. '.join(parts)}.", ""] if parts else []


def goals(benchmark: Benchmark, by_key: dict, settings: list[str]) -> list[str]:
    """The line under the headline: per setting, whether the issue's two goals hold. (a) a metanlp row above
    the best published number (per task where a task table's numbers are per task); (b) a metanlp row above both
    no-meta alternatives, the frozen encoder and the setfit package (and the majority constant where planned), by
    paired differences whose 95% CIs exclude zero (against frozen only where no setfit row is planned: it says so)."""
    parts = []
    for setting in settings:
        rows = {key: r for key in ours(benchmark) if (r := by_key.get((key, setting)))}
        if rows:
            parts.append(f"{setting}: (a) {goal_a(benchmark, rows, setting)}; (b) {goal_b(benchmark, by_key, setting)}")
    return [f"Goals: {'. '.join(parts)}.", ""] if parts else []


def goal_a(benchmark: Benchmark, rows: dict, setting: str) -> str:
    best_published: dict[str, Published] = {}
    for published in benchmark.published:
        if published.value > getattr(best_published.get(published.setting), "value", float("-inf")):
            best_published[published.setting] = published
    columns = (
        [setting]
        if setting in best_published
        else [c for c in best_published if any(c in r.get("tasks", {}) for r in rows.values())]
    )
    if not columns:
        return "no published number"
    outcomes = []
    for column in columns:
        published = best_published[column]
        scored = [
            (value, key)
            for key, r in rows.items()
            if (value := published_counterpart(r, column, published.metric)) is not None
        ]
        ours_best, key = max(scored)
        gap = ours_best - published.value
        where = f"{column} " if column != setting else ""
        numbers = f"({key} {ours_best:.2f}, {gap:+.2f} against {published.value:.2f})"
        outcomes.append((gap > 0, f"{where}{'met' if gap > 0 else 'not met'} {numbers}"))
    if len(outcomes) == 1:
        return outcomes[0][1]
    met = sum(holds for holds, _ in outcomes)
    return f"met on {met} of {len(outcomes)} published tasks: " + ", ".join(text for _, text in outcomes)


def goal_b(benchmark: Benchmark, by_key: dict, setting: str) -> str:
    baseline = references(benchmark)[0]
    # where the majority-label constant is planned (ARSC's unbalanced test sets), a method only counts above it too
    alternatives = [baseline, *(key for key in ("setfit_package", "majority") if key in benchmark.methods)]

    def beats(key: str, reference: str) -> bool:
        if (reference, setting) not in by_key:
            return False
        difference = paired_difference(by_key[(key, setting)], by_key[(reference, setting)])
        return difference is not None and difference["mean"] - difference["ci95"] > 0

    candidates = [key for key in ours(benchmark) if key != baseline and (key, setting) in by_key]
    winners = [key for key in candidates if all(beats(key, reference) for reference in alternatives)]
    if "setfit_package" not in benchmark.methods:
        return f"against frozen only, no setfit row planned: {'met by ' + ', '.join(winners) if winners else 'not met'}"
    if winners:
        return "met by " + ", ".join(winners)
    if ("setfit_package", setting) not in by_key:
        above_frozen = [key for key in candidates if beats(key, baseline)]
        return "not shown, the setfit package has not run" + (
            f" ({', '.join(above_frozen)} beats frozen)" if above_frozen else ""
        )
    return "not met"


def benchmark_section(benchmark: Benchmark, records: list[dict]) -> list[str]:
    by_key = {(r["method"], r["setting"]): r for r in [*records, *fold_means(benchmark, records)]}
    settings = columns_of(benchmark)
    task_table = any("average" in r["cells"] for r in records)  # GLUE-style: a column per task
    columns = list(dict.fromkeys(column for r in records for column in r["cells"])) if task_table else settings
    cells = {(r["method"], column): value for r in by_key.values() for column, value in r["cells"].items()}
    reference_keys = references(benchmark)
    lines = [
        f"## {benchmark.title}",
        "",
        f"`metanlp train experiment={benchmark.name}`: {benchmark.protocol}. Mean +/- 95% CI over the fixed "
        "test episodes (or, for task protocols, over the tasks); mean (std) over the training sets (seeds) of a task.",
        "",
        *headline(benchmark, by_key, settings),
        *goals(benchmark, by_key, settings),
        "| method | " + " | ".join(columns) + " | wall time (s) |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for published in {p.method: p for p in benchmark.published}.values():
        values = {p.setting: f"{p.value:.2f}" for p in benchmark.published if p.method == published.method}
        if "average" in columns and all(column in values for column in columns if column != "average"):
            numbers = [p.value for p in benchmark.published if p.method == published.method]
            values["average"] = f"{sum(numbers) / len(numbers):.2f}"
        row = [values.get(column, "") for column in columns]
        lines.append(f"| {published.method} (published) | " + " | ".join(row) + " | |")
    for key in benchmark.methods:
        if task_table and len(settings) > 1:  # a row per setting (K), the tasks as columns
            for setting in settings:
                record = by_key.get((key, setting), {"cells": {}})
                row = [record["cells"].get(column, "not run") for column in columns]
                changed = CHANGED if "plan_changed" in record else ""
                lines.append(
                    f"| metanlp: {describe(benchmark, key)}, {setting}{changed} | "
                    + " | ".join(row)
                    + f" | {wall_cell([record])} |"
                )
            continue
        row = [cells.get((key, column), "not run") for column in columns]
        wall = wall_cell([by_key.get((key, setting), {}) for setting in settings])
        changed = any("plan_changed" in by_key.get((key, setting), {}) for setting in settings)
        lines.append(
            f"| metanlp: {describe(benchmark, key)}{CHANGED if changed else ''} | " + " | ".join(row) + f" | {wall} |"
        )
    if task_table:  # per task: the best method's paired difference from the baseline over the training sets
        for setting in settings:
            baseline = by_key.get((reference_keys[0], setting))
            if baseline is None:
                continue
            scored = [  # metanlp's rows over the baseline's tasks (a peer may leave some out: its average is another)
                (average(r), key)
                for key in ours(benchmark)
                if (r := by_key.get((key, setting))) and same_tasks(r, baseline)
            ]
            if not scored:
                continue
            best = max(scored)[1]
            differences = per_task_differences(by_key[(best, setting)], baseline) if best != reference_keys[0] else {}
            if differences:
                suffix = f", {setting}" if len(settings) > 1 else ""
                row = [differences.get(column, "") for column in columns]
                lines.append(
                    f"| difference: {best} - {reference_keys[0]}{suffix} (paired over the training sets) | "
                    + " | ".join(row)
                    + " | |"
                )
    if not task_table:
        lines += per_task_tables(benchmark, by_key, settings)
    lines += [
        "",
        "Each method against "
        + " and ".join(reference_keys)
        + " (paired: the same test episodes, or the same training sets of the same tasks; Student-t 95% CI):",
        "",
    ]
    for reference in reference_keys:
        for key in benchmark.methods:
            if key == reference or (reference != reference_keys[0] and key in reference_keys):
                continue  # a peer against the baseline, yes; the peers against each other, no
            for setting in settings:
                if (key, setting) not in by_key or (reference, setting) not in by_key:
                    continue
                difference = paired_difference(by_key[(key, setting)], by_key[(reference, setting)])
                if difference is None:
                    continue
                shown = stats.format_score(difference, signed=True)
                lines.append(
                    f"- {setting}, {key} - {reference}: {shown} points: {key} {verdict(difference)} {reference}"
                )
    if benchmark.published:
        lines += ["", "Against the published numbers:", ""]
    for published in benchmark.published:
        mine = [
            (r["method"], value)
            for r in records
            if METHODS[r["method"]].peer is None
            and (value := published_counterpart(r, published.setting, published.metric)) is not None
        ]
        if not mine:
            lines.append(f"- {published.setting}, {published.method} {published.value:.2f}: not run")
            continue
        best_method, value = max(mine, key=lambda item: item[1])
        comparison = "higher" if value > published.value else "lower"
        lines.append(
            f"- {published.setting}: ours {value:.2f} ({best_method}) vs {published.method} {published.value:.2f}: "
            f"ours is {comparison} by {abs(value - published.value):.2f}. Source: {published.source}. "
            f"Setting: {published.comparison}."
        )
    notes = list(benchmark.notes)
    if "setfit_package" in benchmark.methods and not peers.available():
        notes.append(f"setfit_package: not run here, {peers.MISSING}.")
    if any("plan_changed" in record for record in records):
        notes.append(
            f"{CHANGED.strip()} A row committed by an earlier command of the plan: today's command for it differs "
            "(the overrides are listed under the commands). `python -m reproduce NAME --methods KEY --rerun` "
            "runs it again."
        )
    for note in notes:
        lines += ["", note]
    lines += ["", "<details><summary>commands and run directories</summary>", ""]
    for record in records:
        if record["train_command"] != record["command"]:
            lines.append(f"- {record['method']}, {record['setting']}, trained by: `{record['train_command']}`")
        lines.append(f"- {record['method']}, {record['setting']}: `{record['command']}` -> `{record['run_dir']}`")
        for name, change in record.get("plan_changed", {}).items():
            words = [f"{side.replace('_', ' ')}: `{' '.join(change[side])}`" for side in change if change[side]]
            lines.append(f"  - {CHANGED.strip()} today's {name.replace('_', ' ')} differs; " + "; ".join(words))
    lines += ["", "</details>", ""]
    return lines


def rounded(value):
    """`value` with its floats to 6 decimals (a score in percent to 1e-4 points): RESULTS.json keeps every
    episode's accuracy for pairing, and the full float repr would double its size (over 2 MB)."""
    if isinstance(value, float):
        return round(value, 6)
    if isinstance(value, list):
        return [rounded(item) for item in value]
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    return value


def committed_records(size: str) -> dict[tuple[str, str, str], dict]:
    """The records of the committed RESULTS.json (for runs whose directories are not on this machine)."""
    path = ROOT / "RESULTS.json"
    if not path.is_file():
        return {}
    committed = json.loads(path.read_text())
    if committed.get("size") != size:
        return {}
    return {(r["benchmark"], r["setting"], r["method"]): r for r in committed["runs"]}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--output-root", default="outputs/results", type=Path)
    parser.add_argument("--report-only", action="store_true", help="write RESULTS.md from the runs on disk, run none")
    parser.add_argument(
        "--methods",
        default=None,
        help="comma-separated method keys: run only these (the other rows come from disk or RESULTS.json)",
    )
    parser.add_argument(
        "--settings",
        default=None,
        help="comma-separated settings (columns, e.g. 'K=4'): run only these (the others: from disk or RESULTS.json)",
    )
    parser.add_argument(
        "--rerun", action="store_true", help="run the named benchmarks' rows even where RESULTS.json holds them"
    )
    args = parser.parse_args()
    known = [b.name for b in BENCHMARKS]
    unknown = [name for name in args.names if name not in known]
    if unknown:
        raise SystemExit(f"error: unknown benchmark {unknown[0]!r}; allowed: {', '.join(known)}")
    methods = args.methods.split(",") if args.methods else None
    if methods and (unknown := [key for key in methods if key not in METHODS]):
        raise SystemExit(f"error: unknown method {unknown[0]!r}; allowed: {', '.join(METHODS)}")
    settings = args.settings.split(",") if args.settings else None
    known_settings = {setting.name for benchmark in BENCHMARKS for setting in benchmark.settings}
    if settings and (unknown := [name for name in settings if name not in known_settings]):
        raise SystemExit(f"error: unknown setting {unknown[0]!r}; allowed: {', '.join(sorted(known_settings))}")
    if not os.environ.get("METANLP_DATA_ROOT"):
        raise SystemExit("error: METANLP_DATA_ROOT is not set; point it at the benchmark data folder")

    os.chdir(ROOT)  # run directories are shown (and passed to metanlp) relative to the repository
    output_root = args.output_root
    records, sections = [], {}
    committed = committed_records(args.size)
    failures = []
    started = time.perf_counter()
    order = {name: index for index, name in enumerate(args.names)}  # named ones run in the order given
    for benchmark in sorted(BENCHMARKS, key=lambda b: order.get(b.name, len(order))):
        # the report covers every benchmark; those not named come from disk
        execute = not args.report_only and (not args.names or benchmark.name in args.names)
        if execute:
            print(f"== {benchmark.name}", flush=True)
        benchmark_records = []
        for key in benchmark.methods:
            for setting in benchmark.settings:
                try:
                    run_it = (
                        execute and (methods is None or key in methods) and (not settings or setting.name in settings)
                    )
                    kept = {} if args.rerun and run_it else committed  # --rerun: what RESULTS.json holds is redone
                    benchmark_records.append(
                        score_run(benchmark, setting, METHODS[key], args.size, output_root, run_it, kept)
                    )
                except RunFailed as failure:
                    print(failure, flush=True)
                    failures.append(str(failure))
        benchmark_records = [record for record in benchmark_records if record is not None]
        records += benchmark_records
        sections[benchmark.name] = benchmark_section(benchmark, benchmark_records)
    header = [
        "# Results",
        "",
        f"Generated by `make results SIZE={args.size}` (`python -m reproduce --size {args.size}`) on "
        f"{time.strftime('%Y-%m-%d')} (this invocation ran {time.perf_counter() - started:.0f}s; runs already on "
        "disk are not run again). "
        f"Size `{args.size}`: {' '.join(SIZES[args.size])}. Every number below is read from the `results.json` "
        "of the run directory named under it, produced by the command shown there (rows run on another machine "
        "are kept from the committed RESULTS.json, with their commands). The wall time is the train command's "
        "plus, where the score comes from `metanlp eval`, the eval's, on the machine that ran it.",
        "",
    ]
    lines = [line for benchmark in BENCHMARKS for line in sections[benchmark.name]]  # the plan's order
    (ROOT / "RESULTS.md").write_text("\n".join(header + lines) + "\n")
    plan_order = {benchmark.name: index for index, benchmark in enumerate(BENCHMARKS)}
    records.sort(key=lambda record: plan_order[record["benchmark"]])  # the plan's order: a rerun's diff stays small
    (ROOT / "RESULTS.json").write_text(json.dumps(rounded({"size": args.size, "runs": records}), indent=1) + "\n")
    print(f"wrote {ROOT / 'RESULTS.md'}")
    if failures:
        raise SystemExit(f"{len(failures)} run(s) failed (their rows say not run): " + " | ".join(failures))


if __name__ == "__main__":
    main()
