"""A small Transformer encoder trained from scratch, with attention written out so that
second-order gradients work on every device (fused attention kernels lack double backward)."""

from __future__ import annotations

import math

import torch
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(dim // self.heads)
        scores = scores.masked_fill(padding[:, None, None, :], float("-inf"))
        attended = scores.softmax(-1) @ v  # [batch, heads, length, head_dim]
        return self.out(attended.transpose(1, 2).reshape(batch, length, dim))


class EncoderLayer(nn.Module):
    """Pre-norm block: x + attention(norm(x)), then x + MLP(norm(x))."""

    def __init__(self, dim: int, heads: int, feedforward_dim: int, dropout: float) -> None:
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim)
        self.attention = SelfAttention(dim, heads)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, feedforward_dim), nn.GELU(), nn.Linear(feedforward_dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.attention_norm(x), padding))
        return x + self.dropout(self.mlp(self.mlp_norm(x)))


class TransformerEncoder(nn.Module):
    def __init__(
        self,
        vocab_size: int,
        dim: int = 128,
        heads: int = 4,
        layers: int = 2,
        feedforward_dim: int = 256,
        max_length: int = 512,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"backbone.encoder.dim={dim} must be divisible by heads={heads}")
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.position = nn.Embedding(max_length, dim)
        self.layers = nn.ModuleList(EncoderLayer(dim, heads, feedforward_dim, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.output_dim = dim

    def layer_names(self) -> list[str]:
        """Blocks from input to output, for `algo.inner_params=top_K`. The position table belongs to
        the embedding block and the final norm to the last layer (see `inner_loop.encoder_blocks`)."""
        return ["embedding"] + [f"layers.{i}" for i in range(len(self.layers))]

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        padding = token_ids == 0
        positions = torch.arange(token_ids.shape[1], device=token_ids.device)
        x = self.embedding(token_ids) + self.position(positions)
        for layer in self.layers:
            x = layer(x, padding)
        x = self.norm(x)
        keep = (~padding).unsqueeze(-1)
        return (x * keep).sum(1) / keep.sum(1).clamp(min=1)
