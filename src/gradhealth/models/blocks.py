"""Plain and residual convolution blocks for Conv1d (dims=1) and Conv2d (dims=2) features.

Every block keeps its skip path in plain sight in ``forward`` (``identity = x ... out = out + identity``)
and uses torchvision's attribute names (conv1, bn1, ..., downsample), so an ImageNet ResNet built
from them has torchvision's state_dict keys. The MLP's blocks (fc1, norm1, ...) are in ``mlp.py``.

Shortcuts when the shape changes (He et al. 2015, section 4.2):
``zeropad`` (option A: subsample and pad channels with zeros, no parameters),
``projection`` (option B: a 1x1 convolution + norm), ``auto`` (projection only where needed),
``identity`` (refuse a shape change).
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradhealth.errors import ConfigError, unknown_name
from gradhealth.layers import create_act, create_norm

__all__ = [
    "SHORTCUTS",
    "make_weight_layer",
    "make_stem",
    "ZeroPadShortcut",
    "make_shortcut",
    "BasicBlock",
    "PlainBlock",
    "PreActBlock",
    "Bottleneck",
    "PreActBottleneck",
    "BLOCKS",
    "get_block",
]

SHORTCUTS = ("auto", "identity", "zeropad", "projection")


def make_weight_layer(dims: int, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1,
                      bias: bool = False) -> nn.Module:
    """One weight layer: Linear for dims=0, else a same-padded convolution."""
    if dims == 0:
        return nn.Linear(in_ch, out_ch, bias=bias)
    if dims not in (1, 2):
        raise ConfigError(f"dims must be 0 (Linear), 1 (Conv1d) or 2 (Conv2d), not {dims!r}.")
    conv = nn.Conv1d if dims == 1 else nn.Conv2d
    return conv(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, bias=bias)


def make_stem(count: int, layer: Callable[[int], nn.Module], norm: Callable[[], nn.Module],
              act: Callable[[], nn.Module], preact: bool, names: tuple[str, str]) -> nn.Sequential:
    """``count`` single weight layers before the blocks, named ``{names[0]}1``, ``{names[1]}1``, ``act1``, ...

    Each is followed by norm-act, except the last of a pre-activation net: its first block
    normalizes and activates its input itself.
    """
    parts: list[tuple[str, nn.Module]] = []
    for index in range(1, count + 1):
        parts.append((f"{names[0]}{index}", layer(index)))
        if not preact or index < count:
            parts += [(f"{names[1]}{index}", norm()), (f"act{index}", act())]
    return nn.Sequential(OrderedDict(parts))


class ZeroPadShortcut(nn.Module):
    """Option A of He et al. 2015: take every ``stride``-th position and append zero channels."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, dims: int):
        super().__init__()
        if out_ch < in_ch:
            raise ConfigError(f"a zero-pad shortcut cannot shrink {in_ch} channels to {out_ch}; use projection.")
        self.in_ch, self.out_ch, self.stride, self.dims = in_ch, out_ch, stride, dims

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1 and self.dims > 0:
            x = x[(slice(None), slice(None)) + (slice(None, None, self.stride),) * self.dims]
        extra = self.out_ch - self.in_ch
        if extra:
            # F.pad lists the last dimension first; the channel dimension comes after the spatial ones
            x = F.pad(x, (0, 0) * self.dims + (0, extra))
        return x

    def extra_repr(self) -> str:
        return f"{self.in_ch}->{self.out_ch}, stride={self.stride}"


# the spellings people use for the same shortcuts, and the CIFAR paper's option letters
_SHORTCUT_ALIASES = {"zero_pad": "zeropad", "zero-pad": "zeropad", "a": "zeropad", "b": "projection"}


def make_shortcut(kind: str, in_ch: int, out_ch: int, stride: int, dims: int, norm: str) -> nn.Module | None:
    """The skip path's module, or None where the skip is the identity."""
    kind = _SHORTCUT_ALIASES.get(str(kind).lower(), kind)
    if kind not in SHORTCUTS:
        raise unknown_name("shortcut", kind, SHORTCUTS)
    changes = in_ch != out_ch or (stride != 1 and dims > 0)
    if kind == "projection" or (kind == "auto" and changes):
        return nn.Sequential(
            make_weight_layer(dims, in_ch, out_ch, kernel=1, stride=stride, bias=norm == "none"),
            create_norm(norm, out_ch, dims),
        )
    if not changes:
        return None
    if kind == "identity":
        raise ConfigError(
            f"an identity shortcut cannot map {in_ch} channels at stride {stride} to {out_ch}; "
            "use shortcut=zeropad or projection."
        )
    return ZeroPadShortcut(in_ch, out_ch, stride, dims)


