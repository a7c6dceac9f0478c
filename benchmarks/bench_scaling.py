"""How meta-training time and peak memory per episode grow with the number of inner steps (MAML,
FOMAML) and with K (MAML, FOMAML, ProtoNet), on the word CNN: a table and BENCHMARKS_scaling.png."""

from __future__ import annotations

from pathlib import Path

from benchmarks.workloads import MEMORY_METHOD, REPOSITORY, Timing, Workload, format_mib, measure_all

INNER_STEPS = (1, 5, 10)
K_SHOTS = (1, 5, 10, 20)
STEP_ALGORITHMS = ("maml", "fomaml")  # second and first order: the graph through the steps is the difference
K_ALGORITHMS = ("maml", "fomaml", "protonet")
NAMES = {"maml": "MAML", "fomaml": "FOMAML", "protonet": "ProtoNet"}
TIMING = Timing(warmup=1, repeats=3, steps=1, threads=1)
PLOT = REPOSITORY / "BENCHMARKS_scaling.png"


def steps_workload(algo: str, steps: int) -> Workload:
    return Workload(algo, "cnn", inner_steps=steps)


def k_workload(algo: str, k_shot: int) -> Workload:
    # ProtoNet has no inner loop; the others keep their YAML's 5 steps (the same workload as steps=5, K=5).
    return Workload(algo, "cnn", inner_steps=None if algo == "protonet" else 5, k_shot=k_shot)


def cell(result: dict) -> str:
    return f"{1000 * result['seconds_per_episode']:.0f} ms, {format_mib(result['peak_training_mib'])} MiB"


def table(results: dict, algorithms: tuple[str, ...], values: tuple[int, ...], workload_of, unit: str) -> list[str]:
    """Rows: algorithms; columns: the swept values; cells: ms per episode and peak MiB."""
    rows = [
        "| algorithm | " + " | ".join(f"{unit} = {value}" for value in values) + " |",
        "|---|" + "---|" * len(values),
    ]
    for algo in algorithms:
        cells = [cell(results[workload_of(algo, value)]) for value in values]
        rows.append(f"| {NAMES[algo]} | " + " | ".join(cells) + " |")
    return rows


def plot(results: dict[Workload, dict], path: Path) -> None:
    """Time and peak memory per episode against inner steps and against K, one line per algorithm."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 7), layout="constrained")
    axes = figure.subplots(2, 2)
    sweeps = [(STEP_ALGORITHMS, INNER_STEPS, steps_workload, "inner steps"), (K_ALGORITHMS, K_SHOTS, k_workload, "K")]
    for column, (algorithms, values, workload_of, label) in enumerate(sweeps):
        for algo in algorithms:
            measured = [results[workload_of(algo, value)] for value in values]
            axes[0, column].plot(values, [1000 * r["seconds_per_episode"] for r in measured], "o-", label=NAMES[algo])
            peaks = [r["peak_training_mib"] for r in measured]
            if None not in peaks:
                axes[1, column].plot(values, peaks, "o-", label=NAMES[algo])
        axes[0, column].set(xlabel=label, ylabel="ms per episode", title=f"time vs {label} (word CNN, 1 thread)")
        axes[1, column].set(xlabel=label, ylabel="peak training memory (MiB)", title=f"memory vs {label}")
        for row in (0, 1):
            axes[row, column].set_xticks(values)
            axes[row, column].set_ylim(bottom=0)
            axes[row, column].grid(alpha=0.3)
            axes[row, column].legend()
    figure.savefig(path, dpi=110)


def section(results: dict[Workload, dict], timing: Timing, plot_path: Path | None) -> str:
    base = Workload("maml", "cnn")
    figure = [f"![time and memory vs inner steps and K]({plot_path.name})", ""] if plot_path else []
    return "\n".join(
        [
            "## Scaling with inner steps and K (bench_scaling)",
            "",
            f"Word CNN (`configs/backbone/cnn.yaml`), each algorithm from its YAML, synthetic workload as in "
            f"bench_algorithms ({base.shape()}), CPU, {timing.threads} torch thread(s). Inner steps: `algo.inner_train."
            f"steps` at K = {base.k_shot}; K: `sampler.k_shot` with {base.q_query} queries per class and 5 inner "
            f"steps. Time: milliseconds per episode of the train loop's step, the median window; "
            f"{timing.describe()}, one fresh process per cell. {MEMORY_METHOD}",
            "",
            "### Inner steps",
            "",
            *table(results, STEP_ALGORITHMS, INNER_STEPS, steps_workload, "inner steps"),
            "",
            "### K (support examples per class)",
            "",
            *table(results, K_ALGORITHMS, K_SHOTS, k_workload, "K"),
            "",
            *figure,
        ]
    )


def main() -> str:
    workloads = [steps_workload(algo, steps) for algo in STEP_ALGORITHMS for steps in INNER_STEPS]
    workloads += [k_workload(algo, k_shot) for algo in K_ALGORITHMS for k_shot in K_SHOTS]
    results = measure_all(workloads, TIMING, "scaling")
    plot(results, PLOT)
    return section(results, TIMING, PLOT)


if __name__ == "__main__":
    print(main())
