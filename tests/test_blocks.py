"""Blocks: the skip path really adds the input; at zero init a residual block is the identity."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from gradhealth.errors import ConfigError
from gradhealth.models.blocks import (
    BasicBlock,
    Bottleneck,
    PlainBlock,
    PreActBlock,
    PreActBottleneck,
    ZeroPadShortcut,
    get_block,
    make_shortcut,
)
from gradhealth.models.mlp import MLPBlock, PreActMLPBlock

SHAPES = {0: (4, 8), 1: (4, 8, 6), 2: (4, 8, 6, 6)}
# dims=0 (Linear features): the MLP's blocks, with fc/norm names; dims 1 and 2: the convolution blocks
POST_ACTIVATION = {0: MLPBlock, 1: BasicBlock, 2: BasicBlock}


def _make(cls, in_ch, planes, dims, **kwargs):
    if dims == 0:
        return cls(in_ch, planes, **kwargs)
    return cls(in_ch, planes, dims=dims, **kwargs)


def _zero_branch(block: nn.Module) -> None:
    with torch.no_grad():
        block.branch_layers()[-1].weight.zero_()
        if block.branch_layers()[-1].bias is not None:
            block.branch_layers()[-1].bias.zero_()


@pytest.mark.parametrize("dims", [0, 1, 2])
@pytest.mark.parametrize("norm", ["none", "batch", "layer"])
def test_post_activation_block_with_zero_branch_gives_act_of_x(dims, norm):
    block = _make(POST_ACTIVATION[dims], 8, 8, dims, norm=norm, activation="tanh").eval()
    _zero_branch(block)
    x = torch.randn(SHAPES[dims])
    # with norm=batch in eval the zeroed layer's output normalizes to the norm's bias = 0
    assert torch.allclose(block(x), torch.tanh(x), atol=1e-6)


@pytest.mark.parametrize("cls, dims", [(PreActMLPBlock, 0), (PreActBlock, 1), (PreActBlock, 2),
                                        (PreActBottleneck, 1), (PreActBottleneck, 2)])
def test_preact_block_with_zero_branch_is_exactly_the_identity(cls, dims):
    planes = 2 if cls is PreActBottleneck else 8
    block = _make(cls, 8, planes, dims)
    _zero_branch(block)
    x = torch.randn(SHAPES[dims])
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("cls, planes", [(PreActMLPBlock, 8), (MLPBlock, 8)])
def test_jacobian_of_a_residual_block_at_zero_init_is_the_identity(cls, planes):
    block = cls(8, planes, norm="none", activation="relu", rezero=True)
    x = torch.rand(1, 8) + 0.1  # positive: the post-activation relu passes it unchanged
    jac = torch.autograd.functional.jacobian(lambda v: block(v), x).reshape(8, 8)
    assert torch.allclose(jac, torch.eye(8))
    assert block.gain.item() == 0


def test_plain_block_has_the_same_parameters_and_no_skip():
    torch.manual_seed(0)
    plain, residual = PlainBlock(8, 8, dims=1, norm="none"), BasicBlock(8, 8, dims=1, norm="none")
    residual.load_state_dict(plain.state_dict())
    x = torch.randn(3, 8, 5)
    assert torch.allclose(residual(x), torch.relu(plain.bn2(plain.conv2(plain.act1(plain.conv1(x)))) + x))
    assert torch.allclose(plain(x), torch.relu(plain.conv2(torch.relu(plain.conv1(x)))))


def test_zero_pad_shortcut_subsamples_and_pads_channels():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    y = ZeroPadShortcut(3, 5, stride=2, dims=2)(x)
    assert y.shape == (2, 5, 2, 2)
    assert torch.equal(y[:, :3], x[:, :, ::2, ::2])
    assert (y[:, 3:] == 0).all()
    assert not list(ZeroPadShortcut(3, 5, 2, 2).parameters())


@pytest.mark.parametrize("kind, params", [("zeropad", 0), ("projection", 8 * 16 + 2 * 16), ("auto", 8 * 16 + 2 * 16)])
def test_shortcut_when_shape_changes(kind, params):
    block = BasicBlock(8, 16, stride=2, dims=2, shortcut=kind)
    assert block(torch.randn(2, 8, 6, 6)).shape == (2, 16, 3, 3)
    assert sum(p.numel() for p in (block.downsample.parameters() if block.downsample else [])) == params


def test_identity_shortcut_refuses_a_shape_change():
    with pytest.raises(ConfigError, match="zeropad or projection"):
        BasicBlock(8, 16, stride=2, shortcut="identity")
    with pytest.raises(ConfigError, match="choose one of"):
        make_shortcut("option_c", 8, 8, 1, 2, "batch")


def test_bottleneck_expands_by_four_and_strides_on_the_3x3():
    block = Bottleneck(64, 16, stride=2)
    assert block.conv2.stride == (2, 2) and block.conv1.stride == (1, 1)
    assert block(torch.randn(2, 64, 8, 8)).shape == (2, 64, 4, 4)


def test_convolution_blocks_refuse_linear_features():
    with pytest.raises(ConfigError, match="MLPBlock"):
        BasicBlock(8, 8, dims=0)


def test_get_block_names():
    assert get_block("preact") is PreActBlock
    with pytest.raises(ConfigError, match="choose one of"):
        get_block("dense")


@pytest.mark.parametrize("alias", ["zero_pad", "zero-pad", "A"])
def test_shortcut_spellings_of_option_a_build_the_zero_pad_shortcut(alias):
    import gradhealth

    base = gradhealth.create_model("resnet20", shortcut="zeropad")
    model = gradhealth.create_model(f"resnet20:shortcut={alias}")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in base.parameters())
