"""MAML / FOMAML meta-training speed of metanlp's functional inner loop, against a reference that does
what learn2learn's MAML does, on one fixed synthetic workload.

Workload (comparable with other libraries): word-CNN (Kim 2014; embedding 128, filters 3/4/5 x 100),
vocabulary 10,000, sentences of 32 tokens, 5-way 5-shot 15-query episodes, 5 inner SGD steps,
meta-batch 4, Adam outer step included. "all" adapts every parameter in the inner loop (the
embedding table included); "default" is metanlp's default selection (the embedding table frozen in
the inner loop, still meta-trained).

The reference (learn2learn cannot be installed here: it needs torchvision) is written out below:
per task it clones the module tree with differentiable copies of the parameters, and after each
inner step puts the updated tensors into the clone's `_parameters` in place (module attribute
surgery), as learn2learn's `clone_module` / `update_module` do. Both compute the same meta-gradient
(checked before timing).
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.workloads import available_cores
from metanlp_cli.algorithms.base import LabelSpace
from metanlp_cli.algorithms.inner_loop import InnerLoop
from metanlp_cli.algorithms.maml import MAML
from metanlp_cli.backbones.cnn import WordCNN
from metanlp_cli.sampling import Batch, Episode

VOCAB, LENGTH, N_WAY, K_SHOT, Q_QUERY = 10_000, 32, 5, 5, 15
INNER_STEPS, INNER_LR, META_BATCH = 5, 0.1, 4
WARMUP, REPEATS, META_BATCHES_PER_REPEAT = 2, 5, 3


def synthetic_episodes(count: int, seed: int = 0) -> list[Episode]:
    generator = torch.Generator().manual_seed(seed)

    def batch(per_class: int) -> Batch:
        inputs = torch.randint(1, VOCAB, (N_WAY * per_class, LENGTH), generator=generator)
        return Batch(inputs, torch.arange(N_WAY).repeat_interleave(per_class), torch.arange(N_WAY))

    return [Episode(batch(K_SHOT), batch(Q_QUERY), tuple(map(str, range(N_WAY)))) for _ in range(count)]


def clone_module(module: nn.Module) -> nn.Module:
    """The module tree again, sharing code and buffers, with parameters replaced by differentiable clones."""
    clone = copy.copy(module)
    clone._parameters = {name: None if p is None else p.clone() for name, p in module._parameters.items()}
    clone._buffers = dict(module._buffers)
    clone._modules = {name: clone_module(child) for name, child in module._modules.items()}
    return clone


def update_module(module: nn.Module, updates: dict[int, torch.Tensor]) -> None:
    """Replace each parameter tensor p by p + update (keyed by id(p)), in place in the module tree."""
    for child in module.modules():
        for name, parameter in child._parameters.items():
            if parameter is not None and id(parameter) in updates:
                child._parameters[name] = parameter + updates[id(parameter)]


class ReferenceMAML:
    """learn2learn-style MAML over a shared classifier: clone per task, in-place module updates."""

    def __init__(self, model: nn.Module, first_order: bool) -> None:
        self.model, self.first_order = model, first_order

    def meta_loss(self, episode: Episode) -> torch.Tensor:
        learner = clone_module(self.model)
        support, query = episode.support, episode.query
        for _ in range(INNER_STEPS):
            parameters = list(learner.parameters())
            loss = F.cross_entropy(learner(support.inputs), support.labels)
            gradients = torch.autograd.grad(loss, parameters, create_graph=not self.first_order)
            update_module(learner, {id(p): -INNER_LR * g for p, g in zip(parameters, gradients, strict=True)})
        return F.cross_entropy(learner(query.inputs), query.labels)


def metanlp_maml(first_order: bool, adapted: str) -> MAML:
    torch.manual_seed(0)
    frozen = [] if adapted == "all" else ["encoder.embedding.*"]
    return MAML(
        WordCNN(VOCAB),
        LabelSpace(N_WAY, N_WAY),
        first_order=first_order,
        inner_params="all",
        inner_frozen=frozen,
        inner_train=InnerLoop(INNER_STEPS, INNER_LR),
    )


def step_function(name: str) -> tuple[nn.Module, Callable[[Episode], torch.Tensor]]:
    """(module holding the meta-parameters, episode -> meta-loss) for one benchmarked variant."""
    implementation, order, adapted = name.split("/")
    algo = metanlp_maml(order == "FOMAML", adapted)
    algo.train()
    if implementation == "metanlp":
        return algo, lambda episode: algo.meta_loss(algo.adapt(episode.support), episode.query)
    return algo, ReferenceMAML(algo.model, order == "FOMAML").meta_loss


def meta_gradient(name: str, episodes: list[Episode]) -> list[torch.Tensor]:
    module, meta_loss = step_function(name)
    module.double()  # float64: the two may round differently, the math must agree
    module.zero_grad()
    torch.manual_seed(1)  # the same dropout masks for both implementations
    for episode in episodes:
        (meta_loss(episode) / len(episodes)).backward()
    return [p.grad.clone() for p in module.parameters()]


def check_same_computation(episodes: list[Episode]) -> None:
    for order in ("MAML", "FOMAML"):
        ours, reference = (meta_gradient(f"{i}/{order}/all", episodes) for i in ("metanlp", "reference"))
        for a, b in zip(ours, reference, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def time_variants(names: list[str], episodes: list[Episode]) -> dict[str, float]:
    """Median episodes/s per variant; variants alternate within each repeat so drifting load hits all alike."""
    runs = {}
    for name in names:
        module, meta_loss = step_function(name)
        runs[name] = (torch.optim.Adam(module.parameters(), lr=1e-3), meta_loss)
    samples: dict[str, list[float]] = {name: [] for name in names}

    def meta_batches(name: str, count: int) -> None:
        optimizer, meta_loss = runs[name]
        for index in range(count):
            optimizer.zero_grad()
            for episode in episodes[index * META_BATCH : (index + 1) * META_BATCH]:
                (meta_loss(episode) / META_BATCH).backward()
            optimizer.step()

    for name in names:
        meta_batches(name, WARMUP)
    for _ in range(REPEATS):
        for name in names:
            started = time.perf_counter()
            meta_batches(name, META_BATCHES_PER_REPEAT)
            samples[name].append(META_BATCHES_PER_REPEAT * META_BATCH / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> str:
    episodes = synthetic_episodes(max(WARMUP, META_BATCHES_PER_REPEAT) * META_BATCH)
    check_same_computation(episodes[:2])
    names = [
        f"{implementation}/{order}/{adapted}"
        for order in ("MAML", "FOMAML")
        for implementation, adapted in (("metanlp", "all"), ("reference", "all"), ("metanlp", "default"))
    ]
    original_threads, cores = torch.get_num_threads(), available_cores()
    thread_counts = [t for t in (1, 2) if t <= cores]
    rows = []
    try:
        for threads in thread_counts:
            torch.set_num_threads(threads)
            print(f"   {threads} thread(s)", flush=True)
            speed = time_variants(names, episodes)
            for name in names:
                implementation, order, adapted = name.split("/")
                reference = speed[f"reference/{order}/all"]
                relative = f"{speed[name] / reference:.2f}x" if adapted == "all" else "-"
                rows.append(f"| {order} | {implementation} | {adapted} | {threads} | {speed[name]:.2f} | {relative} |")
    finally:
        torch.set_num_threads(original_threads)
    skipped = [t for t in (1, 2) if t > cores]
    lines = [
        "## Inner loop: MAML / FOMAML meta-training episodes/s",
        "",
        f"Word-CNN, vocabulary {VOCAB:,}, length {LENGTH}, {N_WAY}-way {K_SHOT}-shot {Q_QUERY}-query, "
        f"{INNER_STEPS} inner steps (lr {INNER_LR}), meta-batch {META_BATCH}, Adam outer step, CPU. "
        f"Median of {REPEATS} runs of {META_BATCHES_PER_REPEAT} meta-batches, variants interleaved. "
        "`reference` clones the module per task and updates it in place, as learn2learn's MAML does "
        "(same meta-gradient, checked). `all`: every parameter adapted; `default`: the embedding table "
        "frozen in the inner loop (metanlp's default).",
        "",
        "| algorithm | implementation | adapted | torch threads | episodes/s | vs reference |",
        "|---|---|---|---|---|---|",
        *rows,
    ]
    if skipped:
        lines += ["", f"Not run with {skipped} threads: only {cores} core(s) available to this process."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(main())
