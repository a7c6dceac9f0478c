"""How close the CNN meta-training workload comes to the hardware: this machine's measured float32 matmul
(and convolution) GFLOP/s, next to the GFLOP/s the workload achieves (its counted FLOPs over its time)."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.workloads import (
    Timing,
    Workload,
    available_cores,
    build_workload,
    median_seconds,
    meta_train_step,
    window_seconds,
)

MATMUL_SIZE = 1024
# The word CNN's widest convolution (embedding 128 -> 100 filters of width 5) over a large batch of
# 32-token sentences: the kernel the workload spends its FLOPs in, run by oneDNN rather than by BLAS.
CONVOLUTION_BATCH, CONVOLUTION_SHAPE = 512, (128, 100, 5, 32)
KERNEL_TIMING = Timing(warmup=2, repeats=5, steps=5)
WORKLOAD_TIMING = Timing(warmup=1, repeats=3, steps=1)
ALGORITHMS = ("maml", "fomaml", "protonet")


def count_flops(function: Callable[[], object]) -> int:
    """FLOPs of the matmuls and convolutions (forward and backward) that `function` runs, as torch counts them."""
    with FlopCounterMode(display=False) as counter:
        function()
    return counter.get_total_flops()


def peak_gflops(function: Callable[[], object], timing: Timing) -> tuple[int, float]:
    """(FLOPs of one call, GFLOP/s of the fastest timed window): the rate the hardware can reach, which
    other load on the machine can only lower."""
    flops = count_flops(function)
    return flops, flops / min(window_seconds(lambda _: function(), timing)) / 1e9


def matmul_gflops(size: int, timing: Timing) -> tuple[int, float]:
    """(FLOPs, peak GFLOP/s) of a float32 `size x size @ size x size` at the current thread count."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator) for _ in range(2))
    return peak_gflops(lambda: a @ b, timing)


def convolution_gflops(batch: int, timing: Timing) -> tuple[int, float]:
    """(FLOPs, peak GFLOP/s) of the forward float32 Conv1d of CONVOLUTION_SHAPE over `batch` sentences."""
    in_channels, out_channels, width, length = CONVOLUTION_SHAPE
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(batch, in_channels, length, generator=generator)
    weight = torch.randn(out_channels, in_channels, width, generator=generator)
    with torch.no_grad():
        return peak_gflops(lambda: torch.nn.functional.conv1d(inputs, weight), timing)


def workload_step(algo: str) -> tuple[Workload, Callable[[int], float]]:
    """The CNN workload of `algo` and its meta-training step (index -> meta-loss), built fresh."""
    workload = Workload(algo, "cnn")
    model, optimizer, meta_batches = build_workload(workload)
    return workload, lambda index: meta_train_step(model, optimizer, meta_batches[index % 2], index)


def kernel_gflops(threads: int) -> dict[str, tuple[int, float]]:
    """{kernel: (FLOPs, peak GFLOP/s)} at `threads` torch threads."""
    torch.set_num_threads(threads)
    kernels = {
        "matmul": matmul_gflops(MATMUL_SIZE, KERNEL_TIMING),
        "conv1d": convolution_gflops(CONVOLUTION_BATCH, KERNEL_TIMING),
    }
    print(f"   {threads} thread(s): " + ", ".join(f"{k} {v[1]:.1f} GFLOP/s" for k, v in kernels.items()), flush=True)
    return kernels


def workload_rows(kernels: dict[str, tuple[int, float]]) -> list[dict]:
    """One row per algorithm: FLOPs, time and achieved GFLOP/s at 1 thread, and the share of `kernels`'."""
    torch.set_num_threads(1)
    rows = []
    for algo in ALGORITHMS:
        workload, step = workload_step(algo)
        flops_per_episode = count_flops(lambda: step(0)) / workload.meta_batch  # noqa: B023
        seconds_per_episode = median_seconds(step, WORKLOAD_TIMING) / workload.meta_batch
        gflops = flops_per_episode / seconds_per_episode / 1e9
        rows.append(
            {
                "algo": algo,
                "gflop_per_episode": flops_per_episode / 1e9,
                "seconds_per_episode": seconds_per_episode,
                "gflops": gflops,
                "of_matmul": gflops / kernels["matmul"][1],
                "of_conv1d": gflops / kernels["conv1d"][1],
            }
        )
        print(f"   {algo}/cnn, 1 thread: {gflops:.1f} GFLOP/s", flush=True)
    return rows


