"""ResNets of He et al.: CIFAR (6n+2 / 9n+2 layers, 16-32-64 channels) and ImageNet (18..152).

The ImageNet nets use torchvision's module names and layout (v1.5: stride on the 3x3 conv of a
bottleneck), so their state_dict keys and parameter counts equal torchvision's and its
checkpoints load with ``strict=True``. The CIFAR nets use option A (zero-pad) shortcuts, so a
plain twin (``residual=False``) has exactly the same parameters as its residual net.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from gradhealth.errors import ConfigError
from gradhealth.layers import create_act, create_norm
from gradhealth.models._registry import register_model
from gradhealth.validate import require_positive
from gradhealth.models.blocks import PreActBlock, PreActBottleneck, get_block

__all__ = ["CifarResNet", "ImageNetResNet", "make_stage", "imagenet_block", "IMAGENET_LAYERS"]

IMAGENET_LAYERS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


def make_stage(block_cls: type[nn.Module], in_ch: int, planes: int, count: int, stride: int, **block_kw) -> nn.Sequential:
    """``count`` blocks; the first changes stride/width, the rest keep the shape (timm's make_blocks)."""
    blocks = []
    for index in range(count):
        blocks.append(block_cls(in_ch, planes, stride if index == 0 else 1, **block_kw))
        in_ch = planes * block_cls.expansion
    return nn.Sequential(*blocks)


def _init_like_torchvision(model: nn.Module) -> None:
    # He init with fan_out for convolutions, unit scale for norms (torchvision's ResNet.__init__)
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) and module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class CifarResNet(nn.Module):
    """CIFAR ResNet of He et al. 2015 section 4.2: depth 6n+2 (basic) or 9n+2 (bottleneck)."""

    def __init__(
        self,
        depth: int = 20,
        block: str = "basic",
        residual: bool = True,
        shortcut: str = "zeropad",
        in_chans: int = 3,
        num_classes: int = 10,
        norm: str = "batch",
        activation: str = "relu",
        base_width: int = 16,
        rezero: bool = False,
    ):
        super().__init__()
        require_positive(depth=depth, in_chans=in_chans, num_classes=num_classes, base_width=base_width)
        block_cls = get_block(block)
        per_block = 3 if block_cls.expansion > 1 else 2
        if (depth - 2) % (3 * per_block) or depth < 2 + 3 * per_block:
            rule = "9n+2 (11, 20, 29, ..., 164, 1001)" if per_block == 3 else "6n+2 (8, 14, 20, 32, 44, 56, 110, 1202)"
            raise ConfigError(f"a CIFAR ResNet with {block} blocks has depth {rule}, not {depth}.")
        blocks_per_stage = (depth - 2) // (3 * per_block)
        preact = block_cls in (PreActBlock, PreActBottleneck)
        self.depth, self.residual = depth, residual
        kw = dict(dims=2, activation=activation, norm=norm, shortcut=shortcut, residual=residual,
                  rezero=rezero)

        self.conv1 = nn.Conv2d(in_chans, base_width, 3, padding=1, bias=False)
        # a pre-activation net normalizes inside its first block instead
        self.bn1 = nn.Identity() if preact else create_norm(norm, base_width, 2)
        self.act1 = nn.Identity() if preact else create_act(activation)
        in_ch = base_width
        for index, planes in enumerate((base_width, base_width * 2, base_width * 4)):
            stage = make_stage(block_cls, in_ch, planes, blocks_per_stage, 1 if index == 0 else 2, **kw)
            self.add_module(f"layer{index + 1}", stage)
            in_ch = planes * block_cls.expansion
        self.final_norm = create_norm(norm, in_ch, 2) if preact else nn.Identity()
        self.final_act = create_act(activation) if preact else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        _init_like_torchvision(self)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: Tensor) -> Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = self.avgpool(self.final_act(self.final_norm(x)))
        return self.fc(x.flatten(1))


class ImageNetResNet(nn.Module):
    """ImageNet ResNet in torchvision's layout (conv1 7x7/2, maxpool, layer1..layer4, fc)."""

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        block: str = "basic",
        residual: bool = True,
        shortcut: str = "auto",
        in_chans: int = 3,
        num_classes: int = 1000,
        norm: str = "batch",
        activation: str = "relu",
        base_width: int = 64,
        rezero: bool = False,
    ):
        super().__init__()
        layers = tuple(int(n) for n in layers)
        if len(layers) != 4 or any(n <= 0 for n in layers):
            raise ConfigError(f"an ImageNet ResNet needs four positive stage sizes, not {layers}.")
        require_positive(in_chans=in_chans, num_classes=num_classes, base_width=base_width)
        block_cls = get_block(block)
        preact = block_cls in (PreActBlock, PreActBottleneck)
        self.residual = residual
        kw = dict(dims=2, activation=activation, norm=norm, shortcut=shortcut, residual=residual,
                  rezero=rezero)

        self.conv1 = nn.Conv2d(in_chans, base_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = create_norm(norm, base_width, 2)
        self.act1 = create_act(activation)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_ch = base_width
        for index, count in enumerate(layers):
            planes = base_width * 2**index
            self.add_module(f"layer{index + 1}", make_stage(block_cls, in_ch, planes, count, 1 if index == 0 else 2, **kw))
            in_ch = planes * block_cls.expansion
        self.final_norm = create_norm(norm, in_ch, 2) if preact else nn.Identity()
        self.final_act = create_act(activation) if preact else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(in_ch, num_classes)
        _init_like_torchvision(self)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(self.final_act(self.final_norm(x)))
        return self.fc(x.flatten(1))


def imagenet_block(depth: int, preact: bool) -> str:
    """ResNet-18/34 use basic blocks, 50 and deeper bottlenecks."""
    kind = "basic" if depth < 50 else "bottleneck"
    return ("preact" if kind == "basic" else "preact_bottleneck") if preact else kind



register_model("cifar_resnet", CifarResNet)
register_model("imagenet_resnet", ImageNetResNet)
for _depth in (20, 32, 44, 56, 110, 1202):
    register_model(f"resnet{_depth}", CifarResNet, f"CIFAR ResNet-{_depth} (He et al. 2015, option A)", depth=_depth)
for _depth in (20, 32, 44, 56, 110):
    register_model(f"plain{_depth}", CifarResNet, f"CIFAR plain-{_depth}: ResNet-{_depth} without skips",
                   depth=_depth, residual=False)
for _depth in (20, 56, 110):
    register_model(f"preact_resnet{_depth}", CifarResNet, f"CIFAR pre-activation ResNet-{_depth} (He et al. 2016)",
                   depth=_depth, block="preact")
for _depth in (164, 1001):
    register_model(f"preact_resnet{_depth}", CifarResNet,
                   f"CIFAR pre-activation bottleneck ResNet-{_depth} (He et al. 2016)",
                   depth=_depth, block="preact_bottleneck", shortcut="auto")
for _depth, _layers in IMAGENET_LAYERS.items():
    register_model(f"resnet{_depth}", ImageNetResNet, f"ImageNet ResNet-{_depth} (torchvision layout)",
                   layers=_layers, block=imagenet_block(_depth, preact=False))
    register_model(f"preact_resnet{_depth}", ImageNetResNet, f"ImageNet pre-activation ResNet-{_depth}",
                   layers=_layers, block=imagenet_block(_depth, preact=True))
for _depth in (18, 34):
    register_model(f"plain{_depth}", ImageNetResNet, f"ImageNet plain-{_depth}: ResNet-{_depth} without skips",
                   layers=IMAGENET_LAYERS[_depth], block="basic", residual=False)
