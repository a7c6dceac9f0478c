"""`metanlp report PATH...`: compare runs. Reads every run directory under the paths (results.json,
metrics.jsonl, config.yaml, .hydra/overrides.yaml) and writes report.md, report.csv, paired.csv and
PNG plots: test accuracy per method and task, paired differences on the shared test episodes,
validation curves, and accuracy against K where several K were run.

A *task* is the set of test episodes: runs with the same dataset, split, N, K, Q, episode count and
protocol seed were scored on the very same episodes, so methods can be compared episode by episode.
A task protocol's run (`protocol=kshot|arsc|glue_lowres`: tasks, each adapted on one or more
training sets) is compared the same way, its paired units being the (task, training set) pairs and
its score each task's main metric, averaged over the tasks as the protocol reports it.
A *method* is algo/backbone plus the config values that differ among that algo/backbone's runs
(seeds, paths and the task aside); its repeated seeds are averaged.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from metanlp_cli import search_report
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.metrics import REGRESSION_METRICS
from metanlp_cli.stats import mean_confidence_interval, seed_confidence_interval
from metanlp_cli.stats import paired_difference as stats_paired_difference

# Config keys that say nothing about the method: seeds, where and how it ran, and what defines the task.
NOT_METHOD = re.compile(
    r"^(seed|trainer\.seed|resume|checkpoint|split|paths\..*|protocol\..*|dataset\..*|"
    r"trainer\.(progress|device|distributed)|sampler\.(n_way|k_shot|q_query|seed))$"
)


@dataclass(frozen=True, order=True)
class Task:
    """Which test episodes a run was scored on."""

    dataset: str
    split: str
    n_way: int
    k_shot: int
    q_query: int
    episodes: int  # for a task protocol: the (task, training set) pairs
    protocol_seed: int
    protocol: str = "episodic"

    @property
    def name(self) -> str:
        split = "" if self.split == "test" else f" ({self.split})"
        if self.protocol != "episodic":  # a task protocol: its dataset (collection) and K where one K
            shots = f" {self.k_shot}-shot" if self.k_shot else ""
            return f"{self.protocol} {self.dataset}{shots}{split}"
        return f"{self.dataset} {self.n_way}-way {self.k_shot}-shot{split}"

    @property
    def family(self) -> tuple:
        """The same task at any K (for accuracy-against-K plots)."""
        return (self.dataset, self.split, self.n_way, self.q_query, self.episodes, self.protocol_seed)


@dataclass
class Run:
    path: Path
    algo_backbone: str
    settings: dict[str, str]  # the resolved config, flattened to dotted keys (method keys only)
    overrides: list[str]  # from .hydra/overrides.yaml
    task: Task
    seed: int | None
    accuracy: float
    ci95: float
    episode_accuracies: list[float]
    curve: dict[int, float] = field(default_factory=dict)  # step -> validation accuracy
    method: str = ""


@dataclass
class Cell:
    """One method on one task: its runs (seeds) summarised."""

    runs: list[Run]
    mean: float
    ci95: float
    ci_over: str  # "seeds" (Student t over the runs' means) or "episodes" (one run's test CI)

    @property
    def seeds(self) -> list:
        return [r.seed for r in self.runs]


# Reading runs


def _read_yaml(path: Path, default):
    return yaml.safe_load(path.read_text()) if path.is_file() else default


def _flatten(node, prefix: str = "") -> dict[str, str]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flatten(value, f"{prefix}{key}.").items()}
    if isinstance(node, float):
        return {prefix[:-1]: f"{node:.4g}"}
    return {prefix[:-1]: json.dumps(node) if isinstance(node, list) else str(node)}


def _settings(config: dict) -> dict[str, str]:
    return {key: value for key, value in _flatten(config).items() if not NOT_METHOD.match(key)}


def _curve(path: Path) -> dict[int, float]:
    curve = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "val_accuracy" in record:
                curve[record["step"]] = record["val_accuracy"]  # a resumed run's repeat wins
    return curve


def read_run(results_path: Path) -> Run | None:
    """One run directory, or None (with a note on stderr) if its results.json is not a metanlp one."""
    directory = results_path.parent
    try:
        results = json.loads(results_path.read_text())
        if "tasks" in results and "average" in results:
            return _task_protocol_run(directory, results)
        task = Task(
            str(results["dataset"]),
            results["split"],
            results["n_way"],
            results["k_shot"],
            results["q_query"],
            results["episodes"],
            results["seed"],
        )
        if "accuracy" not in results and any(f"episode_{name}" in results for name in REGRESSION_METRICS):
            note = "regression episodes only (report compares accuracies)"
            print(f"note: skipping {results_path}: {note}", file=sys.stderr)
            return None
        accuracy, episode_accuracies = results["accuracy"], results["episode_accuracies"]
    except (ValueError, KeyError, TypeError) as error:
        print(f"note: skipping {results_path}: not a metanlp results.json ({error})", file=sys.stderr)
        return None
    return _run(directory, results, task, accuracy["mean"], accuracy["ci95"], episode_accuracies)


def _run(directory: Path, results: dict, task: Task, score: float, ci95: float, units: list[float]) -> Run:
    """A run directory's Run: its method from results.json and config.yaml, its scores as given."""
    config = _read_yaml(directory / "config.yaml", {}) or {}
    return Run(
        path=directory,
        algo_backbone=f"{results.get('algo')}/{results.get('backbone')}",
        settings=_settings(config),
        overrides=_read_yaml(directory / ".hydra" / "overrides.yaml", []) or [],
        task=task,
        seed=(config.get("trainer") or {}).get("seed", config.get("seed")),
        accuracy=score,
        ci95=ci95,
        episode_accuracies=units,
        curve=_curve(directory / "metrics.jsonl"),
    )