def _require_conv(block: type, dims: int) -> None:
    if dims not in (1, 2):
        raise ConfigError(f"{block.__name__} is a convolution block for dims 1 or 2, not {dims!r}; "
                          "an MLP's blocks are gradhealth.models.mlp.MLPBlock and PreActMLPBlock.")


class _Block(nn.Module):
    """What all blocks share: the residual switch, the ReZero switch, zero-init of the branch."""

    expansion = 1
    residual: bool
    rezero: bool

    def _setup_skip(self, residual: bool, rezero: bool) -> None:
        self.residual = residual
        # ReZero / SkipInit: a learned scalar on the branch, starting at 0 so the block starts as identity
        self.rezero = residual and rezero
        self.gain = nn.Parameter(torch.zeros(())) if self.rezero else None

    def branch_layers(self) -> list[nn.Module]:
        """The weight layers of the residual branch F, input to output (for Fixup)."""
        return [m for m in self.children() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]

    def _last_norm(self) -> nn.Module | None:
        return None

    @torch.no_grad()
    def zero_init_last(self) -> None:
        """Make F(x) = 0 at init: zero the last norm's scale, or the last layer if it has no norm."""
        norm = self._last_norm()
        if norm is not None and getattr(norm, "weight", None) is not None:
            nn.init.zeros_(norm.weight)
        else:
            nn.init.zeros_(self.branch_layers()[-1].weight)

    def extra_repr(self) -> str:
        return f"residual={self.residual}"


class BasicBlock(_Block):
    """Post-activation (v1) block: ``y = act(F(x) + shortcut(x))``, F = conv-norm-act-conv-norm."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        dims: int = 2,
        activation: str = "relu",
        norm: str = "batch",
        shortcut: str = "auto",
        residual: bool = True,
        rezero: bool = False,
        bias: bool | None = None,
    ):
        super().__init__()
        _require_conv(type(self), dims)
        bias = norm == "none" if bias is None else bias
        self.conv1 = make_weight_layer(dims, in_ch, out_ch, 3, stride, bias)
        self.bn1 = create_norm(norm, out_ch, dims)
        self.act1 = create_act(activation)
        self.conv2 = make_weight_layer(dims, out_ch, out_ch, 3, 1, bias)
        self.bn2 = create_norm(norm, out_ch, dims)
        self.downsample = make_shortcut(shortcut, in_ch, out_ch, stride, dims, norm) if residual else None
        self.act2 = create_act(activation)
        self._setup_skip(residual, rezero)

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        if self.rezero:
            out = self.gain * out
        if self.residual:
            out = out + identity
        return self.act2(out)

    def _last_norm(self) -> nn.Module | None:
        return self.bn2


class PlainBlock(BasicBlock):
    """The plain twin of BasicBlock: the same layers and names, no skip path."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, dims: int = 2, **kwargs):
        kwargs.pop("residual", None)
        kwargs.pop("rezero", None)
        super().__init__(in_ch, out_ch, stride, dims, residual=False, **kwargs)


