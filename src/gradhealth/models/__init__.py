"""Every network of the material, registered by name."""
from gradhealth.models._registry import create_model, get_entry, list_models, model_options, register_model
from gradhealth.models.blocks import (
    BasicBlock,
    Bottleneck,
    PlainBlock,
    PreActBlock,
    PreActBottleneck,
    ZeroPadShortcut,
)
from gradhealth.models.resnet import IMAGENET_LAYERS, CifarResNet, ImageNetResNet, imagenet_block
from gradhealth.models.spec import parse_spec
from gradhealth.models.twins import TwinNet, convnet, mlp

__all__ = [
    "create_model",
    "list_models",
    "register_model",
    "model_options",
    "get_entry",
    "parse_spec",
    "BasicBlock",
    "PlainBlock",
    "PreActBlock",
    "Bottleneck",
    "PreActBottleneck",
    "ZeroPadShortcut",
    "TwinNet",
    "mlp",
    "convnet",
    "CifarResNet",
    "ImageNetResNet",
    "IMAGENET_LAYERS",
    "imagenet_block",
]

register_model("mlp", mlp)
register_model("convnet", convnet)
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
