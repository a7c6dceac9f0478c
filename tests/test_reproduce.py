"""`make results` (reproduce/): every planned run composes from its preset, and the report's numbers
(paired differences, which side of a published number we are) are what they say."""

from __future__ import annotations

import pytest

from metanlp_cli import CONFIG_DIR
from metanlp_cli.config import build, check_arguments
from reproduce.__main__ import benchmark_section, paired_difference
from reproduce.plan import BENCHMARKS, METHODS, SIZES

ISSUE_PRESETS = {
    "huffpost_bao2020", "reuters_bao2020", "banking77_protaugment", "clinc150_protaugment",
    "arsc", "fewrel", "lmbff16_glue", "glue_lowres", "leopard",
}  # fmt: skip


def test_the_published_settings_have_presets():
    presets = {path.stem for path in (CONFIG_DIR / "experiment").glob("*.yaml")}
    assert ISSUE_PRESETS <= presets
    assert {b.train_preset or b.name for b in BENCHMARKS} <= presets
    for benchmark in BENCHMARKS:  # a tuple (a generator would be empty after the first read)
        assert isinstance(benchmark.published, tuple) and isinstance(benchmark.settings, tuple)


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("benchmark", BENCHMARKS, ids=lambda b: b.name)
def test_every_planned_run_composes_and_builds_its_protocol(benchmark, size, compose_config):
    for setting in benchmark.settings:
        for key in benchmark.methods:
            overrides = [
                f"experiment={benchmark.train_preset or benchmark.name}",
                *setting.overrides,
                *SIZES[size],
                *benchmark.size_overrides.get(size, ()),
                *METHODS[key].overrides,
            ]
            cfg = compose_config("train", overrides)
            assert cfg.trainer.steps == (0 if key == "linear_probe" else int(SIZES[size][0].split("=")[1]))
            build(cfg.protocol, "protocol")
            check_arguments(cfg.algo, "algo", {"encoder", "label_space"})
            if METHODS[key].baseline:
                assert cfg.backbone.encoder.trainable_layers == 0
    assert any(METHODS[key].baseline for key in benchmark.methods)


def record(method: str, setting: str, units: list[float]) -> dict:
    mean = sum(units) / len(units)
    return {
        "benchmark": "b", "setting": setting, "method": method, "run_dir": f"runs/{method}",
        "command": "metanlp ...", "train_command": "metanlp ...",
        "score": {"mean": mean, "ci95": 0.01}, "paired_units": units, "cells": {setting: f"{100 * mean:.2f}"},
    }  # fmt: skip


def test_the_report_pairs_episodes_and_says_which_side_of_the_published_number_we_are():
    frozen = record("frozen", "1-shot", [0.5, 0.6, 0.7, 0.8])
    trained = record("protonet", "1-shot", [0.6, 0.65, 0.8, 0.9])  # +0.1, +0.05, +0.1, +0.1
    difference = paired_difference(trained, frozen)
    assert difference["mean"] == pytest.approx(0.0875)
    # Student t (3 degrees of freedom) * the sample std of the differences / sqrt(4)
    assert difference["ci95"] == pytest.approx(3.182446 * 0.025 / 2, rel=1e-5)

    benchmark = next(b for b in BENCHMARKS if b.name == "huffpost_bao2020")  # published 43.0 (1-shot)
    text = "\n".join(benchmark_section(benchmark, [frozen, trained]))
    assert "| metanlp: " + METHODS["frozen"].description + " | 65.00 | not run |" in text
    assert "- 1-shot, protonet - frozen: +8.75 +/- 3.98 points: protonet beats the baseline" in text
    assert "ours 73.75 (protonet) vs DS-FSL (Bao et al.) 43.00: ours is higher by 30.75" in text
    assert "- 5-shot, DS-FSL (Bao et al.) 63.50: not run" in text

    worse = record("protonet", "1-shot", [0.4, 0.5, 0.6, 0.7])
    text = "\n".join(benchmark_section(benchmark, [frozen, worse]))
    assert "protonet is below the baseline" in text
