"""How close the CNN meta-training workload comes to the hardware: this machine's measured float32 matmul
GFLOP/s, next to the GFLOP/s the workload achieves (its counted FLOPs over its measured time)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.workloads import Timing, Workload, available_cores, build_workload, median_seconds, meta_train_step

MATMUL_SIZE = 1024
MATMUL_TIMING = Timing(warmup=2, repeats=5, steps=5)
WORKLOAD_TIMING = Timing(warmup=1, repeats=3, steps=1)
ALGORITHMS = ("maml", "fomaml", "protonet")


def count_flops(function: Callable[[], object]) -> int:
    """FLOPs of the matmuls and convolutions (forward and backward) that `function` runs, as torch counts them."""
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def matmul_gflops(size: int, timing: Timing) -> tuple[int, float]:
    """(FLOPs of one float32 `size x size @ size x size`, GFLOP/s measured at the current thread count)."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator) for _ in range(2))
    flops = count_flops(lambda: a @ b)
    return flops, flops / median_seconds(lambda _: a @ b, timing) / 1e9


def workload_step(algo: str) -> tuple[Workload, Callable[[int], float]]:
    """The CNN workload of `algo` and its meta-training step (index -> meta-loss), built fresh."""
    workload = Workload(algo, "cnn")
    model, optimizer, meta_batches = build_workload(workload)
    return workload, lambda index: meta_train_step(model, optimizer, meta_batches[index % 2])


def measure(thread_counts: list[int]) -> tuple[int, dict[int, float], list[dict]]:
    """(matmul FLOPs, matmul GFLOP/s per thread count, one row per algorithm and thread count)."""
    original_threads = torch.get_num_threads()
    peaks, rows = {}, []
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            matmul_flops, peaks[threads] = matmul_gflops(MATMUL_SIZE, MATMUL_TIMING)
            print(f"   matmul, {threads} thread(s): {peaks[threads]:.1f} GFLOP/s", flush=True)
            for algo in ALGORITHMS:
                workload, step = workload_step(algo)
                flops_per_episode = count_flops(lambda: step(0)) / workload.meta_batch  # noqa: B023
                seconds_per_episode = median_seconds(step, WORKLOAD_TIMING) / workload.meta_batch
                gflops = flops_per_episode / seconds_per_episode / 1e9
                row = {"algo": algo, "threads": threads, "gflop_per_episode": flops_per_episode / 1e9}
                row.update(seconds_per_episode=seconds_per_episode, gflops=gflops, of_matmul=gflops / peaks[threads])
                rows.append(row)
                print(f"   {algo}/cnn, {threads} thread(s): {gflops:.1f} GFLOP/s", flush=True)
    finally:
        torch.set_num_threads(original_threads)
    return matmul_flops, peaks, rows


def section(matmul_flops: int, peaks: dict[int, float], rows: list[dict], cores: int) -> str:
    workload = Workload("maml", "cnn")
    matmul_rows = [f"| {threads} | {gflops:.1f} |" for threads, gflops in peaks.items()]
    workload_rows = [
        f"| {r['algo']} | {r['threads']} | {r['gflop_per_episode']:.3f} | {1000 * r['seconds_per_episode']:.1f} | "
        f"{r['gflops']:.1f} | {100 * r['of_matmul']:.0f}% |"
        for r in rows
    ]
    n = MATMUL_SIZE
    return "\n".join(
        [
            "## Hardware: achieved GFLOP/s of the CNN workload vs matmul (bench_hardware)",
            "",
            f"Matmul: float32 `{n}x{n} @ {n}x{n}` ({matmul_flops / 1e9:.3f} GFLOP, counted by "
            f"`torch.utils.flop_counter.FlopCounterMode`: 2 n^3), {MATMUL_TIMING.describe('matmul')}, at 1 torch "
            f"thread and with one thread per core this process may use ({cores}).",
            "",
            "| torch threads | matmul GFLOP/s |",
            "|---|---|",
            *matmul_rows,
            "",
            f"Workload: each algorithm's YAML on the word CNN (`configs/backbone/cnn.yaml`), synthetic episodes as in "
            f"bench_algorithms ({workload.shape()}), the train loop's step with the Adam outer step, in this process. "
            "FLOPs per episode: one meta-training step under `FlopCounterMode` (the forward and backward passes of "
            "adapt + meta-loss, the inner loop's gradients included), divided by the meta-batch. It counts "
            "matmuls and convolutions only (not embedding lookups, elementwise ops, pooling or the optimizer), so "
            "the achieved GFLOP/s is the rate of the dense-algebra work, a lower bound of all the work done. "
            f"Time: {WORKLOAD_TIMING.describe()}, at each thread count of the matmul.",
            "",
            "| algorithm | torch threads | GFLOP per episode | ms per episode | achieved GFLOP/s | of matmul GFLOP/s |",
            "|---|---|---|---|---|---|",
            *workload_rows,
            "",
        ]
    )


def main() -> str:
    cores = available_cores()
    thread_counts = sorted({1, cores})
    return section(*measure(thread_counts), cores)


if __name__ == "__main__":
    print(main())
