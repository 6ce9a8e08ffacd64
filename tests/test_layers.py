"""Activations, norms and init schemes by name: every name builds, every bad name is refused."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import gradhealth
from gradhealth.errors import ConfigError
from gradhealth.layers import ACTIVATIONS, INIT_SCHEMES, NORMS, apply_init, create_act, create_norm, parse_init
from gradhealth.layers.activations import rule_for_module
from gradhealth.layers.init import weight_layers


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_every_activation_builds_and_knows_its_rule(name):
    module = create_act(name)
    assert isinstance(module, nn.Module)
    out = module(torch.linspace(-3, 3, 7).reshape(1, 7))
    assert out.shape == (1, 7)
    if name != "identity":
        assert rule_for_module(module).name == name


def test_saturation_rules_match_the_derivative_definition():
    x = torch.linspace(-12, 12, 2001)
    for name, fn in (("sigmoid", torch.sigmoid), ("tanh", torch.tanh), ("elu", nn.functional.elu)):
        xi = x.clone().requires_grad_(True)
        fn(xi).sum().backward()
        deriv = xi.grad.abs()
        expected = deriv < 0.01 * deriv.max()
        rule = ACTIVATIONS[name]
        got = rule.saturated(create_act(name), x, fn(x))
        # the two may differ only at the boundary sample where float rounding decides
        assert (got != expected).sum() <= 2


def test_leaky_relu_with_default_slope_never_saturates_but_prelu_with_tiny_slope_does():
    x = torch.tensor([[-1.0, 2.0]])
    leaky = create_act("leaky_relu")
    assert not ACTIVATIONS["leaky_relu"].saturated(leaky, x, leaky(x)).any()
    prelu = create_act("prelu", init=0.001)
    assert ACTIVATIONS["prelu"].saturated(prelu, x, prelu(x)).tolist() == [[True, False]]


@pytest.mark.parametrize("bad", ["sigmod", "", "softmaxx"])
def test_unknown_activation_lists_the_choices(bad):
    with pytest.raises(ConfigError, match="choose one of: .*sigmoid"):
        create_act(bad)


@pytest.mark.parametrize("name", NORMS)
@pytest.mark.parametrize("dims, shape", [(0, (4, 8)), (1, (4, 8, 5)), (2, (4, 8, 5, 5))])
def test_every_norm_builds_in_every_dimension(name, dims, shape):
    norm = create_norm(name, 8, dims)
    with torch.no_grad():
        out = norm(torch.randn(shape))
    assert out.shape == shape
    if name != "none":
        # normalization: each example (layer/group) or each channel (batch) has ~zero mean
        assert abs(float(out.mean())) < 1e-5


def test_norm_errors():
    with pytest.raises(ConfigError, match="choose one of"):
        create_norm("instance", 8)
    with pytest.raises(ConfigError, match="divides"):
        create_norm("group", 8, 2, groups=3)
    with pytest.raises(ConfigError, match="dims"):
        create_norm("batch", 8, 3)


def _mlp(activation="relu", **kw):
    return gradhealth.create_model("mlp", depth=6, width=256, in_features=256, activation=activation, **kw)


@pytest.mark.parametrize("scheme", [s for s in INIT_SCHEMES if s not in ("lsuv", "fixup")])
def test_every_init_scheme_builds(scheme):
    model = apply_init(_mlp(), scheme)
    for layer in weight_layers(model):
        assert torch.isfinite(layer.weight).all()
        if scheme != "default" and layer.bias is not None:
            assert (layer.bias == 0).all()


def test_init_scales_match_their_definitions():
    model = apply_init(_mlp(), "constant(5)")
    assert (model.head.weight == 5).all()
    model = apply_init(_mlp(), "normal(0.02)")
    assert float(model.blocks[0].fc1.weight.detach().std()) == pytest.approx(0.02, rel=0.05)
    model = apply_init(_mlp(), "he")  # relu: std = sqrt(2 / fan_in)
    assert float(model.blocks[0].fc1.weight.detach().std()) == pytest.approx(math.sqrt(2 / 256), rel=0.05)
    model = apply_init(_mlp("tanh"), "xavier_normal")  # std = sqrt(2 / (fan_in + fan_out))
    assert float(model.blocks[0].fc1.weight.detach().std()) == pytest.approx(math.sqrt(2 / 512), rel=0.05)
    model = apply_init(_mlp(), "orthogonal(1)")
    w = model.blocks[0].fc1.weight
    assert torch.allclose(w @ w.T, torch.eye(256), atol=1e-4)
    model = apply_init(_mlp("leaky_relu"), "kaiming_uniform")  # bound = gain * sqrt(3 / fan_in)
    gain = math.sqrt(2 / (1 + 0.01**2))
    assert float(model.blocks[0].fc1.weight.detach().abs().max()) <= gain * math.sqrt(3 / 256) + 1e-6


def test_lsuv_gives_unit_variance_outputs_and_needs_data():
    torch.manual_seed(0)
    model = gradhealth.create_model("mlp:depth=8,width=64,activation=tanh")
    data = torch.randn(512, 64)
    with pytest.raises(ConfigError, match="batch"):
        apply_init(model, "lsuv")
    apply_init(model, "lsuv", data=data)
    outputs = []
    hooks = [layer.register_forward_hook(lambda m, i, o: outputs.append(o.var().item())) for layer in weight_layers(model)]
    model(data)
    for h in hooks:
        h.remove()
    assert all(abs(v - 1) < 0.15 for v in outputs)


def test_fixup_zeroes_the_last_branch_layer_and_the_head_and_scales_the_rest():
    model = gradhealth.create_model("mlp:depth=10,width=64,residual=true", init="fixup")
    for block in model.blocks:
        assert (block.fc2.weight == 0).all()
    assert (model.head.weight == 0).all()
    he_std = math.sqrt(2 / 64)
    num_blocks = len(model.blocks)  # m = 2 layers per branch: scale L^(-1/2)
    assert float(model.blocks[0].fc1.weight.detach().std()) == pytest.approx(he_std * num_blocks**-0.5, rel=0.1)
    with pytest.raises(ConfigError, match="residual"):
        gradhealth.create_model("mlp:depth=10,width=64,residual=false", init="fixup")


def test_zero_init_last_zeroes_the_last_norm_scale():
    model = gradhealth.create_model("resnet20", zero_init_last=True)
    assert all((b.bn2.weight == 0).all() for b in model.layer1)
    model = gradhealth.create_model("mlp:depth=6,residual=true", init="he", zero_init_last=True)
    assert all((b.fc2.weight == 0).all() for b in model.blocks)


@pytest.mark.parametrize("spec, expected", [
    ("he", ("kaiming_normal", None)), ("constant(5)", ("constant", 5.0)), ("normal( 0.5 )", ("normal", 0.5)),
    ("xavier", ("xavier_uniform", None)), ("Glorot_Normal", ("xavier_normal", None)),
])
def test_parse_init(spec, expected):
    assert parse_init(spec) == expected


@pytest.mark.parametrize("bad, message", [
    ("hee", "choose one of"), ("normal(abc)", "not a number"), ("normal(-1)", "positive"),
    ("normal(1)(2)", "cannot read"), ("constant(nan)", "finite"),
])
def test_bad_init_specs(bad, message):
    with pytest.raises(ConfigError, match=message):
        parse_init(bad)
