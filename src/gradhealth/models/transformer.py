"""GPT-style transformers at any depth: pre-LN, post-LN or no norm, with or without skips.

The twins of the transformer material: ``norm=pre`` (GPT-2: ``x = x + attn(ln1(x))``, the skip
path never normalized), ``norm=post`` (Vaswani et al. 2017: ``x = ln1(x + attn(x))``, the sum
normalized) and ``residual=false`` (the very same parameters, no skip path). ``branch_scale``
shrinks each branch's output by 1/sqrt(2L) (``depth``, as GPT-2 scales its residual projections)
or multiplies it by a learned gain that starts at 0 (``rezero``, Bachlechner et al. 2020).

Layer names (nanoGPT's ``Block``): ``tok_emb``, ``pos_emb``, ``blocks.K.ln1``, ``blocks.K.attn.qkv``,
``blocks.K.attn.proj``, ``blocks.K.ln2``, ``blocks.K.mlp.fc1``, ``blocks.K.mlp.act1``,
``blocks.K.mlp.fc2``, ``ln_f`` (pre-LN only) and ``head``. Inputs are (B, T) token ids; outputs are
(B, T, vocab_size) next-token logits (``task=lm``, causal attention) or (B, num_classes) class
scores from the mean over time (``task=classify``, attention over the whole sequence).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradhealth.errors import ConfigError, unknown_name
from gradhealth.layers import create_act
from gradhealth.models._registry import register_model
from gradhealth.validate import require_positive

__all__ = ["NORM_PLACEMENTS", "BRANCH_SCALES", "TASKS", "SelfAttention", "FeedForward", "TransformerBlock",
           "Transformer", "transformer"]

NORM_PLACEMENTS = ("pre", "post", "none")
BRANCH_SCALES = ("none", "depth", "rezero")
TASKS = ("lm", "classify")
# GPT-2's init: every weight matrix and embedding from N(0, 0.02^2), biases 0
GPT2_STD = 0.02


def _choice(kind: str, value: str, choices: tuple[str, ...]) -> str:
    key = str(value).lower()
    if key not in choices:
        raise unknown_name(kind, value, choices)
    return key


class SelfAttention(nn.Module):
    """Multi-head self-attention: one ``qkv`` projection, scaled dot products, one output ``proj``."""

    def __init__(self, width: int, heads: int, causal: bool):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: Tensor) -> Tensor:
        batch, steps, width = x.shape
        # (B, T, 3C) -> three (B, heads, T, C / heads)
        q, k, v = (t.view(batch, steps, self.heads, width // self.heads).transpose(1, 2)
                   for t in self.qkv(x).split(width, dim=2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(batch, steps, width))

    def extra_repr(self) -> str:
        return f"heads={self.heads}, causal={self.causal}"


class FeedForward(nn.Module):
    """Position-wise MLP: ``fc2(act1(fc1(x)))``, four times wider inside (Vaswani et al. 2017)."""

    def __init__(self, width: int, activation: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(width, 4 * width)
        self.act1 = create_act(activation)
        self.fc2 = nn.Linear(4 * width, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act1(self.fc1(x)))


class TransformerBlock(nn.Module):
    """One attention and one MLP branch; where the norms sit and whether the input is added back
    are the twins' only differences, and both are spelled out in ``forward``."""

    def __init__(self, width: int, heads: int, norm: str = "pre", residual: bool = True, causal: bool = True,
                 branch_scale: str = "none", depth: int = 1, activation: str = "gelu"):
        super().__init__()
        self.norm = norm
        self.residual = residual

        def make_norm() -> nn.Module:
            return nn.Identity() if norm == "none" else nn.LayerNorm(width)

        # definition order follows the data: a post-LN block normalizes after each branch
        if norm == "post":
            self.attn = SelfAttention(width, heads, causal)
            self.ln1 = make_norm()
            self.mlp = FeedForward(width, activation)
            self.ln2 = make_norm()
        else:
            self.ln1 = make_norm()
            self.attn = SelfAttention(width, heads, causal)
            self.ln2 = make_norm()
            self.mlp = FeedForward(width, activation)
        # 2L branches add to the residual stream; 1/sqrt(2L) keeps its variance O(1) at any depth (GPT-2)
        self.scale = 1.0 / math.sqrt(2 * depth) if branch_scale == "depth" else 1.0
        rezero = branch_scale == "rezero"
        self.attn_gain = nn.Parameter(torch.zeros(())) if rezero else None
        self.mlp_gain = nn.Parameter(torch.zeros(())) if rezero else None

    def _skip(self, x: Tensor) -> Tensor | float:
        """The skip path: the input itself, or nothing in the plain twin."""
        return x if self.residual else 0.0

    def _branch(self, out: Tensor, gain: nn.Parameter | None) -> Tensor:
        out = out * self.scale if self.scale != 1.0 else out
        return gain * out if gain is not None else out

    def forward(self, x: Tensor) -> Tensor:
        if self.norm == "post":
            # Vaswani et al.: the sum of skip and branch is normalized, so the skip path passes through
            # every LayerNorm on its way back to the first block
            x = self.ln1(self._skip(x) + self._branch(self.attn(x), self.attn_gain))
            x = self.ln2(self._skip(x) + self._branch(self.mlp(x), self.mlp_gain))
        else:
            # GPT-2: each branch reads a normalized copy; the skip path is the identity all the way
            x = self._skip(x) + self._branch(self.attn(self.ln1(x)), self.attn_gain)
            x = self._skip(x) + self._branch(self.mlp(self.ln2(x)), self.mlp_gain)
        return x

    @torch.no_grad()
    def zero_init_last(self) -> None:
        """Start both branches at 0 (their output projections zeroed): the block starts as the identity."""
        nn.init.zeros_(self.attn.proj.weight)
        nn.init.zeros_(self.mlp.fc2.weight)

    def extra_repr(self) -> str:
        return f"norm={self.norm}, residual={self.residual}, scale={self.scale:.4g}"


