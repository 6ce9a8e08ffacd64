"""Plain and residual twins at any depth: MLPs (dims=0) and Conv1d/Conv2d nets (dims=1, 2).

``depth`` counts weight layers: a stem layer, blocks of two layers, the classifier head.
``residual=False`` gives the plain twin: the very same layers and parameter names, no skip path,
so any difference between the twins is the skip connection alone.
"""
from __future__ import annotations

from torch import Tensor, nn

from gradhealth.errors import ConfigError
from gradhealth.layers import create_act, create_norm
from gradhealth.validate import require_positive
from gradhealth.models.blocks import PreActBlock, get_block, make_layer

__all__ = ["TwinNet", "mlp", "convnet"]

_TWIN_BLOCKS = ("basic", "preact")


class TwinNet(nn.Module):
    """stem -> blocks -> (final norm-act for pre-activation) -> pool -> head."""

    def __init__(
        self,
        dims: int = 0,
        in_features: int = 64,
        num_classes: int = 10,
        depth: int = 10,
        width: int = 64,
        activation: str = "relu",
        norm: str = "none",
        residual: bool = False,
        block: str = "basic",
        shortcut: str = "auto",
        residual_gain: bool = False,
        bias: bool | None = None,
    ):
        super().__init__()
        require_positive(depth=depth, width=width, in_features=in_features, num_classes=num_classes)
        if block not in _TWIN_BLOCKS:
            raise ConfigError(f"block {block!r} is not for twin nets; choose one of: {', '.join(_TWIN_BLOCKS)}.")
        self.dims, self.depth, self.residual = dims, depth, residual
        block_cls = get_block(block)
        preact = block_cls is PreActBlock
        bias = norm == "none" if bias is None else bias
        pool = nn.Flatten(1) if dims == 0 else nn.Sequential(
            nn.AdaptiveAvgPool1d(1) if dims == 1 else nn.AdaptiveAvgPool2d(1), nn.Flatten(1)
        )
        # an MLP also accepts images: flatten first
        self.flatten = nn.Flatten(1) if dims == 0 else nn.Identity()
        if depth == 1:
            self.stem = nn.Identity()
            self.blocks = nn.Sequential()
            self.final = nn.Identity()
            self.pool = pool
            self.head = nn.Linear(in_features, num_classes)
            return
        num_blocks, odd = divmod(depth - 2, 2)
        stem: list[nn.Module] = [make_layer(dims, in_features, width, 3, 1, bias)]
        if not preact or odd:
            stem += [create_norm(norm, width, dims), create_act(activation)]
        if odd:  # depth - 2 is odd: one more single layer keeps the layer count exact
            stem += [make_layer(dims, width, width, 3, 1, bias)]
            if not preact:
                stem += [create_norm(norm, width, dims), create_act(activation)]
        self.stem = nn.Sequential(*stem)
        self.blocks = nn.Sequential(
            *[
                block_cls(width, width, 1, dims, activation=activation, norm=norm, shortcut=shortcut,
                          residual=residual, residual_gain=residual_gain, bias=bias)
                for _ in range(num_blocks)
            ]
        )
        # pre-activation blocks end on a weight layer: normalize and activate before the head (He et al. 2016)
        self.final = nn.Sequential(create_norm(norm, width, dims), create_act(activation)) if preact else nn.Identity()
        self.pool = pool
        self.head = nn.Linear(width, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem(self.flatten(x)))
        return self.head(self.pool(self.final(x)))


def mlp(
    in_features: int = 64,
    num_classes: int = 10,
    depth: int = 10,
    width: int = 64,
    activation: str = "relu",
    norm: str = "none",
    residual: bool = False,
    block: str = "basic",
    shortcut: str = "auto",
    residual_gain: bool = False,
) -> TwinNet:
    """MLP of ``depth`` Linear layers; ``residual=True`` adds a skip around every two layers."""
    return TwinNet(0, in_features, num_classes, depth, width, activation, norm, residual, block, shortcut,
                   residual_gain)


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
    residual_gain: bool = False,
) -> TwinNet:
    """Conv1d (dims=1) or Conv2d (dims=2) net of ``depth`` layers at constant width, global pooling."""
    if dims not in (1, 2):
        raise ConfigError(f"convnet dims must be 1 (Conv1d) or 2 (Conv2d), not {dims!r}.")
    return TwinNet(dims, in_chans, num_classes, depth, width, activation, norm, residual, block, shortcut,
                   residual_gain)
