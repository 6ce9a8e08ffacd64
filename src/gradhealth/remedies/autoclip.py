"""AutoClip (Seetharaman et al. 2020, "AutoClip: Adaptive Gradient Clipping for Source Separation
Networks"): norm-clip at a percentile of the gradient norms seen so far.

Each step the pre-clip global norm joins the history first (as in the paper's reference code), the
threshold is the ``percentile``-th percentile of the history (linear interpolation, as
numpy.percentile), and the gradients are norm-clipped to it.

The paper keeps every norm of the run; here the history is bounded to the last ``history``
finite norms (10 000 by default), so memory and the per-step percentile stay constant on long
runs. NaN and Inf norms never enter the history: one overflow must not move the threshold.

The history lives on the gradients' device as a ring buffer padded with NaN and is reduced with
``torch.nanquantile``, so a step costs no device-to-host transfer.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradhealth.errors import CheckpointError
from gradhealth.remedies._clip_base import (
    ClipResult,
    GradClipper,
    Parameters,
    global_norm,
    grads_of,
    scale_grads_,
)
from gradhealth.tensor_norms import NORM_DTYPE

__all__ = ["AUTOCLIP_PERCENTILE", "AUTOCLIP_HISTORY", "AutoClipper"]

AUTOCLIP_PERCENTILE = 10.0
AUTOCLIP_HISTORY = 10_000
# clip_grad_norm_'s guard against a zero norm, kept so that clipping to a threshold t is clip_grad_norm_(max_norm=t)
_NORM_EPS = 1e-6


class AutoClipper(GradClipper):
    """AutoClip at ``percentile`` (``value``) over the last ``history`` finite pre-clip norms."""

    mode = "autoclip"

    def __init__(self, percentile: float = AUTOCLIP_PERCENTILE, history: int = AUTOCLIP_HISTORY):
        super().__init__()
        self.value = percentile
        self.capacity = history
        self._buffer = torch.full((history,), float("nan"), dtype=NORM_DTYPE)
        self._count = torch.zeros((), dtype=torch.long)  # finite norms recorded since the start
        self.threshold: Tensor | None = None  # the last step's clipping threshold

    def _to(self, device: torch.device) -> None:
        if self._buffer.device != device:
            self._buffer = self._buffer.to(device)
            self._count = self._count.to(device)

    @torch.no_grad()
    def __call__(self, parameters: Parameters) -> ClipResult:
        _, grads = grads_of(parameters)
        if not grads:
            return super().__call__(grads)
        pre = global_norm(grads)
        self._to(pre.device)
        finite = torch.isfinite(pre)
        # a non-finite norm rewrites the slot with its own value and does not advance the ring
        slot = (self._count % self.capacity).reshape(1)
        self._buffer.index_copy_(0, slot, torch.where(finite, pre, self._buffer.index_select(0, slot)[0]).reshape(1))
        self._count += finite.long()

        threshold = torch.nanquantile(self._buffer, self.value / 100.0)
        coef = torch.where(finite, (threshold / (pre + _NORM_EPS)).clamp(max=1.0), torch.ones_like(pre))
        scale_grads_(grads, coef)
        self.threshold = threshold
        return ClipResult(pre, pre * coef, finite & (pre > threshold))

    def history(self) -> Tensor:
        """The recorded finite norms, oldest first, as a float64 CPU tensor."""
        count = int(self._count)
        buffer = self._buffer.cpu()
        if count <= self.capacity:
            return buffer[:count].clone()
        start = count % self.capacity
        return torch.cat([buffer[start:], buffer[:start]])

    def state_dict(self) -> dict[str, Any]:
        """The history (oldest first) and the settings, as plain tensors and numbers (weights_only loadable)."""
        return {"mode": self.mode, "percentile": float(self.value), "capacity": self.capacity,
                "history": self.history()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from ``state_dict()``: later thresholds equal those of an uninterrupted run, bit for bit.

        A smaller ``history`` than the saved one keeps the newest norms.
        """
        state = state if isinstance(state, dict) else {}
        history = state.get("history")
        if state.get("mode") != self.mode or not isinstance(history, Tensor) or history.dim() != 1:
            raise CheckpointError(
                "the checkpoint holds no autoclip history; resume with the clip mode it was saved with."
            )
        if float(state.get("percentile", self.value)) != float(self.value):
            raise CheckpointError(
                f"the checkpoint's autoclip percentile {state['percentile']} differs from {self.value}; "
                "resume with the percentile the run was started with."
            )
        history = history.to(NORM_DTYPE)[-self.capacity:]
        device = self._buffer.device
        self._buffer = torch.full((self.capacity,), float("nan"), dtype=NORM_DTYPE)
        self._buffer[: history.numel()] = history
        self._buffer = self._buffer.to(device)
        self._count = torch.tensor(history.numel(), dtype=torch.long, device=device)
        self.threshold = None
