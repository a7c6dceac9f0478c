"""Pretrained word embeddings for the word backbones (`backbone=cnn|lstm`, `backbone.embedding_init=minilm`):
the embedding table starts from a pretrained model's wordpiece embedding matrix, and the tokenizer is that
model's, so that a from-scratch model starts from pretrained word vectors as the published setups that start
from GloVe do.

The pretrained tokenizer's ids are packed (`pretrained.unpack`: 0 padding, 1 + token id, + segment x
vocabulary for the second text of a pair); the table has one row per token id plus row 0 for padding, and
a pair's two texts share the rows (the word backbones have no segment embedding).
"""

from __future__ import annotations

import torch
from torch import nn

from metanlp_cli.backbones.pretrained import PretrainedTokenizer, from_pretrained
from metanlp_cli.data.tokenize import WordTokenizer

KEY = "backbone.embedding_init"


def word_tokenizer(
    max_length: int = 64,
    lowercase: bool = True,
    min_count: int = 1,
    max_vocab_size: int | None = None,
    oov_buckets: int = 0,
    min_length: int = 5,
    pretrained: str | None = None,
) -> WordTokenizer | PretrainedTokenizer:
    """The word backbones' tokenizer: a `WordTokenizer` fitted on the meta-train texts, or, where the
    embeddings come from a pretrained model (`pretrained`, set from `backbone.embedding_init`), that
    model's own tokenizer (its vocabulary and casing; the other settings than `max_length` do not apply)."""
    if pretrained is None:
        return WordTokenizer(max_length, lowercase, min_count, max_vocab_size, oov_buckets, min_length)
    return PretrainedTokenizer(pretrained, max_length=max_length)


def pretrained_word_vectors(name_or_path: str) -> torch.Tensor:
    """The input (wordpiece) embedding matrix [vocabulary, dim] of a pretrained model."""
    from transformers import AutoModel

    model = from_pretrained(AutoModel, name_or_path, KEY, "model")
    return model.get_input_embeddings().weight.detach().clone()


def word_embedding(vocab_size: int, embedding_dim: int, embedding_init: str | None) -> nn.Embedding:
    """The word backbones' embedding table: random (row 0 the padding), or with `embedding_init` row 0 for
    padding and row 1 + i holding the pretrained model's embedding of token i."""
    if embedding_init is None:
        return nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
    vectors = pretrained_word_vectors(embedding_init)
    if vectors.shape[1] != embedding_dim:
        raise ValueError(
            f"backbone.encoder.embedding_dim={embedding_dim} but {KEY}={embedding_init!r} has "
            f"{vectors.shape[1]}-dimensional embeddings; set backbone.encoder.embedding_dim={vectors.shape[1]}"
        )
    if vectors.shape[0] < vocab_size:
        raise ValueError(
            f"the tokenizer has {vocab_size} ids but {KEY}={embedding_init!r} embeds {vectors.shape[0]}; "
            "the tokenizer must be that model's (backbone.tokenizer.pretrained follows backbone.embedding_init)"
        )
    embedding = nn.Embedding(vocab_size + 1, embedding_dim, padding_idx=0)
    with torch.no_grad():
        embedding.weight[0] = 0.0
        embedding.weight[1:] = vectors[:vocab_size]
    return embedding


def embedding_rows(packed: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Packed pretrained-tokenizer ids -> rows of `word_embedding`'s table: 0 for padding, 1 + token id."""
    return torch.where(packed == 0, 0, (packed - 1) % vocab_size + 1)
