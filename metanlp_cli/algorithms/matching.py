"""Matching Networks (Vinyals et al. 2016): a query's label distribution is the attention-weighted sum of
the support labels, y_hat = sum_i a(x, x_i) y_i, with a(x, x_i) = softmax_i(scale * cos(f(x), g(x_i))).

The learner's logits are log y_hat, so the shared cross-entropy is the paper's loss -log y_hat[label].
A regression episode uses the same attention over its support targets (a kernel regression).

Full-context embeddings (the paper's FCE, `full_context_embeddings=true`): g(x_i, S) = g'(x_i) plus
the forward and backward states of a bidirectional LSTM run over the support embeddings, and
f(x, S) = the state of an attention LSTM after `processing_steps` reads over g(S):
    h_hat_k, c_k = LSTM(f'(x), h_{k-1} + r_{k-1}, c_{k-1});  h_k = h_hat_k + f'(x);
    r_k = sum_i softmax_i(h_k . g(x_i)) g(x_i)
(the paper feeds the LSTM the concatenation [h_{k-1}, r_{k-1}], a state of twice the width; their sum
keeps one width).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metanlp_cli.algorithms.base import LabelSpace
from metanlp_cli.algorithms.metric_learner import FittedHead, MetricLearner, one_hot
from metanlp_cli.sampling import Batch


def attention(query: torch.Tensor, support: torch.Tensor, scale: float) -> torch.Tensor:
    """[queries, support examples]: scale * cosine similarity, before the softmax over the support."""
    return scale * F.normalize(query, dim=1) @ F.normalize(support, dim=1).T


def log_label_distribution(scores: torch.Tensor, labels: torch.Tensor, n_way: int) -> torch.Tensor:
    """log sum_i softmax_i(scores) [y_i = c] for every class c, as a log-sum-exp over each class's support
    examples minus one over all of them (exact where the softmax weights underflow)."""
    mask = one_hot(labels, n_way, scores.dtype).T.log()  # 0 where the example is of the class, else -inf
    return torch.logsumexp(scores.unsqueeze(1) + mask, dim=2) - torch.logsumexp(scores, dim=1, keepdim=True)


class FullContextEmbeddings(nn.Module):
    """g(x_i, S) by a bidirectional LSTM over the support embeddings, f(x, S) by an attention LSTM."""

    def __init__(self, dim: int, processing_steps: int) -> None:
        super().__init__()
        if processing_steps < 1:
            raise ValueError(f"processing_steps={processing_steps} must be >= 1")
        self.support_lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)
        self.query_lstm = nn.LSTMCell(dim, dim)
        self.processing_steps = processing_steps

    def support(self, features: torch.Tensor) -> torch.Tensor:
        states, _ = self.support_lstm(features.unsqueeze(0))
        forward, backward = states[0].chunk(2, dim=1)
        return features + forward + backward

    def query(self, features: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        hidden, cell = torch.zeros_like(features), torch.zeros_like(features)
        read = torch.zeros_like(features)
        for _ in range(self.processing_steps):
            hidden, cell = self.query_lstm(features, (hidden + read, cell))
            hidden = hidden + features
            read = (hidden @ support.T).softmax(dim=1) @ support
        return hidden


class MatchingHead(nn.Module):
    def __init__(self, dim: int, scale: float, full_context_embeddings: bool, processing_steps: int) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"scale={scale} must be > 0")
        self.scale = scale
        self.context = FullContextEmbeddings(dim, processing_steps) if full_context_embeddings else None

    def fit(self, features: torch.Tensor, support: Batch) -> FittedHead:
        embedded = features if self.context is None else self.context.support(features)
        labels, n_way = support.labels, len(support.classes)

        def head(queries: torch.Tensor) -> torch.Tensor:
            if self.context is not None:
                queries = self.context.query(queries, embedded)
            scores = attention(queries, embedded, self.scale)
            if support.is_regression:
                return (scores.softmax(dim=1) @ labels.to(scores.dtype)).unsqueeze(1)
            return log_label_distribution(scores, labels, n_way)

        return head


class Matching(MetricLearner):
    """`scale` multiplies the cosine similarities before the softmax (the paper's is 1: a softmax over
    values in [-1, 1] stays close to uniform); `full_context_embeddings` adds the paper's FCE LSTMs."""

    def __init__(
        self,
        encoder: nn.Module,
        label_space: LabelSpace,
        scale: float = 10.0,
        full_context_embeddings: bool = False,
        processing_steps: int = 3,
    ) -> None:
        super().__init__(encoder, MatchingHead(encoder.output_dim, scale, full_context_embeddings, processing_steps))
