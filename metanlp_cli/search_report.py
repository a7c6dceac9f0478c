"""The search part of `metanlp report`: for every study database (study.db) under the paths, the best trial, the
trials table, and Optuna's plots of the optimisation history and the parameter importances as PNGs."""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

STUDY_FILE = "study.db"
MOST_TRIALS_LISTED = 50


def find_study_files(paths: list[Path]) -> list[Path]:
    files = []
    for path in paths:
        files += [path] if path.is_file() and path.name == STUDY_FILE else sorted(path.rglob(STUDY_FILE))
    return sorted(set(files))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _value(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trial_run_dir(study_file: Path, number: int) -> Path | None:
    """The trial's run directory: job N of the sweep holds trial N (hydra.sweep.subdir starts with the job number)."""
    found = sorted(study_file.parent.glob(f"{number}_*/results.json"))
    return found[0].parent if found else None


def save_optuna_plot(plot, study, path: Path, **options) -> Path | None:
    """One of optuna.visualization.matplotlib's plots as a PNG; None where the study cannot make it (too few
    trials for importances, ...)."""
    import matplotlib

    matplotlib.use("Agg")  # Optuna draws through pyplot: no window, and each figure is closed after saving
    from matplotlib import pyplot

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        try:
            axes = plot(study, **options)
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            print(f"note: {path.name}: {error}", file=sys.stderr)
            return None
    figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
    figure.set_size_inches(7, 4.5)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
    return path


def study_section(study, study_file: Path, out: Path) -> list[str]:
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as plots

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    counts = ", ".join(
        f"{sum(t.state == s for t in trials)} {s.name.lower()}" for s in TrialState if any(t.state == s for t in trials)
    )
    sampler = study.user_attrs.get("sampler", "?")
    lines = [
        f"### Search `{study.study_name}` ({sampler}; `{study_file}`)",
        "",
        f"{len(trials)} trials ({counts}), maximising the best validation score of each run.",
        "",
    ]
    if not complete:
        return [*lines, "No trial has finished yet.", ""]
    best = study.best_trial
    run_dir = trial_run_dir(study_file, best.number)
    lines += [
        f"**Best trial: #{best.number}**, validation score {100 * best.value:.2f}%"
        + (f", run `{run_dir}`" if run_dir else "")
        + ": "
        + ", ".join(f"`{key}={_value(value)}`" for key, value in best.params.items()),
        "",
    ]
    keys = sorted({key for t in trials for key in t.params})
    lines += ["| trial | state | validation (%) | " + " | ".join(keys) + " |", "|---" * (3 + len(keys)) + "|"]
    ranked = sorted(trials, key=lambda t: (t.value is None, -(t.value or 0.0), t.number))
    for trial in ranked[:MOST_TRIALS_LISTED]:
        value = f"{100 * trial.value:.2f}" if trial.value is not None else "-"
        cells = [_value(trial.params[key]) if key in trial.params else "-" for key in keys]
        lines.append(f"| {trial.number} | {trial.state.name.lower()} | {value} | " + " | ".join(cells) + " |")
    lines.append("")
    name = _slug(study.study_name)
    pngs = [
        save_optuna_plot(plots.plot_optimization_history, study, out / f"search_history_{name}.png"),
        save_optuna_plot(plots.plot_param_importances, study, out / f"search_importances_{name}.png")
        if len(complete) >= 2
        else None,
    ]
    lines += [f"![{png.stem}]({png.name})" for png in pngs if png is not None]
    return [*lines, ""]


def search_sections(paths: list[Path], out: Path) -> list[str]:
    """report.md's `## Searches` section (empty without a study database under the paths)."""
    files = find_study_files(paths)
    if not files:
        return []
    try:
        import optuna
    except ImportError:
        print("note: skipping the searches' studies: they need Optuna (the sweeps extra)", file=sys.stderr)
        return []
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lines = ["## Searches", ""]
    for study_file in files:
        storage = f"sqlite:///{study_file}"
        for name in optuna.study.get_all_study_names(storage):
            lines += study_section(optuna.load_study(study_name=name, storage=storage), study_file, out)
    return lines


def append_search_sections(paths: list[Path], out: Path, markdown: Path) -> None:
    lines = search_sections(paths, out)
    if lines:
        markdown.write_text(markdown.read_text() + "\n" + "\n".join(lines))
