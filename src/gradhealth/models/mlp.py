"""Plain and residual MLPs at any depth: the twins of the residual-connection material.

``depth`` counts Linear layers: one or two stem layers, blocks of two layers, the classifier head.
``residual=False`` gives the plain twin: the very same layers and parameter names, no skip path,
so any difference between the twins is the skip connection alone.

Layer names: ``stem.fc1``, ``stem.norm1``, ``stem.act1``, ``blocks.0.fc1`` ... ``blocks.0.act2``,
``final_norm``, ``final_act`` (pre-activation nets) and ``head``.
"""
from __future__ import annotations

from torch import Tensor, nn

from gradhealth.errors import ConfigError
from gradhealth.layers import create_act, create_norm
from gradhealth.models._registry import register_model
from gradhealth.validate import require_positive
from gradhealth.models.blocks import ZeroPadShortcut, _Block, make_shortcut, make_stem

__all__ = ["MLPBlock", "PreActMLPBlock", "MLP", "mlp"]


class MLPBlock(_Block):
    """Post-activation block of two Linear layers: ``y = act(F(x) + x)``, F = fc-norm-act-fc-norm."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str = "relu",
        norm: str = "none",
        shortcut: str = "auto",
        residual: bool = True,
        rezero: bool = False,
        bias: bool | None = None,
    ):
        super().__init__()
        bias = norm == "none" if bias is None else bias
        self.fc1 = nn.Linear(in_features, out_features, bias=bias)
        self.norm1 = create_norm(norm, out_features)
        self.act1 = create_act(activation)
        self.fc2 = nn.Linear(out_features, out_features, bias=bias)
        self.norm2 = create_norm(norm, out_features)
        self.downsample = make_shortcut(shortcut, in_features, out_features, 1, 0, norm) if residual else None
        self.act2 = create_act(activation)
        self._setup_skip(residual, rezero)

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.act1(self.norm1(self.fc1(x)))
        out = self.norm2(self.fc2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        if self.rezero:
            out = self.gain * out
        if self.residual:
            out = out + identity
        return self.act2(out)

    def _last_norm(self) -> nn.Module | None:
        return self.norm2


class PreActMLPBlock(_Block):
    """Pre-activation block (He et al. 2016): ``y = x + fc2(act(norm(fc1(act(norm(x))))))``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str = "relu",
        norm: str = "none",
        shortcut: str = "auto",
        residual: bool = True,
        rezero: bool = False,
        bias: bool | None = None,
    ):
        super().__init__()
        bias = norm == "none" if bias is None else bias
        self.norm1 = create_norm(norm, in_features)
        self.act1 = create_act(activation)
        self.fc1 = nn.Linear(in_features, out_features, bias=bias)
        self.norm2 = create_norm(norm, out_features)
        self.act2 = create_act(activation)
        self.fc2 = nn.Linear(out_features, out_features, bias=bias)
        self.downsample = make_shortcut(shortcut, in_features, out_features, 1, 0, norm) if residual else None
        self._setup_skip(residual, rezero)

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        pre = self.act1(self.norm1(x))
        if self.downsample is not None:
            # a projection reads the pre-activated input, as in the paper's code
            identity = self.downsample(x if isinstance(self.downsample, ZeroPadShortcut) else pre)
        out = self.fc1(pre)
        out = self.fc2(self.act2(self.norm2(out)))
        if self.rezero:
            out = self.gain * out
        if self.residual:
            out = out + identity
        return out


_MLP_BLOCKS = {"basic": MLPBlock, "preact": PreActMLPBlock}


class MLP(nn.Module):
    """flatten -> stem -> blocks -> (final norm-act for pre-activation) -> head."""

    def __init__(
        self,
        in_features: int = 64,
        num_classes: int = 10,
        depth: int = 10,
        width: int = 64,
        activation: str = "relu",
        norm: str = "none",
        residual: bool = False,
        block: str = "basic",
        shortcut: str = "auto",
        rezero: bool = False,
        bias: bool | None = None,
    ):
        super().__init__()
        require_positive(depth=depth, width=width, in_features=in_features, num_classes=num_classes)
        if block not in _MLP_BLOCKS:
            raise ConfigError(f"block {block!r} is not for twin nets; choose one of: {', '.join(_MLP_BLOCKS)}.")
        self.depth, self.residual = depth, residual
        block_cls = _MLP_BLOCKS[block]
        preact = block_cls is PreActMLPBlock
        bias = norm == "none" if bias is None else bias
        # an MLP also accepts images: flatten first
        self.flatten = nn.Flatten(1)
        if depth == 1:
            self.stem = nn.Identity()
            self.blocks = nn.Sequential()
            self.final_norm, self.final_act = nn.Identity(), nn.Identity()
            self.head = nn.Linear(in_features, num_classes)
            return
        num_blocks, odd = divmod(depth - 2, 2)
        # depth - 2 odd: a second stem layer keeps the layer count exact
        self.stem = make_stem(1 + odd, lambda i: nn.Linear(in_features if i == 1 else width, width, bias=bias),
                              lambda: create_norm(norm, width), lambda: create_act(activation), preact, ("fc", "norm"))
        self.blocks = nn.Sequential(*[
            block_cls(width, width, activation=activation, norm=norm, shortcut=shortcut, residual=residual,
                      rezero=rezero, bias=bias)
            for _ in range(num_blocks)
        ])
        # pre-activation blocks end on a weight layer: normalize and activate before the head (He et al. 2016)
        self.final_norm = create_norm(norm, width) if preact else nn.Identity()
        self.final_act = create_act(activation) if preact else nn.Identity()
        self.head = nn.Linear(width, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem(self.flatten(x)))
        return self.head(self.final_act(self.final_norm(x)))


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
    rezero: bool = False,
) -> MLP:
    """MLP of ``depth`` Linear layers; ``residual=True`` adds a skip around every two layers."""
    return MLP(in_features, num_classes, depth, width, activation, norm, residual, block, shortcut, rezero)


register_model("mlp", mlp)
