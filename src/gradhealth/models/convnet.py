"""Plain and residual Conv1d / Conv2d nets at any depth and constant width, with global pooling.

``depth`` counts weight layers: one or two stem convolutions, blocks of two, the classifier head.
``residual=False`` gives the plain twin: the very same layers and parameter names, no skip path.
The blocks are the ResNets' (``blocks.py``), so the names are torchvision's words: ``stem.conv1``,
``stem.bn1``, ``stem.act1``, ``blocks.0.conv1`` ... ``blocks.0.act2``, ``final_norm``, ``final_act``
(pre-activation nets), ``pool``, ``head``.
"""
from __future__ import annotations

from torch import Tensor, nn

from gradhealth.errors import ConfigError
from gradhealth.layers import create_act, create_norm
from gradhealth.models._registry import register_model
from gradhealth.validate import require_positive
from gradhealth.models.blocks import BasicBlock, PreActBlock, make_stem, make_weight_layer

__all__ = ["ConvNet", "convnet"]

_CONVNET_BLOCKS = {"basic": BasicBlock, "preact": PreActBlock}


class ConvNet(nn.Module):
    """stem -> blocks -> (final norm-act for pre-activation) -> global average pool -> head."""

    def __init__(
        self,
        in_chans: int = 1,
        dims: int = 2,
        num_classes: int = 10,
        depth: int = 10,
        width: int = 16,
        activation: str = "relu",
        norm: str = "batch",
        residual: bool = False,
        block: str = "basic",
        shortcut: str = "auto",
        rezero: bool = False,
        bias: bool | None = None,
    ):
        super().__init__()
        if dims not in (1, 2):
            raise ConfigError(f"convnet dims must be 1 (Conv1d) or 2 (Conv2d), not {dims!r}.")
        require_positive(depth=depth, width=width, in_chans=in_chans, num_classes=num_classes)
        if block not in _CONVNET_BLOCKS:
            raise ConfigError(f"block {block!r} is not for twin nets; choose one of: {', '.join(_CONVNET_BLOCKS)}.")
        self.dims, self.depth, self.residual = dims, depth, residual
        block_cls = _CONVNET_BLOCKS[block]
        preact = block_cls is PreActBlock
        bias = norm == "none" if bias is None else bias
        self.pool = nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1)
        if depth == 1:
            self.stem = nn.Identity()
            self.blocks = nn.Sequential()
            self.final_norm, self.final_act = nn.Identity(), nn.Identity()
            self.head = nn.Linear(in_chans, num_classes)
            return
        num_blocks, odd = divmod(depth - 2, 2)
        # depth - 2 odd: a second stem layer keeps the layer count exact
        self.stem = make_stem(1 + odd,
                              lambda i: make_weight_layer(dims, in_chans if i == 1 else width, width, 3, 1, bias),
                              lambda: create_norm(norm, width, dims), lambda: create_act(activation), preact,
                              ("conv", "bn"))
        self.blocks = nn.Sequential(*[
            block_cls(width, width, 1, dims, activation=activation, norm=norm, shortcut=shortcut,
                      residual=residual, rezero=rezero, bias=bias)
            for _ in range(num_blocks)
        ])
        # pre-activation blocks end on a weight layer: normalize and activate before the head (He et al. 2016)
        self.final_norm = create_norm(norm, width, dims) if preact else nn.Identity()
        self.final_act = create_act(activation) if preact else nn.Identity()
        self.head = nn.Linear(width, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem(x))
        x = self.pool(self.final_act(self.final_norm(x)))
        return self.head(x.flatten(1))


def convnet(
    in_chans: int = 1,
    dims: int = 2,
    num_classes: int = 10,
    depth: int = 10,
    width: int = 16,
    activation: str = "relu",
    norm: str = "batch",
    residual: bool = False,
    block: str = "basic",
    shortcut: str = "auto",
    rezero: bool = False,
) -> ConvNet:
    """Conv1d (dims=1) or Conv2d (dims=2) net of ``depth`` layers at constant width, global pooling."""
    return ConvNet(in_chans, dims, num_classes, depth, width, activation, norm, residual, block, shortcut, rezero)


register_model("convnet", convnet)
