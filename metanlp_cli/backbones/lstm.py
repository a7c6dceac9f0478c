"""Bidirectional LSTM encoder with mean or max pooling over the non-padding positions."""

from __future__ import annotations

import torch
from torch import nn

from metanlp_cli.backbones.word_embeddings import embedding_rows, word_embedding


class BiLSTM(nn.Module):
    """Stacked bidirectional layers, each its own `nn.LSTM` (the same computation as one multi-layer
    `nn.LSTM` without inter-layer dropout) so that each is a block `algo.inner_params=top_K` can name."""

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 128,
        hidden_size: int = 128,
        num_layers: int = 1,
        pooling: str = "mean",
        dropout: float = 0.1,
        embedding_init: str | None = None,
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "max"):
            raise ValueError(f"backbone.encoder.pooling={pooling!r} is not allowed; allowed: mean, max")
        self.embedding = word_embedding(vocab_size, embedding_dim, embedding_init)
        self.vocab_size, self.embedding_init = vocab_size, embedding_init
        self.layers = nn.ModuleList(
            nn.LSTM(embedding_dim if i == 0 else 2 * hidden_size, hidden_size, batch_first=True, bidirectional=True)
            for i in range(num_layers)
        )
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.output_dim = 2 * hidden_size

    def layer_names(self) -> list[str]:
        """Blocks from input to output, for `algo.inner_params=top_K`."""
        return ["embedding"] + [f"layers.{i}" for i in range(len(self.layers))]

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids -> embeddings [batch, length, dim]; a pretrained tokenizer's packed ids via their rows."""
        if self.embedding_init is not None:
            token_ids = embedding_rows(token_ids, self.vocab_size)
        return self.embedding(token_ids)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        mask = (token_ids != 0).unsqueeze(-1)
        states = self.embed(token_ids)
        for layer in self.layers:
            states, _ = layer(states)
        if self.pooling == "mean":
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        else:
            pooled = states.masked_fill(~mask, float("-inf")).max(1).values
            pooled = torch.nan_to_num(pooled, neginf=0.0)
        return self.dropout(pooled)
