"""Every registered model trains a step; counts match He et al. 2015 and torchvision exactly."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import gradhealth
from gradhealth.errors import ConfigError
from gradhealth.models import get_entry, list_models

TORCHVISION = json.loads((Path(__file__).parent / "data" / "torchvision_resnet_keys.json").read_text())

# He et al. 2015, Table 6 (CIFAR-10), in millions, as printed
CIFAR_TABLE6 = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85, "resnet110": 1.7,
                "resnet1202": 19.4}
# He et al. 2016 (identity mappings), Table 3: 1.7M and 10.2M
PREACT_CIFAR = {"preact_resnet164": 1.7, "preact_resnet1001": 10.3}

# Input for each family, at a small size; the huge ones are thinned (base_width) to stay fast
SMALL = {"resnet1202": {"base_width": 4}, "preact_resnet1001": {"base_width": 4},
         "transformer": {"depth": 2, "width": 16, "heads": 2}, "rnn": {"hidden": 8}, "lstm": {"hidden": 8},
         "gru": {"hidden": 8}}


def _input_for(name: str) -> torch.Tensor:
    entry = get_entry(name)
    builder = entry.builder.__name__
    if builder == "ImageNetResNet":
        return torch.randn(2, 3, 64, 64)
    if builder in ("CifarResNet", "cifar_resnet"):
        return torch.randn(2, 3, 32, 32)
    if name == "convnet":
        return torch.randn(2, 1, 12, 12)
    if builder in ("transformer", "rnn"):
        return torch.randint(0, 256, (2, 12))  # token ids
    return torch.randn(2, 64)


def _count(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_runs_forward_and_backward(name):
    torch.manual_seed(0)
    kwargs = dict(SMALL.get(name, {}))
    if get_entry(name).builder.__name__ == "ImageNetResNet":
        kwargs["num_classes"] = 10
    model = gradhealth.create_model(name, **kwargs)
    out = model(_input_for(name))
    if name == "transformer":  # a language model by default: next-token scores at every step
        assert out.shape == (2, 12, 256)
        F.cross_entropy(out.flatten(0, 1), torch.randint(0, 256, (24,))).backward()
    else:
        assert out.shape == (2, 10)
        F.cross_entropy(out, torch.tensor([1, 2])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"


@pytest.mark.parametrize("name, millions", {**CIFAR_TABLE6, **PREACT_CIFAR}.items())
def test_cifar_parameter_counts_match_the_papers(name, millions):
    assert round(_count(gradhealth.create_model(name)) / 1e6, 2 if millions < 1 else 1) == millions


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_plain_twins_have_exactly_the_parameters_of_their_resnet(depth):
    plain, residual = gradhealth.create_model(f"plain{depth}"), gradhealth.create_model(f"resnet{depth}")
    assert _count(plain) == _count(residual)
    assert plain.state_dict().keys() == residual.state_dict().keys()


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_imagenet_resnets_have_torchvisions_keys_shapes_and_counts(name):
    model = gradhealth.create_model(name)
    expected = TORCHVISION[name]
    assert _count(model) == expected["params"]
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == expected["state_dict"]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_a_checkpoint_with_torchvisions_keys_and_shapes_loads_strictly(name):
    # the fixture was read off torchvision 0.29.1's models; strict loading checks exactly keys and shapes
    state = {k: torch.full(shape, 0.5) for k, shape in TORCHVISION[name]["state_dict"]}
    state = {k: (v.long() if k.endswith("num_batches_tracked") else v) for k, v in state.items()}
    model = gradhealth.create_model(name)
    model.load_state_dict(state, strict=True)
    assert float(model.fc.weight[0, 0].detach()) == 0.5


def test_a_state_dict_in_torchvision_layout_loads_strictly_and_computes_the_same():
    torch.manual_seed(0)
    source = gradhealth.create_model("resnet18").eval()
    target = gradhealth.create_model("resnet18").eval()
    target.load_state_dict(source.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(source(x), target(x))


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 7, 30])
def test_twin_depth_counts_weight_layers(depth):
    for residual in (False, True):
        model = gradhealth.create_model("mlp", depth=depth, residual=residual)
        linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        assert len(linears) == depth
        assert model(torch.randn(2, 64)).shape == (2, 10)


@pytest.mark.parametrize("dims, shape", [(1, (2, 1, 40)), (2, (2, 1, 8, 8))])
@pytest.mark.parametrize("block", ["basic", "preact"])
def test_convnet_twins(dims, shape, block):
    plain = gradhealth.create_model("convnet", dims=dims, depth=8, block=block)
    residual = gradhealth.create_model("convnet", dims=dims, depth=8, block=block, residual=True)
    assert plain.state_dict().keys() == residual.state_dict().keys()
    assert residual(torch.randn(shape)).shape == (2, 10)


def test_residual_twin_differs_from_plain_only_by_the_skip():
    torch.manual_seed(0)
    plain = gradhealth.create_model("mlp:depth=6,width=16,residual=false")
    residual = gradhealth.create_model("mlp:depth=6,width=16,residual=true")
    residual.load_state_dict(plain.state_dict())
    for block in residual.blocks:
        block.residual = False
    x = torch.randn(3, 64)
    assert torch.equal(plain(x), residual(x))


def test_mlp_accepts_images_by_flattening():
    model = gradhealth.create_model("mlp", in_features=64)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize("kwargs, message", [
    ({"depth": 0}, "depth must be a positive integer"),
    ({"width": -3}, "width must be a positive integer"),
    ({"activation": "sigmod"}, "unknown activation 'sigmod'; choose one of"),
    ({"norm": "instance"}, "unknown normalization"),
    ({"block": "bottleneck"}, "not for twin nets"),
    ({"widht": 3}, "no option 'widht'; it accepts: in_features"),
])
def test_bad_builder_arguments_raise_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        gradhealth.create_model("mlp", **kwargs)


def test_cifar_depth_rule_and_unknown_model():
    with pytest.raises(ConfigError, match="6n\\+2"):
        gradhealth.create_model("cifar_resnet", depth=21)
    with pytest.raises(ConfigError, match="unknown model 'resnet21'; choose one of: .*resnet20"):
        gradhealth.create_model("resnet21")
    with pytest.raises(ConfigError, match="no option 'depth'"):
        gradhealth.create_model("resnet20", depth=56)


def test_registry_refuses_duplicates_and_registers_user_builders():
    with pytest.raises(ConfigError, match="already registered"):
        gradhealth.register_model("resnet20", lambda: torch.nn.Linear(1, 1))

    @gradhealth.register_model
    def tiny_test_net(width: int = 3):
        return torch.nn.Linear(width, 2)

    assert "tiny_test_net" in gradhealth.list_models("tiny*")
    assert gradhealth.create_model("tiny_test_net:width=5").in_features == 5


def test_an_init_named_twice_differently_is_an_error():
    with pytest.raises(ConfigError, match="names init=xavier and init=he was given as well"):
        gradhealth.create_model("mlp:depth=3,init=xavier", init="he")
    gradhealth.create_model("mlp:depth=3,init=he", init="he")  # the same one twice is fine

