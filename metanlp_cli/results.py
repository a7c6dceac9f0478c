"""A run's results as files: results.json for machines, results.md for people."""

from __future__ import annotations

import json
from pathlib import Path


def format_score(score: dict) -> str:
    return f"{100 * score['mean']:.2f} +/- {100 * score['ci95']:.2f}"


def summary_line(results: dict) -> str:
    return (
        f"test accuracy {format_score(results['accuracy'])} (95% CI, {results['episodes']} episodes, "
        f"{results['n_way']}-way {results['k_shot']}-shot, chance {100 / results['n_way']:.1f})"
    )


def write_results(run_dir: Path, results: dict) -> None:
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = [
        "| dataset | algo | backbone | N-way | K-shot | Q-query | episodes | accuracy (%) |",
        "|---|---|---|---|---|---|---|---|",
        f"| {results['dataset']} | {results['algo']} | {results['backbone']} | {results['n_way']} "
        f"| {results['k_shot']} | {results['q_query']} | {results['episodes']} "
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
