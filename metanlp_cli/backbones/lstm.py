"""Bidirectional LSTM encoder with mean or max pooling over the non-padding positions."""

from __future__ import annotations

import torch
from torch import nn


class BiLSTM(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 128,
        hidden_size: int = 128,
        num_layers: int = 1,
        pooling: str = "mean",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if pooling not in ("mean", "max"):
            raise ValueError(f"backbone.encoder.pooling={pooling!r} is not allowed; allowed: mean, max")
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers=num_layers, batch_first=True, bidirectional=True)
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.output_dim = 2 * hidden_size

    def layer_names(self) -> list[str]:
        """Parameter-name prefixes of the blocks, bottom to top."""
        return ["embedding", "lstm"]

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        mask = (token_ids != 0).unsqueeze(-1)
        states, _ = self.lstm(self.embedding(token_ids))
        if self.pooling == "mean":
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        else:
            pooled = states.masked_fill(~mask, float("-inf")).max(1).values
            pooled = torch.nan_to_num(pooled, neginf=0.0)
        return self.dropout(pooled)
