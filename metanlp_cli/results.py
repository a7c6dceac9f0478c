"""A run's results as files: results.json for machines, results.md for people."""

from __future__ import annotations

import json
from pathlib import Path

from metanlp_cli.metrics import REGRESSION_METRICS
from metanlp_cli.stats import format_score


def n_way_text(results: dict) -> str:
    """`5`, or `2/3` where a task collection's episodes have different numbers of classes."""
    n_way = results["n_way"]
    return "/".join(map(str, n_way)) if isinstance(n_way, list) else str(n_way)


def q_query_text(results: dict) -> str:
    """`15`, or `15 (4 in 5 tasks)` where a task's classes could not hold the full query."""
    capped = results.get("q_query_per_task") or {}
    if not capped:
        return str(results["q_query"])
    sizes = "/".join(map(str, sorted(set(capped.values()))))
    return f"{results['q_query']} ({sizes} in {len(capped)} task{'s' * (len(capped) > 1)})"


def regression_metrics(results: dict) -> list[str]:
    """The metrics of an episodic run's regression episodes (e.g. ["pearson"]); none for classification."""
    return [name for name in REGRESSION_METRICS if name in results]


def regression_examples_text(results: dict) -> str:
    """`25 support / 75 query examples`: a regression episode is as large as an N-way one."""
    sizes = results["regression_examples"]
    return " / ".join(f"{','.join(map(str, sizes[part]))} {part}" for part in ("support", "query")) + " examples"


def summary_line(results: dict) -> str:
    if results.get("protocol") in KSHOT_PROTOCOLS:
        return kshot_summary_line(results)
    parts = []
    if "accuracy" in results:
        chance = results.get("chance", 1 / results["n_way"] if isinstance(results["n_way"], int) else float("nan"))
        count = results["accuracy"].get("count", results["episodes"])
        parts.append(
            f"test accuracy {format_score(results['accuracy'])} (95% CI, {count} episodes, "
            f"{n_way_text(results)}-way {results['k_shot']}-shot, chance {100 * chance:.1f})"
        )
    for metric in regression_metrics(results):
        parts.append(
            f"test {metric} {format_score(results[metric])} (95% CI, {results[metric]['count']} regression "
            f"episodes, {regression_examples_text(results)}, chance 0.0)"
        )
    return "; ".join(parts)


def evaluations_markdown(results: dict) -> str:
    """The evaluations run after training (train's `evaluations`), one line each with its folder."""
    if not results.get("evaluations"):
        return ""
    lines = ["", "## Evaluations after training", ""]
    for evaluation in results["evaluations"]:
        lines.append(
            f"- `{evaluation['name']}` (`metanlp eval {' '.join(evaluation['overrides'])}`): {evaluation['summary']}; "
            f"tables in `eval/{evaluation['name']}/results.md`"
        )
    return "\n".join([*lines, ""])


def write_results(run_dir: Path, results: dict) -> None:
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if results.get("protocol") in KSHOT_PROTOCOLS:
        (run_dir / "results.md").write_text(kshot_markdown(results))
        return
    rows, notes = [], []
    if "accuracy" in results:
        count = results["accuracy"].get("count", results["episodes"])
        rows += [
            "| dataset | algo | backbone | N-way | K-shot | Q-query | episodes | accuracy (%) |",
            "|---|---|---|---|---|---|---|---|",
            f"| {results['dataset']} | {results['algo']} | {results['backbone']} | {n_way_text(results)} "
            f"| {results['k_shot']} | {q_query_text(results)} | {count} "
            f"| {format_score(results['accuracy'])} |",
            "",
        ]
        notes.append(
            "Accuracy is the mean over the fixed test episodes with its 95% confidence interval "
            "(1.96 x std / sqrt(episodes))."
        )
    for metric in regression_metrics(results):
        label = METRIC_LABELS[metric]
        rows += [
            f"| dataset | algo | backbone | regression episodes | examples | {label} (%) |",
            "|---|---|---|---|---|---|",
            f"| {results['dataset']} | {results['algo']} | {results['backbone']} | {results[metric]['count']} "
            f"| {regression_examples_text(results)} | {format_score(results[metric])} |",
            "",
        ]
        notes.append(
            f"{label} is the correlation of the predicted and true targets of each regression episode's query "
            "set (0 for a constant prediction; chance is 0), the mean over the episodes with its 95% CI."
        )
    text = "\n".join([f"# Results: {results['split']} split", "", *rows, *notes, ""])
    (run_dir / "results.md").write_text(text + evaluations_markdown(results))


METRIC_LABELS = {"accuracy": "acc", "f1": "F1", "mcc": "MCC", "pearson": "Pearson", "spearman": "Spearman"}


