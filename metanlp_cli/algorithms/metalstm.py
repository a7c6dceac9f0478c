"""The LSTM meta-learner of Ravi & Larochelle (2017): an LSTM whose cell state is the learner's
parameters, so that the cell update is a learned gradient step

    theta_t = f_t * theta_{t-1} - i_t * grad_t

with a learned forget gate f_t (a learned weight decay; 1 keeps theta) and input gate i_t (a
learned learning rate). As in the paper the meta-learner is shared across coordinates (each
adapted coordinate is one row of a batch), has a plain LSTM layer over the preprocessed gradient
and loss below the gates, learns the learner's initialisation theta_0, and treats the gradient
and loss inputs as constants (no second derivatives).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from metanlp_cli.algorithms.base import Algorithm, Classifier, LabelSpace, episode_outputs, first_head_rows
from metanlp_cli.algorithms.inner_loop import (
    FastWeights,
    InnerLoop,
    encoder_blocks,
    inner_loop_mode,
    module_forward,
    require_lr,
    select_parameters,
    support_gradients,
    support_subset,
    trainable_names,
)
from metanlp_cli.sampling import Batch

# (hidden, cell) of the input LSTM, then the previous forget and input gates: one row per coordinate.
State = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def preprocess(x: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """Andrychowicz et al. (2016), as Ravi & Larochelle use it: x -> (log|x| / p, sign x) when
    |x| >= e^-p, else (-1, e^p x). Keeps magnitudes spanning many orders in a small range."""
    large = x.abs() >= math.exp(-p)
    magnitude = torch.where(large, x.abs().clamp(min=math.exp(-p)).log() / p, -torch.ones_like(x))
    sign = torch.where(large, x.sign(), math.exp(p) * x)
    return torch.stack([magnitude, sign], dim=-1)


class MetaLSTMCell(nn.Module):
    """One step of the meta-learner for all coordinates at once.

    f_t = sigmoid(W_f [h_t, theta_{t-1}, f_{t-1}] + b_f), i_t = sigmoid(W_i [h_t, theta_{t-1}, i_{t-1}] + b_i),
    where h_t is the input LSTM's output for (preprocessed gradient, preprocessed loss).
    The gates start near `init_forget` and `init_lr` (small weights, biases at their logits).
    """

    def __init__(self, hidden_size: int = 20, init_lr: float = 0.1, init_forget: float = 0.999) -> None:
        super().__init__()
        if not (0 < init_lr < 1 and 0 < init_forget < 1):
            raise ValueError(f"init_lr={init_lr} and init_forget={init_forget} must be in (0, 1): they are gate values")
        self.input_lstm = nn.LSTMCell(4, hidden_size)
        self.forget_gate = nn.Linear(hidden_size + 2, 1)
        self.input_gate = nn.Linear(hidden_size + 2, 1)
        for gate, value in ((self.forget_gate, init_forget), (self.input_gate, init_lr)):
            nn.init.uniform_(gate.weight, -0.01, 0.01)
            nn.init.constant_(gate.bias, math.log(value / (1 - value)))

    def initial_state(self, theta: torch.Tensor) -> State:
        hidden = theta.new_zeros(theta.shape[0], self.input_lstm.hidden_size)
        gate = theta.new_zeros(theta.shape[0], 1)
        return hidden, hidden, gate, gate

    def forward(
        self, theta: torch.Tensor, gradient: torch.Tensor, loss: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, State]:
        """theta, gradient: [coordinates]; loss: a scalar. Returns the new theta and state."""
        hidden, cell, forget, input_ = state
        features = torch.cat([preprocess(gradient), preprocess(loss).expand(len(theta), 2)], dim=1)
        hidden, cell = self.input_lstm(features, (hidden, cell))
        column = theta.unsqueeze(1)
        forget = torch.sigmoid(self.forget_gate(torch.cat([hidden, column, forget], dim=1)))
        input_ = torch.sigmoid(self.input_gate(torch.cat([hidden, column, input_], dim=1)))
        theta = (forget * column - input_ * gradient.unsqueeze(1)).squeeze(1)
        return theta, (hidden, cell, forget, input_)


class MetaLSTM(Algorithm):
    """The learner is the classifier; the meta-learner (`MetaLSTMCell`) updates its `inner_params`.

    `inner_*.lr` must be null (the input gate is the learned rate; `init_lr` is its start).
    An N-way episode uses the head's first N rows.
    """

    def __init__(
        self,
        encoder: nn.Module,
        label_space: LabelSpace,
        hidden_size: int = 20,
        init_lr: float = 0.1,
        init_forget: float = 0.999,
        inner_params: str | Sequence[str] = "head",
        inner_frozen: Sequence[str] = ("encoder.embedding.*",),
        inner_train: InnerLoop = InnerLoop(steps=10, lr=None),
        inner_eval: InnerLoop = InnerLoop(steps=50, lr=None),
    ) -> None:
        super().__init__()
        require_lr(inner_train, "inner_train", learned=True)
        require_lr(inner_eval, "inner_eval", learned=True)
        self.model = Classifier(encoder, label_space.n_way)
        self.meta_learner = MetaLSTMCell(hidden_size, init_lr, init_forget)
        self.inner_train, self.inner_eval = inner_train, inner_eval
        self.adapted = select_parameters(
            trainable_names(self.model), inner_params, inner_frozen, encoder_blocks(encoder)
        )

    def adapt(self, support: Batch) -> FastWeights:
        outputs = episode_outputs(support, self.model.head.out_features)
        parameters = first_head_rows(dict(self.model.named_parameters()), outputs)
        shapes = [parameters[name].shape for name in self.adapted]
        theta = torch.cat([parameters[name].reshape(-1) for name in self.adapted])
        state = self.meta_learner.initial_state(theta)
        forward = module_forward(self.model)
        loop = self.inner_train if self.training else self.inner_eval
        with inner_loop_mode(self.model, loop):  # switches the learner, not this module: self.training holds
            for _ in range(loop.steps):
                parameters.update(unflatten(theta, self.adapted, shapes))
                batch = support_subset(support, loop.support_batch_size)
                loss, gradients = support_gradients(forward, parameters, batch, self.adapted, create_graph=False)
                gradient = torch.cat([g.reshape(-1) for g in gradients])
                with torch.set_grad_enabled(self.training):  # at evaluation no meta-gradient is needed
                    theta, state = self.meta_learner(theta, gradient, loss.detach(), state)
                if not self.training:
                    theta.requires_grad_()
        parameters.update(unflatten(theta, self.adapted, shapes))
        return FastWeights(forward, parameters)


def unflatten(flat: torch.Tensor, names: Sequence[str], shapes: Sequence[torch.Size]) -> dict[str, torch.Tensor]:
    pieces = torch.split(flat, [math.prod(shape) for shape in shapes])
    return {name: piece.view(shape) for name, piece, shape in zip(names, pieces, shapes, strict=True)}
