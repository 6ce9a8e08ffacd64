"""The zoo's architectures: small widths, each with the task it trains on and the names the labels use.

Every factory takes the options a breakage may change (``depth``, ``activation``, ``residual``) and
returns a model whose module names follow the ecosystem it comes from (a Hugging Face GPT-2 keeps
``transformer.h.K``, a Llama ``model.layers.K``). ``Architecture`` says, besides the factory, what
the model trains on, with which optimizer when healthy, where a NaN can be injected ("layer k") and
which modules feed its ReLUs (for a dead-ReLU breakage).

The split into a tuning half and a held-out half is by architecture (``half``): every case of an
architecture lies in the same half, and every family but the vision transformer (held out) has
members in both.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

TUNING, HELD_OUT = "tuning", "held-out"
VOCAB = 256
SEQ_LEN = 32
IN_FEATURES = 32
IMAGE = (3, 8, 8)
CLASSES = 10

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "gelu": nn.GELU,
}


def act(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


# ---- MLPs -----------------------------------------------------------------------------------------

class PlainMLP(nn.Module):
    """``layers.K = (Linear, activation)`` then a linear ``head``; He init for ReLU, Xavier otherwise."""

    def __init__(self, depth: int = 8, width: int = 64, activation: str = "relu", frozen: int = 0):
        super().__init__()
        dims = [IN_FEATURES] + [width] * depth
        self.layers = nn.Sequential(*[nn.Sequential(nn.Linear(dims[i], dims[i + 1]), act(activation))
                                      for i in range(depth)])
        self.head = nn.Linear(width, CLASSES)
        for block in self.layers:
            if activation == "relu":
                nn.init.kaiming_normal_(block[0].weight, nonlinearity="relu")
            else:
                nn.init.xavier_normal_(block[0].weight, gain=nn.init.calculate_gain(activation))
        # a frozen feature extractor: the first ``frozen`` layers are not trained
        for block in list(self.layers)[:frozen]:
            block.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layers(x))


class ResidualMLPBlock(nn.Module):
    """Pre-norm residual block ``x + fc2(act(fc1(norm(x))))``; ``residual=False`` drops the ``x +``."""

    def __init__(self, width: int, activation: str, residual: bool):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.act = act(activation)
        self.fc2 = nn.Linear(2 * width, width)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        out = self.fc2(self.act(self.fc1(self.norm(x))))
        return x + out if self.residual else out


class ResidualMLP(nn.Module):
    def __init__(self, depth: int = 6, width: int = 64, activation: str = "relu", residual: bool = True):
        super().__init__()
        self.stem = nn.Linear(IN_FEATURES, width)
        self.blocks = nn.Sequential(*[ResidualMLPBlock(width, activation, residual) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.blocks(self.stem(x))))


# ---- CNNs -----------------------------------------------------------------------------------------

class VGGNet(nn.Module):
    """VGG-style plain net without normalization: ``features.K = (Conv 3x3, activation)``, two
    max-pools, a linear classifier; He init like torchvision's VGG."""

    def __init__(self, depth: int = 8, width: int = 16, activation: str = "relu"):
        super().__init__()
        layers: list[nn.Module] = []
        ch = IMAGE[0]
        pools = {depth // 3, 2 * depth // 3}
        for k in range(depth):
            layers.append(nn.Sequential(nn.Conv2d(ch, width, 3, padding=1), act(activation)))
            ch = width
            if k in pools:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * (IMAGE[1] // 4) * (IMAGE[2] // 4), CLASSES)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                if activation == "relu":
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                else:
                    nn.init.xavier_normal_(m.weight, gain=nn.init.calculate_gain(activation))
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))


