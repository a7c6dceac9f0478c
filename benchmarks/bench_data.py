"""Loading + tokenizing a real dataset for the word CNN, with a cold and a warm token cache.

Needs METANLP_DATA_ROOT (the benchmark data); CLINC150 fold 01 has 22,500 examples.
"""

from __future__ import annotations

import os
import tempfile
import time

import torch
from hydra import compose, initialize_config_dir

from metanlp_cli import CONFIG_DIR
from metanlp_cli.components import encode_splits, load_dataset, training_texts
from metanlp_cli.config import build

DATASETS = ("clinc150", "banking77", "arsc")


def load_and_tokenize(dataset_name: str, cache_dir: str) -> tuple[float, int]:
    """Seconds to load the dataset, fit the CNN's word tokenizer and encode every split; examples."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3", job_name="bench_data"):
        cfg = compose("train", overrides=[f"dataset={dataset_name}", "backbone=cnn", f"paths.cache_dir={cache_dir}"])
    start = time.perf_counter()
    dataset = load_dataset(cfg)
    tokenizer = build(cfg.backbone.tokenizer, "backbone.tokenizer").fit(training_texts(dataset))
    splits, _ = encode_splits(tokenizer, dataset, ("train", "val", "test"), torch.device("cpu"), cache_dir)
    return time.perf_counter() - start, sum(len(split.labels) for split in splits.values())


def main() -> str:
    if not os.environ.get("METANLP_DATA_ROOT"):
        return "## Data loading\n\nSkipped: METANLP_DATA_ROOT is not set.\n"
    rows = ["| dataset | examples | cold cache (s) | warm cache (s) |", "|---|---|---|---|"]
    for name in DATASETS:
        with tempfile.TemporaryDirectory() as cache_dir:
            cold, examples = load_and_tokenize(name, cache_dir)
            warm, _ = load_and_tokenize(name, cache_dir)
        print(f"   {name}: {examples} examples, cold {cold:.2f}s, warm {warm:.2f}s", flush=True)
        rows.append(f"| {name} | {examples:,} | {cold:.2f} | {warm:.2f} |")
    return "\n".join(
        [
            "## Data loading",
            "",
            "Load + fit the word vocabulary + tokenize every split for `backbone=cnn`; cold = empty token "
            "cache, warm = the second run, reading the cached token tensors.",
            "",
            *rows,
            "",
        ]
    )
