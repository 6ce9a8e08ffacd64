"""What every gradient clipper shares: the result type, the no-op clipper, fused norms and scaling.

Norms come from ``tensor_norms.fused_norms``, the kernels the monitor measures with, exact in
float64 where float32 would overflow: the squares of exploding gradients (1e20 and beyond)
overflow float32 while the gradients themselves are still finite, and a clipper that saw an
infinite norm would zero every gradient.

Sharded gradients (DTensor: FSDP2, tensor parallelism) are clipped by the global norm over all
shards (``gradhealth.distributed``), never by a shard's own, and scaled in their local pieces.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from gradhealth.distributed import is_sharded, local_pieces, sharded_global_norm
from gradhealth.errors import CheckpointError
from gradhealth.tensor_norms import NORM_DTYPE, fused_norms

__all__ = ["ClipResult", "GradClipper", "grads_of", "global_norm", "scale_grads_"]

Parameters = Tensor | Iterable[Tensor] | nn.Module


class ClipResult(NamedTuple):
    """Global L2 norms before and after clipping, and whether any gradient was changed.

    All three stay on the gradients' device (0-dim tensors: float64 norms, a bool flag), so the
    caller can move everything one step measured to the host in one transfer.
    """

    pre_norm: Tensor
    post_norm: Tensor
    clipped: Tensor


def grads_of(parameters: Parameters) -> tuple[list[Tensor], list[Tensor]]:
    """The parameters that have a gradient and their gradients; as clip_grad_norm_, others are skipped."""
    if isinstance(parameters, nn.Module):
        parameters = parameters.parameters()
    elif isinstance(parameters, Tensor):
        parameters = [parameters]
    params = [p for p in parameters if p.grad is not None]
    return params, [p.grad for p in params]


def global_norm(tensors: list[Tensor]) -> Tensor:
    """The L2 norm of all tensors as one vector, in float64, on the first tensor's device."""
    if is_sharded(tensors):
        return sharded_global_norm(tensors)
    if not tensors:
        return torch.zeros((), dtype=NORM_DTYPE)
    return torch.linalg.vector_norm(fused_norms(tensors))


def _by_device_and_dtype(tensors: list[Tensor]) -> dict[tuple[torch.device, torch.dtype], list[Tensor]]:
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return groups


@torch.no_grad()
def scale_grads_(grads: list[Tensor], coef: Tensor) -> None:
    """Multiply every gradient in place by the 0-dim ``coef``, in one fused kernel per device and dtype.

    The multiplication runs even when ``coef`` is 1: asking first would cost a device-to-host sync.
    """
    if is_sharded(grads):
        grads = local_pieces(grads)[0]
    for (device, dtype), group in _by_device_and_dtype(grads).items():
        torch._foreach_mul_(group, coef.to(device=device, dtype=dtype))


class GradClipper:
    """Mode ``none``: measures the global gradient norm and changes nothing.

    Every clipper is called as ``clipper(parameters) -> ClipResult`` right before
    ``optimizer.step()`` (after ``scaler.unscale_(optimizer)`` under mixed precision).

    Non-finite gradients: when the pre-clip norm is NaN or Inf, no mode changes any gradient. The
    result carries the non-finite ``pre_norm`` (``post_norm`` equals it, ``clipped`` is False) so the
    loop's non-finite policy (skip the step, lower the loss scale, stop) sees the real state;
    scaling by max_norm/Inf would silently zero every finite gradient and max_norm/NaN would turn
    them all into NaN.
    """

    mode = "none"

    def __init__(self) -> None:
        self.value: float | None = None

    def __call__(self, parameters: Parameters) -> ClipResult:
        _, grads = grads_of(parameters)
        pre = global_norm(grads)
        return ClipResult(pre, pre.clone(), torch.zeros((), dtype=torch.bool, device=pre.device))

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs to resume this clipper; stateless clippers have nothing."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned; stateless clippers accept only an empty state."""
        if state:
            raise CheckpointError(
                f"the checkpoint holds clipper state {sorted(state)} but clip mode {self.mode!r} keeps none; "
                "resume with the clip mode the run was started with."
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mode={self.mode!r}, value={self.value!r})"