class BasicBlock(nn.Module):
    """torchvision's ``BasicBlock`` (``identity = x ... out += identity``); ``residual=False`` drops the skip."""

    def __init__(self, cin: int, cout: int, stride: int, residual: bool, activation: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = act(activation)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if residual and (stride != 1 or cin != cout):
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            if self.downsample is not None:
                identity = self.downsample(x)
            out = out + identity
        return self.relu(out)


class ResNet(nn.Module):
    """A CIFAR-style ResNet at 8x8: stem, ``layer1``/``layer2`` of ``blocks`` BasicBlocks, pool, ``fc``."""

    def __init__(self, blocks: int = 2, width: int = 16, residual: bool = True, activation: str = "relu"):
        super().__init__()
        self.conv1 = nn.Conv2d(IMAGE[0], width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = act(activation)
        self.layer1 = nn.Sequential(*[BasicBlock(width, width, 1, residual, activation) for _ in range(blocks)])
        self.layer2 = nn.Sequential(BasicBlock(width, 2 * width, 2, residual, activation),
                                    *[BasicBlock(2 * width, 2 * width, 1, residual, activation)
                                      for _ in range(blocks - 1)])
        self.fc = nn.Linear(2 * width, CLASSES)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(x.mean(dim=(2, 3)))


# ---- transformers -----------------------------------------------------------------------------------

class EncoderLayer(nn.TransformerEncoderLayer):
    """``nn.TransformerEncoderLayer`` whose residual sums can be taken out (``residual=False``)."""

    def __init__(self, *args: Any, residual: bool = True, **kw: Any):
        super().__init__(*args, **kw)
        self.residual = residual

    def forward(self, src: Tensor, src_mask: Tensor | None = None, src_key_padding_mask: Tensor | None = None,
                is_causal: bool = False) -> Tensor:
        if self.residual:
            return super().forward(src, src_mask, src_key_padding_mask, is_causal)
        x = src
        if self.norm_first:
            x = self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal=is_causal)
            return self._ff_block(self.norm2(x))
        x = self.norm1(self._sa_block(x, src_mask, src_key_padding_mask, is_causal=is_causal))
        return self.norm2(self._ff_block(x))


class EncoderLM(nn.Module):
    """Token and position embeddings, a causal ``nn.TransformerEncoder``, a linear head (byte-level LM)."""

    def __init__(self, depth: int = 4, width: int = 32, heads: int = 2, norm_first: bool = False,
                 residual: bool = True, activation: str = "relu"):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, width)
        self.pos = nn.Parameter(torch.randn(SEQ_LEN, width) * 0.02)
        layer = EncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=norm_first,
                             residual=residual, activation=activation)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = nn.Linear(width, VOCAB)

    def forward(self, idx: Tensor) -> Tensor:
        t = idx.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(t)
        return self.head(self.encoder(self.embed(idx) + self.pos[:t], mask=mask, is_causal=True))