def section(kernels: dict[int, dict[str, tuple[int, float]]], rows: list[dict], cores: int, load: tuple) -> str:
    workload, n = Workload("maml", "cnn"), MATMUL_SIZE
    (matmul_flops, _), (convolution_flops, _) = kernels[1]["matmul"], kernels[1]["conv1d"]
    in_channels, out_channels, width, length = CONVOLUTION_SHAPE
    kernel_rows = [f"| {t} | {k['matmul'][1]:.1f} | {k['conv1d'][1]:.1f} |" for t, k in kernels.items()]
    algorithm_rows = [
        f"| {r['algo']} | {r['gflop_per_episode']:.3f} | {1000 * r['seconds_per_episode']:.1f} | "
        f"{r['gflops']:.1f} | {100 * r['of_matmul']:.0f}% | {100 * r['of_conv1d']:.0f}% |"
        for r in rows
    ]
    return "\n".join(
        [
            "## Hardware: achieved GFLOP/s of the CNN workload vs the machine's (bench_hardware)",
            "",
            f"The machine: float32 `{n}x{n} @ {n}x{n}` matmul ({matmul_flops / 1e9:.3f} GFLOP; BLAS) and, for "
            f"the kernel the CNN runs, a forward Conv1d {in_channels} -> {out_channels} channels, width {width}, over "
            f"{CONVOLUTION_BATCH} sentences of {length} tokens ({convolution_flops / 1e9:.3f} GFLOP; oneDNN). FLOPs "
            f"counted by `torch.utils.flop_counter.FlopCounterMode` (a matmul: 2 n^3). {KERNEL_TIMING.describe('call')}"
            ", the GFLOP/s of the fastest window (the rate the hardware reaches: other load only lowers it). At 1 "
            f"torch thread and at one thread per core this process may use ({cores}).",
            "",
            "| torch threads | matmul GFLOP/s | conv1d GFLOP/s |",
            "|---|---|---|",
            *kernel_rows,
            "",
            f"The workload: each algorithm's YAML on the word CNN (`configs/backbone/cnn.yaml`), synthetic episodes as "
            f"in bench_algorithms ({workload.shape()}), the train loop's step with the Adam outer step, in this "
            "process. FLOPs per episode: one meta-training step under `FlopCounterMode` (forward and backward "
            "of adapt + meta-loss, the inner loop's gradients and, for second-order MAML, their backward "
            "included), divided by the meta-batch. Only matmuls and convolutions are counted (not embedding "
            "lookups, elementwise ops, pooling or the optimizer), so the achieved GFLOP/s is the rate of the "
            f"dense work, a lower bound of all the work. Time: {WORKLOAD_TIMING.describe()}, the median window, "
            "1 torch thread (as in the other sections; compared with the 1-thread peaks).",
            "",
            "| algorithm | GFLOP per episode | ms per episode | achieved GFLOP/s | of matmul | of conv1d |",
            "|---|---|---|---|---|---|",
            *algorithm_rows,
            "",
            f"Load average (1 min) {load[0]:.2f} before and {load[1]:.2f} after, on {os.cpu_count()} cores: where "
            "other jobs share the cores, the all-threads figures suffer most (each thread waits for the slowest).",
            "",
        ]
    )


def main() -> str:
    cores, load_before = available_cores(), os.getloadavg()[0]
    original_threads = torch.get_num_threads()
    try:
        kernels = {threads: kernel_gflops(threads) for threads in sorted({1, cores})}
        rows = workload_rows(kernels[1])
    finally:
        torch.set_num_threads(original_threads)
    return section(kernels, rows, cores, (load_before, os.getloadavg()[0]))


if __name__ == "__main__":
    print(main())
