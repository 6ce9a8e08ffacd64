"""Small real architectures for the tests: Hugging Face decoders built from a config, a ViT of
torch's own layers, a VGG-style plain CNN."""
from __future__ import annotations

import pytest
import torch
from torch import nn


def tiny_decoder(kind: str, tied: bool, layers: int = 2) -> nn.Module:
    """A Llama, Mistral or Qwen2 causal LM of Hugging Face built small from its config."""
    transformers = pytest.importorskip("transformers")
    config_class, model_class = {"llama": ("LlamaConfig", "LlamaForCausalLM"),
                                 "mistral": ("MistralConfig", "MistralForCausalLM"),
                                 "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}[kind]
    config = getattr(transformers, config_class)(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, tie_word_embeddings=tied)
    model = getattr(transformers, model_class)(config)
    model.train()
    return model


class TorchViT(nn.Module):
    """A ViT as many write it: a Conv2d patch embedding, a learned class token and position embedding
    owned by the model itself, ``nn.TransformerEncoderLayer`` blocks, a linear head."""

    def __init__(self, dim: int = 16, depth: int = 2, classes: int = 5, activation: str | nn.Module = "gelu"):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, dim, 4, 4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, 2, 2 * dim, dropout=0.0, activation=activation, batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.encoder(x))[:, 0])


def vgg(widths=(4, 8, 8), classes: int = 5) -> nn.Sequential:
    """VGG's shape: stages of conv-BN-ReLU twice, then a max-pool; no skip path anywhere."""
    stages, cin = [], 3
    for width in widths:
        layers = []
        for i in range(2):
            layers += [nn.Conv2d(cin if i == 0 else width, width, 3, padding=1), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
        stages.append(nn.Sequential(*layers, nn.MaxPool2d(2)))
        cin = width
    return nn.Sequential(*stages, nn.Flatten(), nn.Linear(widths[-1] * 2 * 2, classes))