def _task_protocol_run(directory: Path, results: dict) -> Run:
    """A k-shot / ARSC / GLUE-style run: each (task, training set)'s main score is a paired unit."""
    groups = results["tasks"]
    units = [
        scores[groups[name]["score_metric"]]
        for name in sorted(groups)
        for _, scores in sorted(groups[name]["training_sets"].items())
    ]
    shots = {k for group in groups.values() for k in group.get("k_shot", [])}
    task = Task(
        str(results["dataset"]), results["split"], 0, shots.pop() if len(shots) == 1 else 0, 0, len(units),
        results["seed"], results["protocol"],
    )  # fmt: skip
    ci95 = mean_confidence_interval(units)["ci95"] if len(units) > 1 else float("nan")
    return _run(directory, results, task, results["average"], ci95, units)


def find_runs(paths: list[Path]) -> list[Run]:
    """Every run under the paths (a run directory, or any folder above run directories)."""
    files = []
    for path in paths:
        if not path.exists():
            raise MetaNLPError(f"report: {str(path)!r} does not exist; give run or multirun directories")
        files += [path] if path.is_file() else sorted(path.rglob("results.json"))
    runs = [run for run in map(read_run, sorted(set(files))) if run is not None]
    if not runs:
        raise MetaNLPError(f"report: no results.json under {', '.join(map(str, paths))}; give run directories")
    return _name_methods(_without_duplicates(runs))


def _without_duplicates(runs: list[Run]) -> list[Run]:
    """An eval that reproduces a training run's results.json is the same run, not another seed."""
    seen, unique = set(), []
    for run in runs:
        key = (
            run.algo_backbone,
            tuple(sorted(run.settings.items())),
            run.task,
            run.seed,
            tuple(run.episode_accuracies),
        )
        if key not in seen:
            seen.add(key)
            unique.append(run)
    return unique


def common_overrides(runs: list[Run]) -> list[str]:
    """Command-line overrides every run had (the sweep's fixed settings), for the report's header."""
    return sorted(set.intersection(*(set(r.overrides) for r in runs)))


def _name_methods(runs: list[Run]) -> list[Run]:
    """algo/backbone, plus the config values that differ among the runs of that algo/backbone."""
    groups = defaultdict(list)
    for run in runs:
        groups[run.algo_backbone].append(run)
    for group in groups.values():
        keys = sorted({k for r in group for k in r.settings})
        varying = [k for k in keys if len({r.settings.get(k) for r in group}) > 1]
        for run in group:
            run.method = " ".join([run.algo_backbone, *(f"{k}={run.settings.get(k)}" for k in varying)])
    return runs


