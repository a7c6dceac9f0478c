"""The benchmark code must not rot: its workloads build from the real configs and train, its FLOP count
and memory measurement give the right kind of numbers, its sections and plot render. No timing asserts."""

from __future__ import annotations

import math

import pytest
import torch

from benchmarks import bench_algorithms, bench_hardware, bench_scaling
from benchmarks.workloads import (
    NUM_TRAIN_CLASSES,
    Timing,
    Workload,
    build_workload,
    measure,
    meta_train_step,
    synthetic_episodes,
)


def tiny(algo: str, backbone: str = "cnn", **shape) -> Workload:
    return Workload(algo, backbone, **{"n_way": 2, "k_shot": 1, "q_query": 2, "meta_batch": 2, "vocab": 30} | shape)


@pytest.mark.parametrize(
    "algo, backbone",
    [(algo, "cnn") for algo in bench_algorithms.algorithm_names()] + [("maml", "lstm"), ("maml", "transformer")],
)
def test_each_workload_builds_from_its_yaml_and_takes_a_training_step(algo, backbone):
    algo_module, optimizer, meta_batches = build_workload(tiny(algo, backbone, length=8))
    before = [p.detach().clone() for p in algo_module.parameters()]
    loss = meta_train_step(algo_module, optimizer, meta_batches[0])
    assert math.isfinite(loss)
    assert any(not torch.equal(a, p) for a, p in zip(before, algo_module.parameters(), strict=True))


def test_the_inner_steps_override_reaches_the_algorithm():
    algo, _, _ = build_workload(tiny("maml", inner_steps=1))
    assert algo.inner_train.steps == 1
    assert build_workload(tiny("fomaml", inner_steps=10))[0].inner_train.steps == 10


def test_synthetic_episodes_have_the_workload_shape_and_are_seeded():
    workload = tiny("protonet", n_way=3, k_shot=2, q_query=4, length=7)
    episode = synthetic_episodes(workload, 1)[0]
    assert episode.support.inputs.shape == (6, 7) and episode.query.inputs.shape == (12, 7)
    assert episode.support.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert 0 < episode.support.inputs.min() and episode.support.inputs.max() < workload.vocab  # no padding
    assert len(set(episode.support.classes.tolist())) == 3 and episode.support.classes.max() < NUM_TRAIN_CLASSES
    again = synthetic_episodes(workload, 1)[0]
    assert torch.equal(episode.query.inputs, again.query.inputs)


def test_flop_count_of_a_known_matmul():
    a, b = torch.randn(3, 4), torch.randn(4, 5)
    assert bench_hardware.count_flops(lambda: a @ b) == 2 * 3 * 4 * 5
    flops, gflops = bench_hardware.matmul_gflops(16, Timing(warmup=0, repeats=1, steps=1))
    assert flops == 2 * 16**3 and gflops > 0


def test_flop_count_of_the_reference_convolution():
    in_channels, out_channels, width, length = bench_hardware.CONVOLUTION_SHAPE
    flops, gflops = bench_hardware.convolution_gflops(2, Timing(warmup=0, repeats=1, steps=1))
    outputs = 2 * out_channels * (length - width + 1)  # sentences x filters x positions, each a dot product:
    assert flops == outputs * 2 * in_channels * width and gflops > 0  # a multiply and an add per weight


def test_flop_count_of_a_maml_step_includes_the_second_order_backward():
    counts = {}
    for algo in ("maml", "fomaml"):
        model, optimizer, meta_batches = build_workload(tiny(algo, inner_steps=1))
        counts[algo] = bench_hardware.count_flops(lambda: meta_train_step(model, optimizer, meta_batches[0]))  # noqa: B023
    assert counts["maml"] > counts["fomaml"] > 0


def test_measure_runs_a_workload_in_a_fresh_process():
    result = measure(tiny("protonet", length=8), Timing(warmup=1, repeats=1, steps=1))
    assert result["episodes_per_s"] > 0 and result["seconds_per_episode"] > 0
    if result["peak_training_mib"] is not None:  # Linux
        assert result["peak_training_mib"] >= 0 and result["resident_mib"] > 0


def fake_result(seconds: float) -> dict:
    return {"episodes_per_s": 1 / seconds, "seconds_per_episode": seconds, "resident_mib": 99, "peak_training_mib": 7}


def test_scaling_section_and_plot_render(tmp_path):
    workloads = [bench_scaling.steps_workload(a, s) for a in bench_scaling.STEP_ALGORITHMS for s in (1, 5, 10)]
    workloads += [bench_scaling.k_workload(a, k) for a in bench_scaling.K_ALGORITHMS for k in (1, 5, 10, 20)]
    results = {w: fake_result(0.001 * (i + 1)) for i, w in enumerate(dict.fromkeys(workloads))}
    bench_scaling.plot(results, tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").stat().st_size > 0
    text = bench_scaling.section(results, Timing(), tmp_path / "scaling.png")
    assert "| MAML | 1 ms, 7 MiB |" in text and "![" in text


def test_algorithm_section_has_a_row_per_algorithm():
    workloads = [Workload(a, b) for a in ("maml", "protonet") for b in bench_algorithms.BACKBONES]
    text = bench_algorithms.section({w: fake_result(0.5) for w in workloads}, Workload("maml", "cnn"), Timing())
    assert "| maml | 5 steps, second order, adapts all | 2.00 | 7 |" in text
    assert "| protonet | - |" in text


def test_the_adaptation_benchmark_composes_each_method_as_the_cli_does():
    from benchmarks import bench_adaptation

    configs = {name: bench_adaptation.compose_config(overrides) for name, overrides in bench_adaptation.METHODS.items()}
    frozen, whole, setfit = configs.values()
    assert frozen.algo.encoder_finetuning.layers == 0 and frozen.backbone.encoder.trainable_layers == 0
    assert whole.algo.encoder_finetuning.layers == "all" and whole.backbone.encoder.trainable_layers == "all"
    assert whole.trainer.steps == 0 and whole.dataset.name == "sst2"
    assert setfit.algo._target_.endswith("SetFit") and setfit.backbone.encoder.trainable_layers == "all"


def test_running_some_benchmarks_replaces_their_sections_and_keeps_the_others():
    from benchmarks.__main__ import merge

    previous = "# Benchmarks\n\nheader\n\n## A (bench_a)\n\nold a\n\n## B (bench_b)\n\nold b\n### sub\nmore b\n"
    merged = merge(previous, ["## B (bench_b)\n\nnew b\n", "## C (bench_c)\n\nnew c\n"])
    assert merged == ["## A (bench_a)\n\nold a\n", "## B (bench_b)\n\nnew b\n", "## C (bench_c)\n\nnew c\n"]
