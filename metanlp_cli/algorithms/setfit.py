"""SetFit (Tunstall et al. 2022, Efficient Few-Shot Learning Without Prompts): contrastive fine-tuning of
the encoder on pairs drawn from the support set, then a logistic-regression head on the adapted embeddings.

Pairs: in each of `iterations` rounds, every support example is paired once with another example of its
class (target 1) and once with an example of another class (target 0), so a round gives 2N pairs for N
examples (the paper's R = 20 rounds). The loss is the mean squared error between the cosine similarity
of the two embeddings and the target (sentence-transformers' CosineSimilarityLoss, which SetFit uses).
The head is sklearn's `LogisticRegression` (L2, C = `logistic_c`) fitted on the adapted encoder's
support features, without dropout.

Meta-training is the fine-tuning baseline's (supervised over all meta-train classes), so any finetune,
multitask or setfit checkpoint can be adapted this way; the encoder is adapted on a copy of its weights
(see `adaptation`), which a pretrained backbone must train (`backbone.encoder.trainable_layers=all`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metanlp_cli.algorithms.adaptation import (
    AdaptedEncoderLearner,
    EncoderFineTuning,
    adamw,
    adapted_encoder_names,
    encode,
    encoder_copy,
    seeded,
    support_seed,
)
from metanlp_cli.algorithms.base import LabelSpace
from metanlp_cli.algorithms.finetune import FineTune, SupervisedLearner
from metanlp_cli.algorithms.inner_loop import Parameters, inner_loop_mode
from metanlp_cli.errors import MetaNLPError
from metanlp_cli.sampling import Batch

# SetFit's defaults (Tunstall et al. 2022; the setfit library's): 1 epoch over the pairs, 16 pairs a step,
# AdamW at 2e-5 on the whole body.
SETFIT_DEFAULTS = EncoderFineTuning(layers="all", lr=2e-5, epochs=1, batch_size=16, weight_decay=0.01)


def sentence_pairs(labels: torch.Tensor, iterations: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(left rows, right rows, targets) of 2 * iterations * len(labels) pairs in shuffled order (torch's
    generator): per round and example one positive partner (another example of its class, itself when it
    is its class's only one) with target 1, and one negative partner (of another class) with target 0."""
    count = len(labels)
    same = labels[:, None] == labels[None, :]
    if not (~same).any(1).all():
        raise MetaNLPError("algo=setfit needs at least 2 classes in a support set (negative pairs)")
    itself = torch.eye(count, dtype=torch.bool, device=labels.device)
    positive = same & ~itself
    positive = torch.where(positive.any(1, keepdim=True), positive, itself)
    rows = torch.arange(count, device=labels.device).repeat_interleave(iterations)
    partners = [
        torch.multinomial(candidates.float(), iterations, replacement=True).reshape(-1)
        for candidates in (positive, ~same)
    ]
    left = torch.cat([rows, rows])
    right = torch.cat(partners)
    targets = torch.cat([torch.ones(len(rows)), torch.zeros(len(rows))]).to(labels.device)
    order = torch.randperm(len(left), device=labels.device)
    return left[order], right[order], targets[order]


def cosine_similarity_loss(left: torch.Tensor, right: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """mean over pairs of (cos(u, v) - target)^2."""
    return (F.cosine_similarity(left, right, dim=-1) - targets).pow(2).mean()


def contrastive_fine_tune(
    encoder: nn.Module, support: Batch, iterations: int, config: EncoderFineTuning, key: str
) -> Parameters:
    """The encoder's adapted parameters after `config.epochs` passes over the support set's pairs, in
    mini-batches of `config.batch_size` pairs (each distinct sentence of a mini-batch encoded once)."""
    parameters = encoder_copy(encoder, adapted_encoder_names(encoder, config.layers, key))
    if not config.adapts_encoder or iterations == 0:
        return parameters
    optimizer = adamw(list(parameters.values()), config)
    with inner_loop_mode(encoder, config):
        for _ in range(config.epochs):
            left, right, targets = sentence_pairs(support.labels, iterations)
            for start in range(0, len(left), config.batch_size):
                pair = slice(start, start + config.batch_size)
                rows, positions = torch.unique(torch.cat([left[pair], right[pair]]), return_inverse=True)
                features = encode(encoder, parameters, support.inputs[rows])
                first, second = positions.split(len(positions) // 2)
                loss = cosine_similarity_loss(features[first], features[second], targets[pair].to(features.dtype))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return parameters


def fit_logistic_regression(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, c: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's LogisticRegression (lbfgs, L2 with inverse strength `c`) as a linear head [classes, dim]:
    a binary fit's one logit z becomes the logits (0, z), the same class probabilities."""
    from sklearn.linear_model import LogisticRegression

    fitted = LogisticRegression(C=c, max_iter=1000).fit(features.double().cpu().numpy(), labels.cpu().numpy())
    coefficients, intercepts = fitted.coef_, fitted.intercept_
    if len(fitted.classes_) == 2:
        coefficients = np.concatenate([np.zeros_like(coefficients), coefficients])
        intercepts = np.concatenate([np.zeros_like(intercepts), intercepts])
    weight = features.new_zeros(num_classes, features.shape[1])
    bias = features.new_full((num_classes,), float("-inf"))  # a class absent from the support set
    classes = torch.as_tensor(fitted.classes_, device=features.device)
    weight[classes] = torch.as_tensor(coefficients, dtype=features.dtype, device=features.device)
    bias[classes] = torch.as_tensor(intercepts, dtype=features.dtype, device=features.device)
    return weight, bias


class SetFit(FineTune):
    """Meta-training: the fine-tuning baseline's. Adaptation: `contrastive` fine-tuning of the encoder's
    layers on `iterations` rounds of support pairs (`contrastive.batch_size` pairs a step), then the
    logistic-regression head (`logistic_c`). Classification only."""

    def __init__(
        self,
        encoder: nn.Module,
        label_space: LabelSpace,
        iterations: int = 20,
        contrastive: EncoderFineTuning = SETFIT_DEFAULTS,
        logistic_c: float = 1.0,
        batch_episodes: bool = False,
    ) -> None:
        super().__init__(encoder, label_space, batch_episodes=batch_episodes)
        if iterations < 0:
            raise ValueError(f"iterations={iterations} must be >= 0")
        if logistic_c <= 0:
            raise ValueError(f"logistic_c={logistic_c} must be > 0")
        self.iterations, self.contrastive, self.logistic_c = iterations, contrastive, logistic_c

    def adapt(self, support: Batch) -> SupervisedLearner | AdaptedEncoderLearner:
        if self.training:
            return super().adapt(support)
        if support.is_regression:
            raise MetaNLPError(
                "algo=setfit has no regression path (its head is a logistic regression); use algo=finetune"
            )
        encoder = self.model.encoder
        with seeded(support_seed(support, self.contrastive.seed), support.labels.device):
            parameters = contrastive_fine_tune(
                encoder, support, self.iterations, self.contrastive, "algo.contrastive.layers"
            )
        with torch.no_grad():
            features = encode(encoder, parameters, support.inputs)
        weight, bias = fit_logistic_regression(features, support.labels, len(support.classes), self.logistic_c)
        return AdaptedEncoderLearner(encoder, parameters, lambda inputs: F.linear(inputs, weight, bias))