class ViTBlock(nn.Module):
    """Pre-LN block with ``nn.MultiheadAttention``: ``x + attn(norm1(x))``, ``x + mlp(norm2(x))``."""

    def __init__(self, width: int, heads: int, residual: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        a = self.attn(h, h, h, need_weights=False)[0]
        x = x + a if self.residual else a
        m = self.mlp(self.norm2(x))
        return x + m if self.residual else m


class ViT(nn.Module):
    """A small vision transformer: 2x2 patches of an 8x8 image, a class token and position
    embedding owned by the model itself, ``blocks.K`` of ``ViTBlock``, the head on the class token."""

    def __init__(self, depth: int = 4, width: int = 32, heads: int = 2, residual: bool = True):
        super().__init__()
        self.patch_embed = nn.Conv2d(IMAGE[0], width, 2, 2)
        patches = (IMAGE[1] // 2) * (IMAGE[2] // 2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, patches + 1, width) * 0.02)
        self.blocks = nn.Sequential(*[ViTBlock(width, heads, residual) for _ in range(depth)])
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def gpt2(depth: int = 4, width: int = 64, initializer_range: float = 0.02) -> nn.Module:
    """Hugging Face GPT-2 from a config (Conv1D layers, ``wte`` tied to ``lm_head``), no weights downloaded."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=depth, n_embd=width, n_head=4, vocab_size=VOCAB, n_positions=SEQ_LEN,
                        bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        initializer_range=initializer_range)
    return GPT2LMHeadModel(config)


def llama(depth: int = 4, width: int = 64, initializer_range: float = 0.02) -> nn.Module:
    """Hugging Face Llama from a config: RMSNorm, SiLU-gated MLP, rotary attention, grouped KV heads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=depth,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=VOCAB,
                         max_position_embeddings=SEQ_LEN, initializer_range=initializer_range,
                         tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, pad_token_id=None)
    return LlamaForCausalLM(config)


# ---- recurrent --------------------------------------------------------------------------------------

class Recurrent(nn.Module):
    """``nn.RNN`` (tanh) / ``nn.LSTM`` / ``nn.GRU`` reading a sequence, a linear head on the last state.

    ``irnn``: the ReLU ``nn.RNN`` of Le et al. 2015, whose hidden-to-hidden weights start as the
    identity and biases at zero, so that the state (and the gradient through time) is carried unchanged.
    """

    def __init__(self, cell: str, hidden: int = 32):
        super().__init__()
        if cell == "irnn":
            self.rnn = nn.RNN(1, hidden, nonlinearity="relu", batch_first=True)
            with torch.no_grad():
                self.rnn.weight_hh_l0.copy_(torch.eye(hidden))
                self.rnn.bias_hh_l0.zero_()
                self.rnn.bias_ih_l0.zero_()
        else:
            self.rnn = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell](1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


# ---- the architectures as the cases see them ----------------------------------------------------------

@dataclass(frozen=True)
class Architecture:
    """One architecture of the zoo.

    ``build(**options)``: the model (options a breakage may set: depth, activation, residual,
    norm_first...). ``task``: ``vector``, ``image``, ``text`` or ``sequence``. ``optimizer``/``lr``:
    its healthy training. ``units(model)``: the names of its repeated units (blocks or layers) in
    forward order; a NaN is injected into the middle one, which its label then names.
    ``relu_inputs(model)``: the modules whose bias feeds a ReLU, with the names of those ReLUs (for
    a dead-ReLU breakage).
    """

    name: str
    family: str
    half: str
    description: str
    build: Callable[..., nn.Module]
    task: str
    optimizer: str
    lr: float
    units: Callable[[nn.Module], list[str]]
    relu_inputs: Callable[[nn.Module], list[tuple[nn.Module, str]]] | None = None
    # options every case of this architecture builds with, unless a breakage overrides them
    defaults: dict[str, Any] = field(default_factory=dict)
    # what the "init scale" breakage changes (default: Linear/Conv weights): each matrix with None
    # (multiplied by the gain) or its fan-in (redrawn from N(0, gain**2 / fan_in))
    init_targets: Callable[[nn.Module], list[tuple[Tensor, int | None]]] | None = None


def _seq_units(prefix: str) -> Callable[[nn.Module], list[str]]:
    def units(model: nn.Module) -> list[str]:
        return [f"{prefix}.{k}" for k in range(len(model.get_submodule(prefix)))]
    return units


def _vgg_units(model: nn.Module) -> list[str]:
    return [f"features.{k}" for k, m in enumerate(model.features) if isinstance(m, nn.Sequential)]


def _resnet_units(model: nn.Module) -> list[str]:
    return [f"{stage}.{k}" for stage in ("layer1", "layer2") for k in range(len(model.get_submodule(stage)))]


def _mlp_relus(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(block[0], f"layers.{k}.1") for k, block in enumerate(model.layers)]


def _vgg_relus(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m[0], f"features.{k}.1") for k, m in enumerate(model.features) if isinstance(m, nn.Sequential)]


def _resmlp_relus(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(b.fc1, f"blocks.{k}.act") for k, b in enumerate(model.blocks)]


def _resnet_relus(model: nn.Module) -> list[tuple[nn.Module, str]]:
    # BatchNorm's shift (beta) is the bias that feeds each block's first ReLU
    return [(model.get_submodule(f"{u}.bn1"), f"{u}.relu") for u in _resnet_units(model)]


def _recurrent_weights(model: nn.Module) -> list[tuple[Tensor, int | None]]:
    return [(p, None) for n, p in model.rnn.named_parameters() if n.startswith("weight_hh")]


