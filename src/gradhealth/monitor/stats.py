"""Pure tensor functions the monitor is made of: fused norms, per-layer grouping, activation sums.

Everything returns tensors on the device and never calls ``.item()``: the monitor gathers the
results of one step into one tensor and moves it to the host once.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gradhealth.layers.activations import ActivationRule

__all__ = [
    "ACT_FIELDS",
    "fused_norms",
    "group_l2",
    "group_max",
    "activation_sums",
    "activation_summary",
]

# Norms are accumulated in float64: the squares of exploding gradients (1e20 and beyond) overflow
# float32 while the gradients themselves are still finite.
NORM_DTYPE = torch.float64


def fused_norms(tensors: list[Tensor], ord: float = 2.0) -> Tensor:
    """The ``ord``-norm of every tensor, as one float64 vector, in a few fused kernels."""
    if not tensors:
        return torch.zeros(0, dtype=NORM_DTYPE)
    device = tensors[0].device
    norms = torch._foreach_norm(tensors, ord, dtype=NORM_DTYPE)
    return torch.stack([n.to(device, non_blocking=True) for n in norms])


def group_l2(norms: Tensor, index: Tensor, groups: int) -> Tensor:
    """L2 norm per group from per-tensor L2 norms: sqrt(sum of squares over the group's tensors)."""
    out = torch.zeros(groups, dtype=norms.dtype, device=norms.device)
    return out.index_add_(0, index, norms * norms).sqrt_()


def group_max(values: Tensor, index: Tensor, groups: int) -> Tensor:
    """Max per group (groups with no member stay 0)."""
    out = torch.zeros(groups, dtype=values.dtype, device=values.device)
    return out.scatter_reduce_(0, index, values, reduce="amax", include_self=True)


# Per call of an activation module: sum, sum of squares, saturated count, dead units
ACT_FIELDS = ("sum", "sumsq", "saturated", "dead")


def activation_sums(rule: ActivationRule, module: nn.Module, inp: Tensor | None, out: Tensor) -> Tensor:
    """The four additive statistics of one activation output, as a float64 vector on its device.

    A unit is a feature (Linear) or a channel (Conv); it is dead when it is off for every
    example and position of the batch.
    """
    x = out.detach()
    total = x.sum(dtype=NORM_DTYPE)
    sumsq = torch.linalg.vector_norm(x, dtype=NORM_DTYPE).square()
    zero = torch.zeros((), dtype=NORM_DTYPE, device=x.device)
    saturated = zero
    if rule.saturated is not None and (inp is not None or not rule.uses_input):
        saturated = rule.saturated(module, None if inp is None else inp.detach(), x).sum(dtype=NORM_DTYPE)
    dead = zero
    if rule.off is not None and x.dim() >= 2:
        off = rule.off(module, None, x).all(dim=0)
        dead = off.reshape(off.shape[0], -1).all(dim=1).sum(dtype=NORM_DTYPE)
    return torch.stack([total, sumsq, saturated, dead])


def activation_summary(sums: list[float], count: int, units: int, rule: ActivationRule) -> dict[str, float | None]:
    """Mean, std, saturation and dead fraction from the pooled sums of one step (host side)."""
    total, sumsq, saturated, dead = sums
    if count == 0:
        return {"mean": None, "std": None, "saturation": None, "dead_fraction": None}
    mean = total / count
    var = max(sumsq / count - mean * mean, 0.0) if math.isfinite(sumsq) else sumsq
    return {
        "mean": mean,
        "std": math.sqrt(var) if math.isfinite(var) else var,
        "saturation": saturated / count if rule.saturated is not None else None,
        "dead_fraction": dead / units if rule.off is not None and units else None,
    }
