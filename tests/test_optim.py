"""Optimizers by name: the torch class and settings asked for, decay off biases/norms, bad values refused."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradhealth.errors import ConfigError
from gradhealth.remedies import OPTIMIZERS, create_optimizer, l2_penalty


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize(
    "name, cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)]
)
def test_each_name_builds_its_torch_optimizer(name, cls):
    optimizer = create_optimizer(name, _model(), lr=0.01)
    assert type(optimizer) is cls
    assert optimizer.param_groups[0]["lr"] == 0.01
    assert all(g["weight_decay"] == 0.0 for g in optimizer.param_groups)


def test_sgd_settings_reach_the_optimizer():
    optimizer = create_optimizer("sgd", _model(), lr=0.1, momentum=0.9, nesterov=True)
    group = optimizer.param_groups[0]
    assert (group["momentum"], group["nesterov"]) == (0.9, True)
    adam = create_optimizer("adamw", _model(), lr=1e-3, betas=(0.8, 0.99))
    assert adam.param_groups[0]["betas"] == (0.8, 0.99)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_weight_decay_skips_biases_and_norm_parameters(name):
    model = _model()
    optimizer = create_optimizer(name, model, lr=0.01, weight_decay=1e-4)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert len(no_decay["params"]) == 4  # two biases, the norm's weight and bias


def test_decoupled_adam_steps_as_adamw_and_sgd_decay_matches_torch():
    """``adam`` with decoupled decay is AdamW; both decay the weights by lr*wd even with zero gradient."""
    results = {}
    for name in ("adam", "adamw"):
        w = nn.Parameter(torch.ones(3))
        optimizer = create_optimizer(name, [{"params": [w], "weight_decay": 0.1}], lr=0.5)
        w.grad = torch.zeros(3)
        optimizer.step()
        results[name] = w.detach().clone()
    torch.testing.assert_close(results["adam"], results["adamw"])
    torch.testing.assert_close(results["adamw"], torch.full((3,), 1 - 0.5 * 0.1))


def test_penalty_mode_gives_the_optimizer_no_weight_decay():
    model = _model()
    optimizer = create_optimizer("adam", model, lr=0.01, weight_decay=0.1, l2_mode="penalty")
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["weight_decay"] == 0.0
    # the loop's side of the contract: with a zero data gradient the penalty alone moves the weights
    w = nn.Parameter(torch.ones(3))
    sgd = create_optimizer("sgd", [w], lr=0.5, weight_decay=0.1, l2_mode="penalty")
    l2_penalty([w], 0.1).backward()
    sgd.step()
    torch.testing.assert_close(w.detach(), torch.full((3,), 1 - 0.5 * 0.1))
    with pytest.raises(ConfigError, match="penalty"):
        create_optimizer("sgd", [{"params": list(model.parameters()), "weight_decay": 0.1}], lr=0.1, l2_mode="penalty")


@pytest.mark.parametrize(
    "name, kw, match",
    [
        ("sgd", {"lr": -0.1}, "learning rate"),
        ("sgd", {"lr": math.nan}, "learning rate"),
        ("adam", {"lr": math.inf}, "learning rate"),
        ("sgd", {"lr": 0.1, "momentum": 1.0}, "momentum"),
        ("sgd", {"lr": 0.1, "momentum": -0.1}, "momentum"),
        ("sgd", {"lr": 0.1, "momentum": math.nan}, "momentum"),
        ("sgd", {"lr": 0.1, "nesterov": True}, "nesterov"),
        ("adam", {"lr": 0.1, "momentum": 0.9}, "sgd"),
        ("adamw", {"lr": 0.1, "nesterov": True}, "sgd"),
        ("sgd", {"lr": 0.1, "betas": (0.9, 0.999)}, "betas"),
        ("adam", {"lr": 0.1, "betas": (0.9, 1.0)}, "beta2"),
        ("adam", {"lr": 0.1, "betas": (0.9,)}, "betas"),
        ("sgd", {"lr": 0.1, "weight_decay": -1e-4}, "weight_decay"),
        ("sgd", {"lr": 0.1, "weight_decay": math.nan}, "weight_decay"),
        ("sgd", {"lr": 0.1, "l2_mode": "coupled"}, "choose one of: decoupled, penalty"),
        ("rmsprop", {"lr": 0.1}, "choose one of: adam, adamw, sgd"),
    ],
)
def test_bad_values_are_refused_with_a_config_error(name, kw, match):
    with pytest.raises(ConfigError, match=match):
        create_optimizer(name, _model(), **kw)


def test_no_parameters_is_a_config_error():
    with pytest.raises(ConfigError, match="no parameters"):
        create_optimizer("sgd", [], lr=0.1)
    frozen = _model().requires_grad_(False)
    with pytest.raises(ConfigError, match="no parameters"):
        create_optimizer("adamw", frozen, lr=0.1, weight_decay=0.1)
