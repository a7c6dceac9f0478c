"""Meta-training episodes/s and peak memory of every algorithm on every from-scratch backbone, built from
the real YAMLs (`configs/algo/*.yaml` x `configs/backbone/{cnn,lstm,transformer}.yaml`) on one fixed
synthetic workload: what `metanlp train algo=A backbone=B` runs per step."""

from __future__ import annotations

from benchmarks.workloads import MEMORY_METHOD, Timing, Workload, compose_train_config, format_mib, measure_all
from metanlp_cli import CONFIG_DIR

BACKBONES = ("cnn", "lstm", "transformer")
TIMING = Timing(warmup=1, repeats=3, steps=1, threads=1)


def algorithm_names() -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / "algo").glob("*.yaml"))


def inner_loop(algo: str) -> str:
    """The training inner loop of an algorithm's YAML, e.g. `5 steps, second order`."""
    node = compose_train_config(Workload(algo, "cnn")).algo
    if "inner_train" not in node:
        return "-"
    order = {True: ", first order", False: ", second order"}.get(node.get("first_order"), "")
    adapted = node.get("inner_params", "head")  # ANIL has no key: it adapts the head
    return f"{node.inner_train.steps} steps{order}, adapts {adapted}"


def section(results: dict[Workload, dict], workload: Workload, timing: Timing) -> str:
    """The markdown section: one row per algorithm, episodes/s and peak MiB per backbone."""
    header = "| algorithm | inner loop (training) | " + " | ".join(
        f"{backbone} episodes/s | {backbone} peak MiB" for backbone in BACKBONES
    )
    rows = [header + " |", "|---|---|" + "---|---|" * len(BACKBONES)]
    for algo in sorted({w.algo for w in results}):
        cells = []
        for backbone in BACKBONES:
            result = results[Workload(algo, backbone)]
            cells += [f"{result['episodes_per_s']:.2f}", format_mib(result["peak_training_mib"])]
        rows.append(f"| {algo} | {inner_loop(algo)} | " + " | ".join(cells) + " |")
    return "\n".join(
        [
            "## Meta-training: algorithm x backbone (bench_algorithms)",
            "",
            f"Each algorithm with its `configs/algo/NAME.yaml` on each backbone with its `configs/backbone/NAME.yaml` "
            "(composed and built as `metanlp train algo=NAME backbone=NAME` builds them), the default trainer's Adam "
            f"outer step (lr 0.001), CPU. Synthetic workload: seeded random token ids, {workload.shape()}, "
            "64 meta-train classes (the head size of finetune and multitask). One step is the train loop's step: "
            "per episode adapt + meta-loss + backward, then the gradient norm and the outer optimizer step. "
            f"Timing: one fresh process per cell, {timing.threads} torch thread(s), {timing.describe()}; episodes/s = "
            "meta-batch / the median window's seconds per step. "
            f"{MEMORY_METHOD}",
            "",
            *rows,
            "",
        ]
    )


def main() -> str:
    algorithms = algorithm_names()
    workloads = [Workload(algo, backbone) for algo in algorithms for backbone in BACKBONES]
    results = measure_all(workloads, TIMING, "algorithm x backbone")
    return section(results, Workload("maml", "cnn"), TIMING)


if __name__ == "__main__":
    print(main())
