"""`make results`: run the published-setting presets through the metanlp CLI and write RESULTS.md
(and RESULTS.json, the same numbers for machines).

    python -m reproduce [--size cpu|full] [--output-root DIR] [NAME ...]

Every number comes from a run directory's results.json, written by the command shown next to it;
a run whose results.json exists is not run again (so an interrupted `make results` resumes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from metanlp_cli.metrics import mean_confidence_interval
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
    run_dir = output_root / size / benchmark.name / method.key / setting.name
    train_overrides = [
        f"experiment={benchmark.name}",
        *setting.overrides,
        *SIZES[size],
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
        "run_dir": str(results_dir.relative_to(ROOT)) if results_dir.is_relative_to(ROOT) else str(results_dir),
        "command": (results_dir / "command.txt").read_text().strip(),
    }
    if "accuracy" in results:  # episodic: per-episode accuracies, paired across methods
        record["score"] = results["accuracy"]
        record["paired_units"] = results["episode_accuracies"]
    else:  # task protocols (arsc, kshot): each task's main score, paired across methods by task
        tasks = results["tasks"]
        record["tasks"] = {name: task["score"] for name, task in tasks.items()}
        record["paired_units"] = [tasks[name]["score"]["mean"] for name in sorted(tasks)]
        record["score"] = mean_confidence_interval(record["paired_units"])
    return record


def paired_difference(record: dict, baseline: dict) -> dict:
    differences = [a - b for a, b in zip(record["paired_units"], baseline["paired_units"], strict=True)]
    return mean_confidence_interval(differences)


def percent(score: dict) -> str:
    ci = score.get("ci95", 0.0)
    return f"{100 * score['mean']:.2f} +/- {100 * ci:.2f}" if math.isfinite(ci) else f"{100 * score['mean']:.2f}"


def signed(score: dict) -> str:
    return f"{100 * score['mean']:+.2f} +/- {100 * score['ci95']:.2f}"


def benchmark_section(benchmark: Benchmark, records: list[dict]) -> list[str]:
    by_key = {(r["method"], r["setting"]): r for r in records}
    settings = [s.name for s in benchmark.settings]
    baseline_key = next(key for key in benchmark.methods if METHODS[key].baseline)
    lines = [
        f"## {benchmark.title}",
        "",
        f"`metanlp train experiment={benchmark.name}`: {benchmark.protocol}. Mean +/- 95% CI over the fixed "
        "test episodes (or, for task protocols, over the tasks).",
        "",
        "| method | " + " | ".join(settings) + " |",
        "|---|" + "---|" * len(settings),
    ]
    for published in {p.method: p for p in benchmark.published}.values():
        values = {p.setting: f"{p.value:.2f}" for p in benchmark.published if p.method == published.method}
        row = [values.get(s, "") for s in settings]
        lines.append(f"| {published.method} (published) | " + " | ".join(row) + " |")
    for key in benchmark.methods:
        row = [percent(by_key[(key, s)]["score"]) if (key, s) in by_key else "not run" for s in settings]
        lines.append(f"| metanlp: {METHODS[key].description} | " + " | ".join(row) + " |")
    lines += ["", "Meta-training against the frozen baseline (paired: same test episodes or tasks):", ""]
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
            lines.append(f"- {setting}, {key}: {signed(difference)} points: meta-training {verdict} the baseline")
    if benchmark.published:
        lines += ["", "Against the published numbers:", ""]
    for published in benchmark.published:
        ours = [by_key[(k, published.setting)] for k in benchmark.methods if (k, published.setting) in by_key]
        if not ours:
            lines.append(f"- {published.setting}, {published.method} {published.value:.2f}: not run")
            continue
        best = max(ours, key=lambda r: r["score"]["mean"])
        value = 100 * best["score"]["mean"]
        verdict = "higher" if value > published.value else "lower"
        lines.append(
            f"- {published.setting}: ours {value:.2f} ({best['method']}) vs {published.method} {published.value:.2f}: "
            f"ours is {verdict} by {abs(value - published.value):.2f}. Source: {published.source}. "
            f"Setting: {published.comparison}."
        )
    for note in benchmark.notes:
        lines += ["", note]
    lines += ["", "<details><summary>commands and run directories</summary>", ""]
    for record in records:
        lines.append(f"- {record['method']}, {record['setting']}: `{record['command']}` -> `{record['run_dir']}`")
    lines += ["", "</details>", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m reproduce", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--output-root", default="outputs/results", type=Path)
    args = parser.parse_args()
    known = [b.name for b in BENCHMARKS]
    unknown = [name for name in args.names if name not in known]
    if unknown:
        raise SystemExit(f"error: unknown benchmark {unknown[0]!r}; allowed: {', '.join(known)}")
    if not os.environ.get("METANLP_DATA_ROOT"):
        raise SystemExit("error: METANLP_DATA_ROOT is not set; point it at the benchmark data folder")

    output_root = args.output_root if args.output_root.is_absolute() else ROOT / args.output_root
    records, lines = [], []
    started = time.perf_counter()
    for benchmark in BENCHMARKS:  # the report covers every benchmark; those not named come from disk
        execute = not args.names or benchmark.name in args.names
        if execute:
            print(f"== {benchmark.name}", flush=True)
        benchmark_records = [
            score_run(benchmark, setting, METHODS[key], args.size, output_root, execute)
            for key in benchmark.methods
            for setting in benchmark.settings
        ]
        benchmark_records = [record for record in benchmark_records if record is not None]
        records += benchmark_records
        lines += benchmark_section(benchmark, benchmark_records)
    header = [
        "# Results",
        "",
        f"Generated by `make results SIZE={args.size}` (`python -m reproduce --size {args.size}`) on "
        f"{time.strftime('%Y-%m-%d')}, {time.perf_counter() - started:.0f}s of runs not already on disk. "
        f"Size `{args.size}`: {' '.join(SIZES[args.size])}. Every number below is read from the `results.json` "
        "of the run directory named under it, produced by the command shown there.",
        "",
    ]
    (ROOT / "RESULTS.md").write_text("\n".join(header + lines) + "\n")
    for record in records:
        record.pop("paired_units")
    (ROOT / "RESULTS.json").write_text(json.dumps({"size": args.size, "runs": records}, indent=1) + "\n")
    print(f"wrote {ROOT / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