class Transformer(nn.Module):
    """token + position embedding -> ``depth`` blocks -> (``ln_f`` for pre-LN) -> head."""

    def __init__(
        self,
        depth: int = 24,
        width: int = 64,
        heads: int = 4,
        norm: str = "pre",
        residual: bool = True,
        task: str = "lm",
        branch_scale: str = "none",
        vocab_size: int = 256,
        max_len: int = 128,
        num_classes: int = 10,
        activation: str = "gelu",
    ):
        super().__init__()
        require_positive(depth=depth, width=width, heads=heads, vocab_size=vocab_size, max_len=max_len,
                         num_classes=num_classes)
        if width % heads:
            raise ConfigError(f"width {width} must be a multiple of heads {heads}, so that each head gets "
                              "width/heads features.")
        self.norm = _choice("norm placement", norm, NORM_PLACEMENTS)
        self.task = _choice("task", task, TASKS)
        branch_scale = _choice("branch scale", branch_scale, BRANCH_SCALES)
        self.depth, self.residual, self.max_len = depth, residual, max_len
        self.tok_emb = nn.Embedding(vocab_size, width)
        self.pos_emb = nn.Embedding(max_len, width)
        self.blocks = nn.Sequential(*[
            TransformerBlock(width, heads, self.norm, residual, self.task == "lm", branch_scale, depth, activation)
            for _ in range(depth)
        ])
        # a pre-LN stream is a sum of unnormalized branches: normalize it once before the head (GPT-2)
        self.ln_f = nn.LayerNorm(width) if self.norm == "pre" else nn.Identity()
        self.head = nn.Linear(width, vocab_size if self.task == "lm" else num_classes)
        self._init_gpt2()

    @torch.no_grad()
    def _init_gpt2(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, 0.0, GPT2_STD)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 2 or tokens.dtype not in (torch.long, torch.int32, torch.int64):
            raise ConfigError(f"a transformer takes (batch, time) token ids, not a {tokens.dtype} tensor of shape "
                              f"{tuple(tokens.shape)}; give it token data, such as --data text:PATH.")
        steps = tokens.shape[1]
        if steps > self.max_len:
            raise ConfigError(f"sequences of {steps} tokens are longer than max_len={self.max_len}; "
                              f"set max_len={steps} or more.")
        positions = torch.arange(steps, device=tokens.device)
        x = self.tok_emb(tokens) + self.pos_emb(positions)
        x = self.ln_f(self.blocks(x))
        if self.task == "classify":
            x = x.mean(dim=1)
        return self.head(x)


def transformer(
    depth: int = 24,
    width: int = 64,
    heads: int = 4,
    norm: str = "pre",
    residual: bool = True,
    task: str = "lm",
    branch_scale: str = "none",
    vocab_size: int = 256,
    max_len: int = 128,
    num_classes: int = 10,
    activation: str = "gelu",
) -> Transformer:
    """GPT-style transformer of ``depth`` blocks; norm=pre|post|none, residual=false gives the plain twin."""
    return Transformer(depth, width, heads, norm, residual, task, branch_scale, vocab_size, max_len, num_classes,
                       activation)


register_model("transformer", transformer)
