"""L1/L2 penalties against hand sums; decay groups; L2 penalty == SGD weight decay, != decoupled decay with Adam."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradhealth
from gradhealth.errors import ConfigError
from gradhealth.remedies import L2_MODES, create_optimizer, l1_penalty, l2_penalty, param_groups_for_decay


class Tied(nn.Module):
    """Conv + BatchNorm + PReLU + a residual gain, and a decoder tied to the encoder."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.norm = nn.BatchNorm1d(4)
        self.act = nn.PReLU()
        self.gain = nn.Parameter(torch.tensor(0.3))
        self.encode = nn.Linear(4, 6)
        self.decode = nn.Linear(6, 4, bias=False)
        self.decode.weight = nn.Parameter(self.encode.weight.detach().t().contiguous())
        self.tied = nn.Linear(4, 6)
        self.tied.weight = self.encode.weight
        self.frozen = nn.Linear(6, 6)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        h = self.act(self.norm(self.conv(x))).mean(-1)
        return self.frozen(self.encode(h) + self.gain * self.tied(h))


def _weights(model):
    return [model.conv.weight, model.encode.weight, model.decode.weight, model.frozen.weight]


def test_penalties_equal_hand_sums_over_layer_weights_only():
    torch.manual_seed(0)
    model = Tied()
    weights = _weights(model)  # the tied weight counted once
    l1 = sum(float(w.detach().double().abs().sum()) for w in weights)
    l2 = sum(float(w.detach().double().pow(2).sum()) for w in weights)
    assert float(l1_penalty(model, 0.01).detach()) == pytest.approx(0.01 * l1, rel=1e-6)
    assert float(l2_penalty(model, 0.01).detach()) == pytest.approx(0.5 * 0.01 * l2, rel=1e-6)
    everything = list(model.parameters())
    assert float(l1_penalty(model, 1.0, include="all").detach()) == pytest.approx(
        sum(float(p.detach().double().abs().sum()) for p in everything), rel=1e-6)
    # a list of parameters is taken as given, each tensor once
    given = [model.encode.weight, model.tied.weight, model.gain]
    assert float(l2_penalty(given, 2.0).detach()) == pytest.approx(
        float(model.encode.weight.detach().pow(2).sum() + model.gain.detach() ** 2), rel=1e-6)


def test_penalty_gradients_are_weight_times_sign_and_weight_times_w():
    w = nn.Parameter(torch.tensor([[1.5, -2.0], [0.0, 3.0]]))
    layer = nn.Linear(2, 2)
    layer.weight = w
    (l1_penalty(layer, 0.1) + l2_penalty(layer, 0.2)).backward()
    torch.testing.assert_close(w.grad, 0.1 * torch.sign(w.detach()) + 0.2 * w.detach())
    assert layer.bias.grad is None


def test_decay_groups_split_weights_from_biases_norms_prelu_and_gains():
    model = Tied()
    decay, no_decay = param_groups_for_decay(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == ids([model.conv.weight, model.encode.weight, model.decode.weight])
    assert ids(no_decay["params"]) == ids([model.conv.bias, model.norm.weight, model.norm.bias, model.act.weight,
                                           model.gain, model.encode.bias, model.tied.bias])
    assert len(decay["params"]) == len(ids(decay["params"]))  # tied weight once
    assert not ids(decay["params"] + no_decay["params"]) & ids(model.frozen.parameters())
    torch.optim.SGD(param_groups_for_decay(model, 5e-4), lr=0.1)  # torch accepts the groups as they are


def test_decay_groups_of_a_residual_net_with_gains():
    model = gradhealth.create_model("mlp:depth=6,width=8,in_features=4,num_classes=2,residual=true,rezero=true")
    decay, no_decay = param_groups_for_decay(model, 1e-4)
    linears = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    assert {id(p) for p in decay["params"]} == {id(p) for p in linears}
    assert any(p.dim() == 0 for p in no_decay["params"])  # the residual gains
    assert all(p.dim() <= 1 for p in no_decay["params"])


def _data():
    torch.manual_seed(0)
    return torch.randn(16, 4), torch.randint(0, 3, (16,))


def _steps(opt_name, l2_mode, steps=3, **kw):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = _data()
    optimizer = create_optimizer(opt_name, model, lr=0.1, weight_decay=0.05, l2_mode=l2_mode, **kw)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if l2_mode == "penalty":
            loss = loss + l2_penalty(model, 0.05)
        loss.backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_weight_decay_equals_the_l2_penalty_in_the_loss(momentum):
    one_decay = _steps("sgd", "decoupled", steps=1, momentum=momentum)
    one_penalty = _steps("sgd", "penalty", steps=1, momentum=momentum)
    for a, b in zip(one_decay, one_penalty):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    for a, b in zip(_steps("sgd", "decoupled", momentum=momentum), _steps("sgd", "penalty", momentum=momentum)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_with_adam_the_l2_penalty_is_not_weight_decay():
    penalty = _steps("adam", "penalty")
    decoupled = _steps("adam", "decoupled")
    adamw = _steps("adamw", "decoupled")
    for a, b in zip(decoupled, adamw):
        torch.testing.assert_close(a, b)
    assert max(float((a - b).abs().max()) for a, b in zip(penalty, decoupled)) > 1e-4
    # the penalty is classic coupled L2: torch's Adam(weight_decay=wd) on the same weights
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    optimizer = torch.optim.Adam(param_groups_for_decay(model, 0.05), lr=0.1)
    x, y = _data()
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    for a, b in zip(penalty, model.parameters()):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "0.1"])
def test_bad_weights_are_refused(bad):
    model = Tied()
    with pytest.raises(ConfigError):
        l1_penalty(model, bad)
    with pytest.raises(ConfigError):
        l2_penalty(model, bad)
    with pytest.raises(ConfigError):
        param_groups_for_decay(model, bad)


def test_unknown_selection_is_refused():
    with pytest.raises(ConfigError, match="choose one of: all, weights"):
        l1_penalty(Tied(), 0.1, include="biases")
    assert L2_MODES == ("decoupled", "penalty")