# Statistics


def summarise(runs: list[Run]) -> Cell:
    """Mean over the runs; 95% CI over their means (Student t over the seeds, `stats`), or for a single
    run its own CI over the test episodes."""
    means = [r.accuracy for r in runs]
    if len(runs) == 1:
        return Cell(runs, float(means[0]), runs[0].ci95, "episodes")
    over_seeds = seed_confidence_interval(means)
    return Cell(runs, over_seeds["mean"], over_seeds["ci95"], "seeds")


def paired_difference(a: list[Run], b: list[Run]) -> dict:
    """Mean of accuracy(a) - accuracy(b) over the shared test episodes, each method's per-episode accuracy
    averaged over its seeds, with the 95% CI of that mean (`stats.paired_difference`: Student t)."""
    difference = stats_paired_difference(
        np.mean([r.episode_accuracies for r in a], axis=0), np.mean([r.episode_accuracies for r in b], axis=0)
    )
    return {**difference, "episodes": difference["count"]}


def verdict(a: str, b: str, difference: dict) -> str:
    if difference["low"] > 0:
        return f"{a} better"
    if difference["high"] < 0:
        return f"{b} better"
    return "no significant difference"


# The report


@dataclass
class Report:
    runs: list[Run]
    cells: dict[tuple[str, Task], Cell]
    methods: list[str]
    tasks: list[Task]

    @classmethod
    def of(cls, runs: list[Run]) -> Report:
        groups = defaultdict(list)
        for run in runs:
            groups[(run.method, run.task)].append(run)
        cells = {key: summarise(group) for key, group in groups.items()}
        return cls(runs, cells, sorted({r.method for r in runs}), sorted({r.task for r in runs}))

    def task_names(self) -> dict[Task, str]:
        """Short names, with episodes and protocol seed added where two tasks would share one."""
        counts = defaultdict(int)
        for task in self.tasks:
            counts[task.name] += 1
        return {
            t: t.name if counts[t.name] == 1 else f"{t.name} [{t.episodes} episodes, seed {t.protocol_seed}]"
            for t in self.tasks
        }

    def best(self, task: Task) -> str:
        return max((m for m in self.methods if (m, task) in self.cells), key=lambda m: self.cells[(m, task)].mean)

    def ranked(self, task: Task) -> list[str]:
        present = [m for m in self.methods if (m, task) in self.cells]
        return sorted(present, key=lambda m: -self.cells[(m, task)].mean)

    def pairs(self, task: Task):
        """(a, b, difference) for every two methods on the task, the higher-scoring one first."""
        for a, b in itertools.combinations(self.ranked(task), 2):
            yield a, b, paired_difference(self.cells[(a, task)].runs, self.cells[(b, task)].runs)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def markdown_table(report: Report) -> list[str]:
    names = report.task_names()
    lines = ["| method | " + " | ".join(names[t] for t in report.tasks) + " |"]
    lines.append("|---|" + "---|" * len(report.tasks))
    for method in report.methods:
        cells = []
        for task in report.tasks:
            cell = report.cells.get((method, task))
            if cell is None:
                cells.append("-")
                continue
            text = f"{_percent(cell.mean)} ± {_percent(cell.ci95)} (n={len(cell.runs)})"
            cells.append(f"**{text}**" if report.best(task) == method else text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def paired_sections(report: Report) -> list[str]:
    names, lines = report.task_names(), []
    for task in report.tasks:
        pairs = list(report.pairs(task))
        if not pairs:
            continue
        lines += [
            f"### {names[task]}: {task.episodes} {task.split} episodes, protocol seed {task.protocol_seed}",
            "",
            "| A | B | A - B (points) | 95% CI | verdict |",
            "|---|---|---|---|---|",
        ]
        for a, b, difference in pairs:
            lines.append(
                f"| {a} | {b} | {100 * difference['mean']:+.2f} | "
                f"[{100 * difference['low']:+.2f}, {100 * difference['high']:+.2f}] | {verdict(a, b, difference)} |"
            )
        lines.append("")
    return lines


def write_markdown(report: Report, out: Path, sources: list[Path], plots: list[Path]) -> Path:
    common = common_overrides(report.runs)
    lines = [
        "# metanlp report",
        "",
        f"{len(report.runs)} runs from {', '.join(f'`{p}`' for p in sources)}, {time.strftime('%Y-%m-%d %H:%M')}.",
        f"Settings shared by every run: {', '.join(f'`{o}`' for o in common) if common else 'none'}.",
        "",
        "## Test accuracy (%)",
        "",
        *markdown_table(report),
        "",
        "Mean over the method's runs (n, different seeds) ± the 95% confidence interval: over the runs' "
        "means (Student t) when n > 1, over the test episodes of the one run when n = 1. "
        "**Bold**: the best mean in the column.",
        "",
        "## Paired differences on the same test episodes",
        "",
        "Runs of one task were scored on the same test episodes (same protocol seed), so two methods are "
        "compared episode by episode: the mean of accuracy(A) - accuracy(B), each method's per-episode "
        "accuracy averaged over its seeds, with the 95% CI of that mean over the episodes. A difference "
        "whose CI excludes 0 is significant on these episodes (seed-to-seed variation is in the table "
        "above; several comparisons are not corrected for).",
        "",
        *paired_sections(report),
    ]
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    lines += ["## Runs", "", "| run | method | task | seed | test accuracy (%) |", "|---|---|---|---|---|"]
    names = report.task_names()
    for run in sorted(report.runs, key=lambda r: (r.method, r.task, str(r.seed), str(r.path))):
        lines.append(
            f"| `{run.path}` | {run.method} | {names[run.task]} | {run.seed} | "
            f"{_percent(run.accuracy)} ± {_percent(run.ci95)} |"
        )
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_csv(report: Report, out: Path) -> None:
    names = report.task_names()
    with (out / "report.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(
            ["method", "task", "dataset", "split", "n_way", "k_shot", "q_query", "episodes", "protocol_seed"]
            + ["runs", "seeds", "accuracy_pct", "ci95_pct", "ci_over", "best"]
        )
        for (method, task), cell in sorted(report.cells.items(), key=lambda item: (item[0][1], item[0][0])):
            writer.writerow(
                [method, names[task], task.dataset, task.split, task.n_way, task.k_shot, task.q_query]
                + [task.episodes, task.protocol_seed, len(cell.runs), " ".join(map(str, cell.seeds))]
                + [f"{100 * cell.mean:.4f}", f"{100 * cell.ci95:.4f}", cell.ci_over, report.best(task) == method]
            )
    with (out / "paired.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["task", "method_a", "method_b", "episodes", "difference_pct", "ci95_low_pct", "ci95_high_pct"])
        for task in report.tasks:
            for a, b, d in report.pairs(task):
                writer.writerow(
                    [names[task], a, b, d["episodes"]] + [f"{100 * d[k]:.4f}" for k in ("mean", "low", "high")]
                )


# Plots (matplotlib's object API: no pyplot, no global backend state)


def _figure(width: float = 7.0, height: float = 4.5):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.subplots()


def plot_accuracy(report: Report, task: Task, name: str, out: Path) -> Path:
    methods = report.ranked(task)[::-1]
    cells = [report.cells[(m, task)] for m in methods]
    figure, axes = _figure(4.0 + 0.075 * max(map(len, methods)), 1.5 + 0.4 * len(methods))
    axes.barh(methods, [100 * c.mean for c in cells], xerr=[100 * c.ci95 for c in cells], color="tab:blue", capsize=3)
    if task.n_way:  # episodic: N-way chance (a task protocol's tasks have their own label counts)
        axes.axvline(100 / task.n_way, color="grey", linestyle="--", label="chance")
    axes.set_xlabel("test accuracy (%), mean ± 95% CI" if task.n_way else "main score (%), mean ± 95% CI")
    axes.set_title(f"{name}: test accuracy" if task.n_way else f"{name}: average over the tasks")
    if task.n_way:
        axes.legend(loc="lower right")
    path = out / f"accuracy_{_slug(name)}.png"
    figure.savefig(path, dpi=110)
    return path


def plot_validation_curves(report: Report, task: Task, name: str, out: Path) -> Path | None:
    methods = [m for m in report.ranked(task) if any(r.curve for r in report.cells[(m, task)].runs)]
    if not methods:
        return None
    figure, axes = _figure(max(7.0, 0.07 * max(map(len, methods))), 4.0 + 0.2 * len(methods))
    for method in methods:
        curves = [r.curve for r in report.cells[(method, task)].runs if r.curve]
        steps = sorted(set().union(*curves))
        values = [[100 * c[s] for c in curves if s in c] for s in steps]
        (line,) = axes.plot(steps, [np.mean(v) for v in values], marker=".", label=f"{method} (n={len(curves)})")
        if len(curves) > 1:
            low, high = [min(v) for v in values], [max(v) for v in values]
            axes.fill_between(steps, low, high, color=line.get_color(), alpha=0.15)
    axes.set_xlabel("meta-training step")
    axes.set_ylabel("validation accuracy (%)")
    axes.set_title(f"{name}: validation accuracy\n(mean over seeds; band: min to max)")
    figure.legend(loc="outside lower center", fontsize="small")
    path = out / f"validation_{_slug(name)}.png"
    figure.savefig(path, dpi=110)
    return path


def plot_accuracy_against_k(report: Report, tasks: list[Task], out: Path) -> Path | None:
    if len({t.k_shot for t in tasks}) < 2:
        return None
    tasks = sorted(tasks, key=lambda t: t.k_shot)
    figure, axes = _figure(max(7.0, 0.07 * max(map(len, report.methods))), 4.0 + 0.2 * len(report.methods))
    for method in report.methods:
        points = [(t.k_shot, report.cells[(method, t)]) for t in tasks if (method, t) in report.cells]
        if points:
            axes.errorbar(
                [k for k, _ in points],
                [100 * c.mean for _, c in points],
                yerr=[100 * c.ci95 for _, c in points],
                marker="o",
                capsize=3,
                label=method,
            )
    first = tasks[0]
    axes.set_xlabel("K (support examples per class)")
    axes.set_ylabel("test accuracy (%)")
    axes.set_xticks(sorted({t.k_shot for t in tasks}))
    axes.set_title(f"{first.dataset} {first.n_way}-way ({first.split}): accuracy against K")
    figure.legend(loc="outside lower center", fontsize="small")
    path = out / f"accuracy_vs_k_{_slug(f'{first.dataset} {first.n_way} way {first.split}')}.png"
    figure.savefig(path, dpi=110)
    return path


def write_plots(report: Report, out: Path) -> list[Path]:
    names, plots = report.task_names(), []
    for task in report.tasks:
        plots.append(plot_accuracy(report, task, names[task], out))
        plots.append(plot_validation_curves(report, task, names[task], out))
    families = defaultdict(list)
    for task in report.tasks:
        families[task.family].append(task)
    plots += [plot_accuracy_against_k(report, tasks, out) for tasks in families.values()]
    return [p for p in plots if p is not None]


def write_report(paths: list[Path], out: Path) -> Report:
    report = Report.of(find_runs(paths))
    if out.exists() and not out.is_dir():
        raise MetaNLPError(f"--out {str(out)!r} is a file; give a folder for report.md, report.csv and the plots")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MetaNLPError(f"--out {str(out)!r}: cannot create that folder ({error.strerror})") from None
    plots = write_plots(report, out)
    write_csv(report, out)
    markdown = write_markdown(report, out, paths, plots)
    search_report.append_search_sections(paths, out, markdown)  # best trial, importances, history of studies
    return report


def main(arguments: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="metanlp report",
        description="Compare runs: test accuracy per method and task (mean ± 95% CI over seeds), paired "
        "differences on the shared test episodes, validation curves, accuracy against K.",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="run directories, or folders above them (searched)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where to write report.md, report.csv, paired.csv and the PNGs (default: outputs/report/DATE/TIME)",
    )
    options = parser.parse_args(arguments)
    out = options.out or Path("outputs", "report", time.strftime("%Y-%m-%d"), time.strftime("%H-%M-%S"))
    report = write_report(options.paths, out)
    print("\n".join(markdown_table(report)))
    print(f"report: {out / 'report.md'} ({len(report.runs)} runs)")
