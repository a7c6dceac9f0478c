"""Word CNN for sentence classification (Kim 2014): parallel filter widths, max over time."""

from __future__ import annotations

import torch
from torch import nn


class WordCNN(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 128,
        filter_sizes: list[int] = (3, 4, 5),
        num_filters: int = 100,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.convolutions = nn.ModuleList(nn.Conv1d(embedding_dim, num_filters, width) for width in filter_sizes)
        self.dropout = nn.Dropout(dropout)
        self.output_dim = num_filters * len(filter_sizes)

    def layer_names(self) -> list[str]:
        """Blocks from input to output, for `algo.inner_params=top_K` (the filter widths run in parallel: one block)."""
        return ["embedding", "convolutions"]

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        embedded = self.embedding(token_ids).transpose(1, 2)  # [batch, dim, length]
        padding = (token_ids == 0).unsqueeze(1)
        pooled = []
        for convolution in self.convolutions:
            activations = torch.relu(convolution(embedded))
            # A window is padding if it starts on a padding token: mask it out of the max.
            masked = activations.masked_fill(padding[:, :, : activations.shape[2]], 0.0)
            pooled.append(masked.max(dim=2).values)
        return self.dropout(torch.cat(pooled, dim=1))
