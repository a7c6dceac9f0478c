"""Word CNN for sentence classification (Kim 2014): parallel filter widths, max over time."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metanlp_cli.backbones.word_embeddings import embedding_rows, word_embedding


class WordCNN(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int = 128,
        filter_sizes: list[int] = (3, 4, 5),
        num_filters: int = 100,
        dropout: float = 0.1,
        embedding_init: str | None = None,
    ) -> None:
        super().__init__()
        self.embedding = word_embedding(vocab_size, embedding_dim, embedding_init)
        self.vocab_size, self.embedding_init = vocab_size, embedding_init
        self.convolutions = nn.ModuleList(nn.Conv1d(embedding_dim, num_filters, width) for width in filter_sizes)
        self.dropout = nn.Dropout(dropout)
        self.output_dim = num_filters * len(filter_sizes)

    def layer_names(self) -> list[str]:
        """Blocks from input to output, for `algo.inner_params=top_K` (the filter widths run in parallel: one block)."""
        return ["embedding", "convolutions"]

    def embed(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Token ids -> embeddings [batch, length, dim]; a pretrained tokenizer's packed ids via their rows."""
        if self.embedding_init is not None:
            token_ids = embedding_rows(token_ids, self.vocab_size)
        return self.embedding(token_ids)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        widest = max(convolution.kernel_size[0] for convolution in self.convolutions)
        if token_ids.shape[1] < widest:  # a pretrained tokenizer does not pad short texts to the widest filter
            token_ids = F.pad(token_ids, (0, widest - token_ids.shape[1]))
        embedded = self.embed(token_ids).transpose(1, 2)  # [batch, dim, length]
        padding = (token_ids == 0).unsqueeze(1)
        pooled = []
        for convolution in self.convolutions:
            activations = torch.relu(convolution(embedded))
            # A window is padding if it starts on a padding token: mask it out of the max.
            masked = activations.masked_fill(padding[:, :, : activations.shape[2]], 0.0)
            pooled.append(masked.max(dim=2).values)
        return self.dropout(torch.cat(pooled, dim=1))
