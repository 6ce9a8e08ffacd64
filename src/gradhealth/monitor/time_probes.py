"""The gradient that reaches each time step of a sequence: ``||dL/dx_t||`` for t = 0..T-1.

On a detailed step a zero "probe" that requires grad is added to the sequence (``x + probe``: the
values and the gradient flowing to the modules before it are unchanged); after backward,
``probe.grad`` is dL/dx, whose norm per time step (L2 over batch and features) carries everything
backpropagation through time sent to that step. The gradient with respect to a recurrent
module's OUTPUT would not: for a loss on the last step it is zero before it, since the recurrence
runs inside the fused kernel. The per-step norms join the step's one host transfer as pieces.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from gradhealth.tensor_norms import NORM_DTYPE

__all__ = ["TimeProbes", "PIECE_PREFIX"]

# the pieces' names: "time:<module or tensor name>"
PIECE_PREFIX = "time:"


class TimeProbes:
    """The probes of one step's forward passes, and the names ever watched (in first-seen order)."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.skipped: list[str] = []
        self._probes: list[tuple[str, int, Tensor]] = []

    def reset(self) -> None:
        self._probes = []

    def _note(self, name: str) -> None:
        if name not in self.names:
            self.names.append(name)

    def watch(self, name: str, x: Tensor, time_dim: int) -> Tensor:
        """``x + probe`` (a zero probe whose gradient is read after backward), or ``x`` itself
        where no gradient flows (no autograd, an integer tensor)."""
        self._note(name)
        if not (torch.is_grad_enabled() and x.is_floating_point() and x.dim() > time_dim):
            return x
        probe = torch.zeros_like(x, requires_grad=True)
        self._probes.append((name, time_dim % x.dim(), probe))
        return x + probe

    def recurrent_pre_hook(self, name: str):
        """A forward pre-hook for nn.RNN/LSTM/GRU that probes its input sequence."""
        def hook(module: nn.RNNBase, args: tuple):
            if not args:
                return None
            x = args[0]
            if isinstance(x, PackedSequence):
                reason = f"{name} (PackedSequence input: gradient through time not measured)"
                if reason not in self.skipped:
                    self.skipped.append(reason)
                return None
            if not isinstance(x, Tensor):
                return None
            # unbatched input is (T, features); batched is (T, B, F), or (B, T, F) with batch_first
            time_dim = 1 if module.batch_first and x.dim() == 3 else 0
            return (self.watch(name, x, time_dim), *args[1:])

        return hook

    def pieces(self, device: torch.device) -> dict[str, Tensor]:
        """Per watched name, the L2 norm of the gradient per time step (calls of one name pooled)."""
        squares: dict[str, Tensor] = {}
        for name, time_dim, probe in self._probes:
            grad = probe.grad
            if grad is None:
                continue
            dims = [d for d in range(grad.dim()) if d != time_dim]
            per_t = torch.linalg.vector_norm(grad, dim=dims, dtype=NORM_DTYPE) if dims else grad.abs().to(NORM_DTYPE)
            sq = per_t * per_t
            kept = squares.get(name)
            if kept is None:
                squares[name] = sq
            elif kept.shape == sq.shape:
                squares[name] = kept + sq
        self.reset()
        return {PIECE_PREFIX + name: sq.sqrt().to(device) for name, sq in squares.items()}
