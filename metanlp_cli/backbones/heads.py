"""Classifier heads on top of an encoder's features: the cosine-similarity head of baseline++.

Chen et al. 2019 (A Closer Look at Few-shot Classification, baseline++): the logit of class c is a scaled
cosine similarity, s * <f / |f|, w_c / |w_c|>, so that each row w_c acts as a class prototype and the
classifier is less sensitive to the norm of the features than a linear one. The scale s is fixed in the
paper (their code uses 2 for narrow features and 10 for wide ones); `learn_scale` makes it a parameter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEADS = ("linear", "cosine")


def cosine_logits(features: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """scale * cos(features_i, weight_c) for every row i and class c: [rows, classes]."""
    return scale * F.normalize(features, dim=-1) @ F.normalize(weight, dim=-1).T


class CosineHead(nn.Module):
    """`out_features` class rows scored by scaled cosine similarity (no bias). The scale is a parameter
    where `learn_scale`, else a buffer; both are in `state_dict()` under `scale`."""

    def __init__(self, in_features: int, out_features: int, scale: float = 10.0, learn_scale: bool = False) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale={scale} must be > 0")
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # as nn.Linear's rows
        if learn_scale:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        else:
            self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return cosine_logits(features, self.weight, self.scale)


def build_head(kind: str, in_features: int, out_features: int, scale: float, learn_scale: bool) -> nn.Module:
    """`linear` (nn.Linear) or `cosine` (CosineHead): what `algo.head` names."""
    if kind == "linear":
        return nn.Linear(in_features, out_features)
    if kind == "cosine":
        return CosineHead(in_features, out_features, scale, learn_scale)
    raise ValueError(f"head={kind!r} is not allowed; allowed: {', '.join(HEADS)}")