def _lm_matrices(model: nn.Module) -> list[tuple[Tensor, int | None]]:
    # GPT-2 and Llama initialize N(0, 0.02), below the 1/sqrt(fan_in) that keeps the signal's scale at
    # width 64: their matrices are redrawn relative to fan-in so that "4x" means a gain of 4 per layer
    out = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            out.append((m.weight, m.weight.shape[1]))
        elif type(m).__name__ == "Conv1D":  # HF's Conv1D stores (in, out)
            out.append((m.weight, m.weight.shape[0]))
    return out


ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    # tuning half
    Architecture("mlp", "mlp", TUNING, "plain ReLU MLP, 8 x 64, He init", PlainMLP, "vector", "sgd", 0.05,
                 _seq_units("layers"), _mlp_relus),
    Architecture("vgg", "cnn", TUNING, "VGG-style plain CNN, 8 conv 3x3 x 16, no norm, He init", VGGNet, "image",
                 "sgd", 0.02, _vgg_units, _vgg_relus),
    Architecture("resmlp", "mlp", TUNING, "pre-LN residual MLP, 6 blocks x 64", ResidualMLP, "vector", "adam",
                 1e-3, _seq_units("blocks"), _resmlp_relus),
    Architecture("encoder_post_ln", "transformer encoder", TUNING,
                 "post-LN `nn.TransformerEncoder` LM, 4 x 32, Adam with 10 warm-up steps", EncoderLM, "text",
                 "adam", 1e-3, _seq_units("encoder.layers"), defaults={"norm_first": False, "warmup": 10}),
    Architecture("gpt2", "decoder LM", TUNING, "HF `GPT2LMHeadModel` from a config, 4 x 64 (Conv1D, tied "
                 "`wte`/`lm_head`)", gpt2, "text", "adamw", 1e-3, _seq_units("transformer.h"),
                 init_targets=_lm_matrices),
    Architecture("rnn", "recurrent", TUNING, "tanh `nn.RNN`, 32 units", lambda **kw: Recurrent("rnn", **kw),
                 "sequence", "adam", 3e-3, lambda m: ["rnn"], init_targets=_recurrent_weights),
    Architecture("lstm", "recurrent", TUNING, "`nn.LSTM`, 32 units", lambda **kw: Recurrent("lstm", **kw),
                 "sequence", "adam", 3e-3, lambda m: ["rnn"], init_targets=_recurrent_weights),
    # held-out half
    Architecture("frozen_tanh_mlp", "mlp", HELD_OUT, "tanh MLP, 8 x 64, Xavier init, first 2 layers frozen",
                 PlainMLP, "vector", "sgd", 0.05, _seq_units("layers"),
                 defaults={"activation": "tanh", "frozen": 2}),
    Architecture("resnet", "cnn", HELD_OUT, "ResNet-style CNN, 2 stages x 2 BasicBlocks, BatchNorm", ResNet,
                 "image", "sgd", 0.05, _resnet_units, _resnet_relus),
    Architecture("encoder_pre_ln", "transformer encoder", HELD_OUT, "pre-LN `nn.TransformerEncoder` LM, 4 x 32",
                 EncoderLM, "text", "adam", 1e-3, _seq_units("encoder.layers"), defaults={"norm_first": True}),
    Architecture("vit", "vision transformer", HELD_OUT, "ViT, 2x2 patches, 4 x 32, `nn.MultiheadAttention`, "
                 "class token and position embedding on the model", ViT, "image", "adam", 1e-3,
                 _seq_units("blocks")),
    Architecture("llama", "decoder LM", HELD_OUT, "HF `LlamaForCausalLM` from a config, 4 x 64 (RMSNorm, SiLU "
                 "gate, rotary)", llama, "text", "adamw", 1e-3, _seq_units("model.layers"),
                 init_targets=_lm_matrices),
    Architecture("gru", "recurrent", HELD_OUT, "`nn.GRU`, 32 units", lambda **kw: Recurrent("gru", **kw),
                 "sequence", "adam", 3e-3, lambda m: ["rnn"], init_targets=_recurrent_weights),
    Architecture("irnn", "recurrent", HELD_OUT, "ReLU `nn.RNN`, 32 units, identity recurrent init (IRNN)",
                 lambda **kw: Recurrent("irnn", **kw), "sequence", "adam", 1e-3, lambda m: ["rnn"],
                 init_targets=_recurrent_weights),
)}


def matrices_of(model: nn.Module) -> list[Tensor]:
    """The Linear/Conv weights: what an init-scale breakage multiplies by default."""
    return [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