# The protocols whose results are tasks scored on their evaluation splits (protocols.KShotProtocol).
KSHOT_PROTOCOLS = ("kshot", "arsc", "glue_lowres")
TITLES = {"kshot": "k-shot", "arsc": "ARSC", "glue_lowres": "GLUE low-resource targets"}


def kshot_cell(group: dict) -> str:
    """`91.2 (1.1)`, or `81.0/75.2 (2.1/1.9)` for a task with several metrics, as LM-BFF prints them;
    the mean alone where a task has one training set (ARSC, or GLUE targets adapted on all their data)."""
    scores = [group["scores"][name] for name in group["metrics"]]
    means = "/".join(f"{100 * score['mean']:.1f}" for score in scores)
    if len(group["training_sets"]) == 1:
        return means
    stds = "/".join(f"{100 * score['std']:.1f}" for score in scores)
    return f"{means} ({stds})"


def support_text(group: dict) -> str:
    """`K=16 per label`, `8551 examples (2528/6023 per label)` for a whole train split, or `32 examples`
    for a regression task (a 1-output head fitted with MSE)."""
    examples = "/".join(map(str, group["support_examples"]))
    if group.get("regression"):
        return f"{examples} examples (regression head, MSE)"
    if len(group["k_shot"]) > 1:  # a whole train split: its label counts differ
        return f"{examples} examples ({'/'.join(map(str, group['k_shot']))} per label)"
    return f"K={group['k_shot'][0]} per label"


def score_name(group: dict) -> str:
    """What a task's main score is: `F1`, or `F1/acc mean` for GLUE's combined score."""
    if group.get("score_metric", "combined") == "combined" and len(group["metrics"]) > 1:
        return f"{'/'.join(METRIC_LABELS[m] for m in group['metrics'])} mean"
    return METRIC_LABELS[group.get("score_metric", group["metrics"][0])]


def kshot_summary_line(results: dict) -> str:
    tasks = ", ".join(f"{name} {kshot_cell(group)}" for name, group in results["tasks"].items())
    if results["protocol"] == "arsc":
        count = len(results["tasks"])
        return f"test ARSC accuracy per target task: {tasks}; mean over {count} {100 * results['average']:.1f}"
    if results["protocol"] == "glue_lowres":
        return f"test GLUE dev scores per target task: {tasks}; average {100 * results['average']:.1f}"
    return f"test k-shot scores (mean (std) over training sets): {tasks}; average {100 * results['average']:.1f}"


def kshot_table(results: dict) -> list[str]:
    """A paper-style table: one row (this method), a column per task (its metrics) and the average."""
    groups = results["tasks"]
    headers = [f"{name} ({'/'.join(METRIC_LABELS[m] for m in group['metrics'])})" for name, group in groups.items()]
    method = f"{results.get('algo')} ({results.get('backbone')})"
    cells = [kshot_cell(group) for group in groups.values()]
    return [
        f"| method | {' | '.join(headers)} | average |",
        "|---" * (len(headers) + 2) + "|",
        f"| {method} | {' | '.join(cells)} | {100 * results['average']:.1f} |",
    ]


def evaluated_splits(results: dict) -> str:
    """`test split`, or the splits actually scored where they differ (`dev splits`: GLUE's hidden test labels)."""
    scored = sorted({group["evaluation_split"] for group in results["tasks"].values()})
    return f"{results['split']} split" if scored == [results["split"]] else f"{'/'.join(scored)} splits"


def kshot_markdown(results: dict) -> str:
    groups = results["tasks"]
    averaged = ", ".join(f"{name} {score_name(group)}" for name, group in groups.items())
    details = [
        f"- {name}: {len(group['training_sets'])} training set{'s' * (len(group['training_sets']) > 1)} "
        f"of {support_text(group)}; "
        f"scored on the {group['evaluation_split']} split ({group['evaluation_examples']} examples)"
        for name, group in groups.items()
    ]
    if results["protocol"] == "arsc":
        note = (
            f"Each cell is the task's accuracy in % on its test file after adapting on its support file; "
            f"the average is the mean over the {len(groups)} target tasks."
        )
    else:
        note = (
            "Each cell is the task's score in % (the mean (sample standard deviation) over its training sets where "
            "it has several); a task with several metrics lists each, in the column's order. "
            f"The average is the mean over the tasks of: {averaged}."
        )
    return "\n".join(
        [
            f"# Results: {TITLES[results['protocol']]}, {evaluated_splits(results)}",
            "",
            *kshot_table(results),
            "",
            note,
            "",
            *details,
            "",
        ]
    )
