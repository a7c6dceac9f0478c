import numpy as np
import pytest
import torch

from metanlp_cli.data.types import EncodedSplit
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.sampling import EpisodeSampler, concatenate_inputs
from tests.conftest import keyword_split


@pytest.fixture
def split():
    return keyword_split("train", range(0, 8), examples_per_class=20)


def rows_of(batch, split):
    """Map a batch's rows back to split row indices by matching token ids."""
    table = {tuple(row.tolist()): i for i, row in enumerate(split.inputs)}
    width = split.inputs.shape[1]
    padded = torch.nn.functional.pad(batch.inputs, (0, width - batch.inputs.shape[1]))
    return [table[tuple(row.tolist())] for row in padded]


def test_episode_shape_labels_and_classes(split):
    episode = EpisodeSampler(split, n_way=4, k_shot=3, q_query=5, seed=1).episode(0)
    assert episode.n_way == 4 and len(set(episode.class_names)) == 4
    assert episode.support.labels.tolist() == [c for c in range(4) for _ in range(3)]
    assert episode.query.labels.tolist() == [c for c in range(4) for _ in range(5)]
    # every row's true split label is the episode class its local label points to
    for batch in (episode.support, episode.query):
        true = split.labels[rows_of(batch, split)]
        assert torch.equal(true, batch.classes[batch.labels])


def test_support_and_query_never_share_an_example(split):
    sampler = EpisodeSampler(split, n_way=5, k_shot=5, q_query=10, seed=3)
    for index in range(20):
        episode = sampler.episode(index)
        support, query = rows_of(episode.support, split), rows_of(episode.query, split)
        assert len(set(support)) == len(support) and len(set(query)) == len(query)
        assert not set(support) & set(query)


def test_episode_is_a_pure_function_of_seed_and_index(split):
    a, b = EpisodeSampler(split, seed=7), EpisodeSampler(split, seed=7)
    for index in (0, 5, 99):
        assert torch.equal(a.episode(index).query.inputs, b.episode(index).query.inputs)
        assert a.episode(index).class_names == b.episode(index).class_names
    other = EpisodeSampler(split, seed=8)
    assert any(a.episode(i).class_names != other.episode(i).class_names for i in range(10))
    assert a.meta_batch(3, 2)[1].class_names == a.episode(7).class_names


def test_episodes_cover_classes_roughly_uniformly(split):
    sampler = EpisodeSampler(split, n_way=2, k_shot=1, q_query=1, seed=0)
    counts = np.zeros(8)
    for episode in sampler.episodes(800):
        for name in episode.class_names:
            counts[split.class_names.index(name)] += 1
    assert counts.min() > 0.7 * counts.mean()


def test_n_way_larger_than_classes_is_a_clear_error(split):
    with pytest.raises(MetaNLPError, match=r"sampler.n_way=9 .* only 8 classes"):
        EpisodeSampler(split, n_way=9)


def test_k_plus_q_larger_than_a_class_is_a_clear_error(split):
    with pytest.raises(MetaNLPError, match=r"k_shot \+ q_query = 25 .* only 20 examples"):
        EpisodeSampler(split, n_way=5, k_shot=5, q_query=20)


def task_split(sizes: list[int]):
    """A task collection's split: task i has two classes of sizes[i] examples each, distinct rows."""
    from metanlp_cli.data.types import EncodedSplit, LabeledTexts

    parts, row = [], 1
    for i, size in enumerate(sizes):
        labels = [0] * size + [1] * size
        texts = LabeledTexts([f"t{i}-{j}" for j in range(2 * size)], labels, ["a", "b"])
        inputs = torch.arange(row, row + 2 * size).unsqueeze(1).repeat(1, 5)
        parts.append((f"task{i}", texts, inputs))
        row += 2 * size
    return EncodedSplit.from_parts("train", parts, fixed_tasks=True)


@pytest.mark.parametrize(
    "task_weights, task_alpha, expected",
    [
        ("uniform", 0.5, [1 / 3, 1 / 3, 1 / 3]),
        ("proportional", 0.5, [10 / 160, 40 / 160, 110 / 160]),  # 2 classes x (5, 20, 55) examples
        ("mixture", 0.5, np.sqrt([10, 40, 110]) / np.sqrt([10, 40, 110]).sum()),
        ("mixture", 0.0, [1 / 3, 1 / 3, 1 / 3]),
    ],
)
def test_task_frequencies_match_the_weighting(task_weights, task_alpha, expected):
    split = task_split([5, 20, 55])
    sampler = EpisodeSampler(split, 2, 2, 2, seed=0, task_weights=task_weights, task_alpha=task_alpha)
    np.testing.assert_allclose(sampler.task_probabilities, expected)
    count = 3000
    tasks = [episode.class_names[0].split("/")[0] for episode in sampler.episodes(count)]
    frequencies = np.array([tasks.count(f"task{i}") for i in range(3)]) / count
    binomial_std = np.sqrt(np.asarray(expected) * (1 - np.asarray(expected)) / count)
    assert np.all(np.abs(frequencies - expected) < 4 * binomial_std), (frequencies, expected)


