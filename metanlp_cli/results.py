"""A run's results as files: results.json for machines, results.md for people."""

from __future__ import annotations

import json
from pathlib import Path


def format_score(score: dict) -> str:
    return f"{100 * score['mean']:.2f} +/- {100 * score['ci95']:.2f}"


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


def summary_line(results: dict) -> str:
    chance = results.get("chance", 1 / results["n_way"] if isinstance(results["n_way"], int) else float("nan"))
    return (
        f"test accuracy {format_score(results['accuracy'])} (95% CI, {results['episodes']} episodes, "
        f"{n_way_text(results)}-way {results['k_shot']}-shot, chance {100 * chance:.1f})"
    )


def write_results(run_dir: Path, results: dict) -> None:
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = [
        "| dataset | algo | backbone | N-way | K-shot | Q-query | episodes | accuracy (%) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {results['dataset']} | {results['algo']} | {results['backbone']} | {n_way_text(results)} "
        f"| {results['k_shot']} | {q_query_text(results)} | {results['episodes']} "
        f"| {format_score(results['accuracy'])} |",
    ]
    text = "\n".join(
        [
            f"# Results: {results['split']} split",
            "",
            *rows,
            "",
            "Accuracy is the mean over the fixed test episodes with its 95% confidence interval "
            "(1.96 x std / sqrt(episodes)).",
            "",
        ]
    )
    (run_dir / "results.md").write_text(text)
