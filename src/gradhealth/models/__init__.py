"""Every network of the material, registered by name.

Importing a family's module registers its entries (at the bottom of each file, as timm does).
"""
from gradhealth.models._registry import (
    create_model,
    get_entry,
    list_models,
    model_options,
    register_model,
    resolve_spec,
)
from gradhealth.models.blocks import (
    BasicBlock,
    Bottleneck,
    PlainBlock,
    PreActBlock,
    PreActBottleneck,
    ZeroPadShortcut,
)
from gradhealth.models.convnet import ConvNet, convnet
from gradhealth.models.mlp import MLP, MLPBlock, PreActMLPBlock, mlp
from gradhealth.models.recurrent import RecurrentNet, rnn
from gradhealth.models.resnet import IMAGENET_LAYERS, CifarResNet, ImageNetResNet, imagenet_block
from gradhealth.models.spec import split_spec
from gradhealth.models.transformer import Transformer, TransformerBlock, transformer

__all__ = [
    "create_model",
    "list_models",
    "register_model",
    "model_options",
    "get_entry",
    "resolve_spec",
    "split_spec",
    "BasicBlock",
    "PlainBlock",
    "PreActBlock",
    "Bottleneck",
    "PreActBottleneck",
    "ZeroPadShortcut",
    "MLPBlock",
    "PreActMLPBlock",
    "MLP",
    "ConvNet",
    "CifarResNet",
    "ImageNetResNet",
    "Transformer",
    "TransformerBlock",
    "RecurrentNet",
    "mlp",
    "convnet",
    "transformer",
    "rnn",
    "imagenet_block",
    "IMAGENET_LAYERS",
]