class PreActBlock(_Block):
    """Pre-activation (v2) block, He et al. 2016: ``y = x + conv(act(norm(conv(act(norm(x))))))``.

    The identity path is untouched; a projection shortcut reads the pre-activated input,
    as in the paper's code, while a zero-pad shortcut reads x itself.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        dims: int = 2,
        activation: str = "relu",
        norm: str = "batch",
        shortcut: str = "auto",
        residual: bool = True,
        rezero: bool = False,
        bias: bool | None = None,
    ):
        super().__init__()
        _require_conv(type(self), dims)
        bias = norm == "none" if bias is None else bias
        self.bn1 = create_norm(norm, in_ch, dims)
        self.act1 = create_act(activation)
        self.conv1 = make_weight_layer(dims, in_ch, out_ch, 3, stride, bias)
        self.bn2 = create_norm(norm, out_ch, dims)
        self.act2 = create_act(activation)
        self.conv2 = make_weight_layer(dims, out_ch, out_ch, 3, 1, bias)
        self.downsample = make_shortcut(shortcut, in_ch, out_ch, stride, dims, norm) if residual else None
        self._setup_skip(residual, rezero)

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        pre = self.act1(self.bn1(x))
        if self.downsample is not None:
            identity = self.downsample(x if isinstance(self.downsample, ZeroPadShortcut) else pre)
        out = self.conv1(pre)
        out = self.conv2(self.act2(self.bn2(out)))
        if self.rezero:
            out = self.gain * out
        if self.residual:
            out = out + identity
        return out


class Bottleneck(_Block):
    """Post-activation bottleneck (1x1 reduce, 3x3, 1x1 expand x4), stride on the 3x3 as torchvision."""

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int = 1,
        dims: int = 2,
        activation: str = "relu",
        norm: str = "batch",
        shortcut: str = "auto",
        residual: bool = True,
        rezero: bool = False,
        bias: bool | None = None,
    ):
        super().__init__()
        _require_conv(type(self), dims)
        bias = norm == "none" if bias is None else bias
        out_ch = planes * self.expansion
        self.conv1 = make_weight_layer(dims, in_ch, planes, 1, 1, bias)
        self.bn1 = create_norm(norm, planes, dims)
        self.act1 = create_act(activation)
        self.conv2 = make_weight_layer(dims, planes, planes, 3, stride, bias)
        self.bn2 = create_norm(norm, planes, dims)
        self.act2 = create_act(activation)
        self.conv3 = make_weight_layer(dims, planes, out_ch, 1, 1, bias)
        self.bn3 = create_norm(norm, out_ch, dims)
        self.downsample = make_shortcut(shortcut, in_ch, out_ch, stride, dims, norm) if residual else None
        self.act3 = create_act(activation)
        self._setup_skip(residual, rezero)

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        if self.rezero:
            out = self.gain * out
        if self.residual:
            out = out + identity
        return self.act3(out)

    def _last_norm(self) -> nn.Module | None:
        return self.bn3


class PreActBottleneck(_Block):
    """Pre-activation (v2) bottleneck: norm-act-1x1, norm-act-3x3, norm-act-1x1, identity untouched."""

    expansion = 4

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int = 1,
        dims: int = 2,
        activation: str = "relu",
        norm: str = "batch",
        shortcut: str = "auto",
        residual: bool = True,
        rezero: bool = False,
        bias: bool | None = None,
    ):
        super().__init__()
        _require_conv(type(self), dims)
        bias = norm == "none" if bias is None else bias
        out_ch = planes * self.expansion
        self.bn1 = create_norm(norm, in_ch, dims)
        self.act1 = create_act(activation)
        self.conv1 = make_weight_layer(dims, in_ch, planes, 1, 1, bias)
        self.bn2 = create_norm(norm, planes, dims)
        self.act2 = create_act(activation)
        self.conv2 = make_weight_layer(dims, planes, planes, 3, stride, bias)
        self.bn3 = create_norm(norm, planes, dims)
        self.act3 = create_act(activation)
        self.conv3 = make_weight_layer(dims, planes, out_ch, 1, 1, bias)
        self.downsample = make_shortcut(shortcut, in_ch, out_ch, stride, dims, norm) if residual else None
        self._setup_skip(residual, rezero)

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        pre = self.act1(self.bn1(x))
        if self.downsample is not None:
            identity = self.downsample(x if isinstance(self.downsample, ZeroPadShortcut) else pre)
        out = self.conv1(pre)
        out = self.conv2(self.act2(self.bn2(out)))
        out = self.conv3(self.act3(self.bn3(out)))
        if self.rezero:
            out = self.gain * out
        if self.residual:
            out = out + identity
        return out


BLOCKS: dict[str, type[_Block]] = {
    "basic": BasicBlock,
    "preact": PreActBlock,
    "bottleneck": Bottleneck,
    "preact_bottleneck": PreActBottleneck,
}


def get_block(name: str) -> type[_Block]:
    """A block class by name: basic (v1), preact (v2), bottleneck, preact_bottleneck."""
    key = str(name).lower()
    if key not in BLOCKS:
        raise unknown_name("block", name, BLOCKS)
    return BLOCKS[key]


def iter_blocks(model: nn.Module) -> Iterator[_Block]:
    """Every block of a model, in definition order."""
    return (m for m in model.modules() if isinstance(m, _Block))
