"""`make results`: run the published-setting presets through the metanlp CLI and write RESULTS.md
(and RESULTS.json, the same numbers for machines).

    python -m reproduce [--size cpu|full] [--output-root DIR] [--report-only] [NAME ...]

Every number comes from a run directory's results.json, written by the command shown next to it;
a run whose results.json exists is not run again (so an interrupted `make results` resumes).
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

from metanlp_cli import stats
from metanlp_cli.stats import mean_confidence_interval
from reproduce.plan import BENCHMARKS, METHODS, SIZES, Benchmark, Method, Setting

ROOT = Path(__file__).resolve().parent.parent


def metanlp() -> list[str]:
    return [sys.executable, "-m", "metanlp_cli"]


def run_command(command: list[str], run_dir: Path) -> None:
    """Run one metanlp command into `run_dir` (its output in run_dir/log.txt) unless it has run."""
    if (run_dir / "results.json").is_file():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "command.txt").write_text(shlex.join(["metanlp", *command[3:]]) + "\n")
    started = time.perf_counter()
    print(f"   $ {shlex.join(['metanlp', *command[3:]])}", flush=True)
    with (run_dir / "log.txt").open("w") as log:
        finished = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ.copy())
    if finished.returncode != 0:
        tail = (run_dir / "log.txt").read_text().strip().splitlines()[-1:]
        raise SystemExit(f"error: {shlex.join(command[3:])} exited {finished.returncode}: {' '.join(tail)}")
    print(f"     {time.perf_counter() - started:.0f}s -> {run_dir}/results.json", flush=True)


def score_run(
    benchmark: Benchmark, setting: Setting, method: Method, size: str, output_root: Path, execute: bool
) -> dict | None:
    """Train (and evaluate) one method in one setting where `execute`; returns its score record, or
    None where it has not run."""
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
    if execute:
        run_command([*metanlp(), "train", *train_overrides], run_dir)
    if setting.evaluation is not None:
        results_dir = run_dir / f"eval_{setting.evaluation.name}"
        eval_overrides = [f"checkpoint={run_dir}", *setting.evaluation.overrides, f"hydra.run.dir={results_dir}"]
        if execute:
            run_command([*metanlp(), "eval", *eval_overrides, "trainer.progress=false"], results_dir)
    if not (results_dir / "results.json").is_file():
        return None
    results = json.loads((results_dir / "results.json").read_text())
    record = {
        "benchmark": benchmark.name,
        "setting": setting.name,
        "method": method.key,
        "run_dir": str(results_dir),
        "command": shown_command(results_dir),
        "train_command": shown_command(run_dir),
    }
    if "accuracy" in results:  # episodic: per-episode accuracies, paired across methods
        record["score"] = results["accuracy"]
        record["paired_units"] = results["episode_accuracies"]
        record["cells"] = {setting.name: stats.format_score(results["accuracy"])}
    else:  # task protocols (arsc, kshot, glue_lowres): each task's main score, paired across methods by task
        tasks = results["tasks"]
        record["tasks"] = {name: task["score"] for name, task in tasks.items()}
        record["paired_units"] = [tasks[name]["score"]["mean"] for name in sorted(tasks)]
        record["score"] = mean_confidence_interval(record["paired_units"])
        if benchmark.name == "arsc":  # one column: the mean over the 12 targets
            record["cells"] = {setting.name: stats.format_score(record["score"])}
        else:  # a GLUE-style table: a column per task, then the average
            record["cells"] = {name: task_cell(task) for name, task in tasks.items()}
            record["cells"]["average"] = f"{100 * results['average']:.2f}"
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


def published_counterpart(record: dict, column: str) -> float | None:
    """Our number for a published one's column (a setting, or a task of a task table), in percent."""
    if column in record.get("tasks", {}):
        return 100 * record["tasks"][column]["mean"]
    if column == record["setting"]:
        return 100 * record["score"]["mean"]
    return None


def paired_difference(record: dict, baseline: dict) -> dict:
    """The paired difference over the units both were scored on (test episodes, seeds or tasks)."""
    return stats.paired_difference(record["paired_units"], baseline["paired_units"])


