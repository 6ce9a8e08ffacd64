"""The sequence studies' own tasks and their short training loop, generated on the spot so they run
in seconds on a CPU with nothing to download.

* :class:`MarkovLanguage`: next-token prediction on a fixed random language where every token has
  ``branching`` equally likely successors, so the best possible loss is known: ln(branching).
* :func:`first_symbol_batch`: the first of T steps shows one of K symbols, the rest are blank; the
  class is that symbol. Only a gradient that survives T - 1 recurrent steps can teach it.

The loop (:func:`train_steps`) is a few lines of PyTorch rather than ``train.fit``: these tasks draw
a fresh batch every step, and the language model's scores are (B, T, V) per batch.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["MarkovLanguage", "first_symbol_batch", "TrainedRun", "train_steps", "block_grad_norms",
           "lm_loss", "single_thread"]

Batch = Callable[[torch.Generator], tuple[Tensor, Tensor]]


@dataclass(frozen=True)
class MarkovLanguage:
    """A random first-order language: token t is followed by one of ``branching`` fixed successors."""

    vocab: int = 16
    branching: int = 2
    steps: int = 16
    batch: int = 32
    seed: int = 0

    @property
    def successors(self) -> Tensor:
        gen = torch.Generator().manual_seed(1000 + self.seed)
        return torch.randint(0, self.vocab, (self.vocab, self.branching), generator=gen)

    @property
    def best_loss(self) -> float:
        """The entropy of the next token given the current one (when its successors are distinct)."""
        return math.log(self.branching)

    def __call__(self, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        successors = self.successors
        seq = torch.empty(self.batch, self.steps + 1, dtype=torch.long)
        seq[:, 0] = torch.randint(0, self.vocab, (self.batch,), generator=gen)
        for t in range(self.steps):
            pick = torch.randint(0, self.branching, (self.batch,), generator=gen)
            seq[:, t + 1] = successors[seq[:, t], pick]
        return seq[:, :-1], seq[:, 1:]


def first_symbol_batch(symbols: int, steps: int, batch: int) -> Batch:
    """(B, T, K) inputs with a one-hot symbol at step 0 and zeros after; the label is the symbol."""

    def draw(gen: torch.Generator) -> tuple[Tensor, Tensor]:
        label = torch.randint(0, symbols, (batch,), generator=gen)
        x = torch.zeros(batch, steps, symbols)
        x[:, 0] = F.one_hot(label, symbols).float()
        return x, label

    return draw


def lm_loss(scores: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of (B, T, V) scores against (B, T) next tokens, or (B, C) against (B,)."""
    return F.cross_entropy(scores.flatten(0, -2), target.flatten())


@dataclass
class TrainedRun:
    label: str
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    first_nonfinite: int | None = None

    def final_loss(self, window: int) -> float:
        """Mean loss of the last ``window`` steps (one batch is noisy); +inf for a run that hit NaN/Inf."""
        tail = self.losses[-window:]
        if self.first_nonfinite is not None or not tail:
            return math.inf
        return sum(tail) / len(tail)


def train_steps(model: nn.Module, batches: Batch, *, steps: int, lr: float, seed: int, label: str,
                warmup: int = 0, clip: float | None = None, optimizer: str = "adam") -> TrainedRun:
    """Adam (or plain SGD) for ``steps`` steps on fresh batches, the learning rate ramped linearly over
    ``warmup`` steps; ``clip`` bounds the global gradient norm. Stops at the first NaN/Inf loss."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    opt = (torch.optim.Adam if optimizer == "adam" else torch.optim.SGD)(model.parameters(), lr=lr)
    run = TrainedRun(label)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / warmup) if warmup else lr
        x, y = batches(gen)
        loss = lm_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        # the norm before clipping: what backprop produced
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip is not None else math.inf)
        run.losses.append(float(loss.detach()))
        run.grad_norms.append(float(norm))
        if not (math.isfinite(run.losses[-1]) and math.isfinite(run.grad_norms[-1])):
            run.first_nonfinite = step
            break
        opt.step()
    return run


def block_grad_norms(model: nn.Module, blocks: nn.Sequential) -> list[float]:
    """Each block's gradient norm (all its parameters together), first block first."""
    return [math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in block.parameters() if p.grad is not None))
            for block in blocks]


class single_thread:
    """One torch thread while a study trains: its nets are too small to split across cores."""

    def __enter__(self) -> None:
        self.before = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)