def test_weighted_task_episodes_are_fixed_by_the_seed():
    split = task_split([5, 20, 55])
    a, b, c = (EpisodeSampler(split, 2, 2, 2, seed=s, task_weights="mixture") for s in (3, 3, 4))
    for index in range(10):
        assert torch.equal(a.episode(index).support.inputs, b.episode(index).support.inputs)
    assert any(not torch.equal(a.episode(i).support.inputs, c.episode(i).support.inputs) for i in range(10))


def test_unknown_task_weighting_is_a_clear_error(split):
    with pytest.raises(MetaNLPError, match=r"sampler.task_weights='size'; allowed: uniform, proportional, mixture"):
        EpisodeSampler(split, task_weights="size")
    with pytest.raises(MetaNLPError, match=r"sampler.task_alpha=-1"):
        EpisodeSampler(split, task_weights="mixture", task_alpha=-1)


def test_concatenate_inputs_pads_token_ids_and_hidden_states_and_joins_features():
    a, b = torch.tensor([[5, 6, 0]]), torch.tensor([[7, 8, 9, 4, 0], [1, 0, 0, 0, 0]])
    assert concatenate_inputs([a, b]).tolist() == [[5, 6, 0, 0, 0], [7, 8, 9, 4, 0], [1, 0, 0, 0, 0]]
    hidden = [torch.ones(1, 2, 3), torch.full((2, 4, 3), 2.0)]  # [rows, length, hidden + mask channel]
    joined = concatenate_inputs(hidden)
    assert joined.shape == (3, 4, 3) and joined[0, 2:].abs().sum() == 0 and torch.equal(joined[1:], hidden[1])
    features = [torch.randn(2, 4), torch.randn(3, 4)]
    assert torch.equal(concatenate_inputs(features), torch.cat(features))


def imbalanced_split(negatives: int = 20, positives: int = 180):
    """One binary task (negative, positive), 10% / 90% of its rows, as an ARSC threshold task's train file."""
    labels = [0] * negatives + [1] * positives
    inputs = torch.arange(1, len(labels) + 1).unsqueeze(1).repeat(1, 3)
    return EncodedSplit.from_tensors("train", inputs, labels, ["negative", "positive"])


def test_declared_class_order_gives_every_episode_the_tasks_label_order(split):
    shuffled = EpisodeSampler(split, n_way=3, k_shot=1, q_query=1, seed=0)
    declared = EpisodeSampler(split, n_way=3, k_shot=1, q_query=1, seed=0, class_order="declared")
    for index in range(30):
        a, b = shuffled.episode(index), declared.episode(index)
        assert sorted(a.class_names) == list(b.class_names)  # the same classes, in the split's order
        assert b.support.classes.tolist() == sorted(b.support.classes.tolist())
    assert any(list(shuffled.episode(i).class_names) != sorted(shuffled.episode(i).class_names) for i in range(30))
    binary = imbalanced_split()
    for episode in EpisodeSampler(binary, n_way=2, k_shot=2, q_query=2, seed=1, class_order="declared").episodes(20):
        assert episode.class_names == ("negative", "positive")


def test_natural_queries_follow_the_tasks_label_mix_and_supports_stay_balanced():
    split = imbalanced_split()
    sampler = EpisodeSampler(split, n_way=2, k_shot=5, q_query=10, seed=0, class_order="declared", query="natural")
    positives = []
    for episode in sampler.episodes(300):
        assert episode.support.labels.tolist() == [0] * 5 + [1] * 5
        support, query = rows_of(episode.support, split), rows_of(episode.query, split)
        assert len(query) == 20 and len(set(query)) == 20 and not set(support) & set(query)
        for batch, rows in ((episode.support, support), (episode.query, query)):  # each local label is its class
            assert torch.equal(split.labels[rows], batch.classes[batch.labels])
        positives.append(episode.query.labels.float().mean().item())
    # the rows left after a support set are 15 negative and 175 positive: a query row is positive with p = 175/190
    expected, std = 175 / 190, np.sqrt(175 / 190 * 15 / 190 / (300 * 20))
    assert abs(np.mean(positives) - expected) < 4 * std, (np.mean(positives), expected)
    balanced = EpisodeSampler(split, n_way=2, k_shot=5, q_query=10, seed=0, class_order="declared")
    assert all(e.query.labels.float().mean().item() == 0.5 for e in balanced.episodes(20))


def test_unknown_class_order_or_query_distribution_is_a_clear_error(split):
    with pytest.raises(MetaNLPError, match=r"sampler.class_order='sorted'; allowed: shuffled, declared"):
        EpisodeSampler(split, class_order="sorted")
    with pytest.raises(MetaNLPError, match=r"protocol.query='prior'; allowed: balanced, natural"):
        EpisodeSampler(split, query="prior", key="protocol")