def benchmark_section(benchmark: Benchmark, records: list[dict]) -> list[str]:
    by_key = {(r["method"], r["setting"]): r for r in records}
    settings = [s.name for s in benchmark.settings]
    task_table = any("average" in r["cells"] for r in records)  # GLUE-style: a column per task
    columns = list(dict.fromkeys(column for r in records for column in r["cells"])) if task_table else settings
    cells = {(r["method"], column): value for r in records for column, value in r["cells"].items()}
    baseline_key = next(key for key in benchmark.methods if METHODS[key].baseline)
    lines = [
        f"## {benchmark.title}",
        "",
        f"`metanlp train experiment={benchmark.name}`: {benchmark.protocol}. Mean +/- 95% CI over the fixed "
        "test episodes (or, for task protocols, over the tasks).",
        "",
        "| method | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for published in {p.method: p for p in benchmark.published}.values():
        values = {p.setting: f"{p.value:.2f}" for p in benchmark.published if p.method == published.method}
        if "average" in columns and all(column in values for column in columns if column != "average"):
            numbers = [p.value for p in benchmark.published if p.method == published.method]
            values["average"] = f"{sum(numbers) / len(numbers):.2f}"
        row = [values.get(column, "") for column in columns]
        lines.append(f"| {published.method} (published) | " + " | ".join(row) + " |")
    for key in benchmark.methods:
        if task_table and len(settings) > 1:  # a row per setting (K), the tasks as columns
            for setting in settings:
                record = by_key.get((key, setting), {"cells": {}})
                row = [record["cells"].get(column, "not run") for column in columns]
                lines.append(f"| metanlp: {METHODS[key].description}, {setting} | " + " | ".join(row) + " |")
            continue
        row = [cells.get((key, column), "not run") for column in columns]
        lines.append(f"| metanlp: {METHODS[key].description} | " + " | ".join(row) + " |")
    lines += ["", "Each method against the frozen baseline (paired: the same test episodes, or tasks):", ""]
    for key in benchmark.methods:
        if key == baseline_key:
            continue
        for setting in settings:
            if (key, setting) not in by_key or (baseline_key, setting) not in by_key:
                continue
            difference = paired_difference(by_key[(key, setting)], by_key[(baseline_key, setting)])
            verdict = (
                "beats"
                if difference["mean"] - difference["ci95"] > 0
                else ("is below" if difference["mean"] + difference["ci95"] < 0 else "is not distinguishable from")
            )
            shown = stats.format_score(difference, signed=True)
            lines.append(f"- {setting}, {key} - {baseline_key}: {shown} points: {key} {verdict} the baseline")
    if benchmark.published:
        lines += ["", "Against the published numbers:", ""]
    for published in benchmark.published:
        ours = [(r["method"], value) for r in records if (value := published_counterpart(r, published.setting))]
        if not ours:
            lines.append(f"- {published.setting}, {published.method} {published.value:.2f}: not run")
            continue
        best_method, value = max(ours, key=lambda item: item[1])
        verdict = "higher" if value > published.value else "lower"
        lines.append(
            f"- {published.setting}: ours {value:.2f} ({best_method}) vs {published.method} {published.value:.2f}: "
            f"ours is {verdict} by {abs(value - published.value):.2f}. Source: {published.source}. "
            f"Setting: {published.comparison}."
        )
    for note in benchmark.notes:
        lines += ["", note]
    lines += ["", "<details><summary>commands and run directories</summary>", ""]
    for record in records:
        if record["train_command"] != record["command"]:
            lines.append(f"- {record['method']}, {record['setting']}, trained by: `{record['train_command']}`")
        lines.append(f"- {record['method']}, {record['setting']}: `{record['command']}` -> `{record['run_dir']}`")
    lines += ["", "</details>", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--output-root", default="outputs/results", type=Path)
    parser.add_argument("--report-only", action="store_true", help="write RESULTS.md from the runs on disk, run none")
    args = parser.parse_args()
    known = [b.name for b in BENCHMARKS]
    unknown = [name for name in args.names if name not in known]
    if unknown:
        raise SystemExit(f"error: unknown benchmark {unknown[0]!r}; allowed: {', '.join(known)}")
    if not os.environ.get("METANLP_DATA_ROOT"):
        raise SystemExit("error: METANLP_DATA_ROOT is not set; point it at the benchmark data folder")

    os.chdir(ROOT)  # run directories are shown (and passed to metanlp) relative to the repository
    output_root = args.output_root
    records, sections = [], {}
    started = time.perf_counter()
    order = {name: index for index, name in enumerate(args.names)}  # named ones run in the order given
    for benchmark in sorted(BENCHMARKS, key=lambda b: order.get(b.name, len(order))):
        # the report covers every benchmark; those not named come from disk
        execute = not args.report_only and (not args.names or benchmark.name in args.names)
        if execute:
            print(f"== {benchmark.name}", flush=True)
        benchmark_records = [
            score_run(benchmark, setting, METHODS[key], args.size, output_root, execute)
            for key in benchmark.methods
            for setting in benchmark.settings
        ]
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
        "of the run directory named under it, produced by the command shown there.",
        "",
    ]
    lines = [line for benchmark in BENCHMARKS for line in sections[benchmark.name]]  # the plan's order
    (ROOT / "RESULTS.md").write_text("\n".join(header + lines) + "\n")
    for record in records:
        record.pop("paired_units")
    (ROOT / "RESULTS.json").write_text(json.dumps({"size": args.size, "runs": records}, indent=1) + "\n")
    print(f"wrote {ROOT / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
