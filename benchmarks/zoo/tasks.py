"""What the zoo trains on, generated (no download): batches and the loss for each task.

- ``vector``: Gaussian inputs labelled by a fixed random two-layer teacher (10 classes);
- ``image``: 3x8x8 Gaussian images labelled by a fixed random linear teacher on pooled patches;
- ``text``: byte-level language modelling on the Python standard library's own sources;
- ``sequence``: the first-element task, whose label is the sign of step 1 of ``length`` steps.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zoo.architectures import CLASSES, IMAGE, IN_FEATURES, SEQ_LEN
from harness import first_element_batches, stdlib_bytes, text_batches

BATCH = 32
TEXT_BATCH = 8
_TEXT: Tensor | None = None


def _teacher_batches(shape: tuple[int, ...], seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    teacher_gen = torch.Generator().manual_seed(1234)
    features = int(torch.tensor(shape).prod())
    w1 = torch.randn(features, 64, generator=teacher_gen) / features ** 0.5
    w2 = torch.randn(64, CLASSES, generator=teacher_gen) / 8.0
    gen = torch.Generator().manual_seed(seed)
    while True:
        x = torch.randn(BATCH, *shape, generator=gen)
        yield x, (torch.tanh(x.flatten(1) @ w1) @ w2).argmax(dim=1)


def batches(task: str, seed: int, length: int = 10) -> Iterator[tuple[Tensor, Tensor]]:
    global _TEXT
    if task == "vector":
        return _teacher_batches((IN_FEATURES,), seed)
    if task == "image":
        return _teacher_batches(IMAGE, seed)
    if task == "text":
        if _TEXT is None:
            _TEXT = stdlib_bytes(200_000)
        return text_batches(_TEXT, TEXT_BATCH, SEQ_LEN, seed)
    if task == "sequence":
        return first_element_batches(BATCH, length, seed)
    raise ValueError(f"unknown task {task!r}")


def loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    out = model(x)
    logits = out.logits if hasattr(out, "logits") else out
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
