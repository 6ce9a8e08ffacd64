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
    "max_abs",
    "group_l2",
    "group_max",
    "activation_sums",
    "activation_summary",
]

# Norms are accumulated in float64: the squares of exploding gradients (1e20 and beyond) overflow
# float32 while the gradients themselves are still finite.
NORM_DTYPE = torch.float64


def fused_norms(tensors: list[Tensor]) -> Tensor:
    """The L2 norm of every tensor, as one float64 vector, in a few fused kernels.

    Accumulated in float64: float32 squares overflow above ~1e19 and underflow below ~1e-19,
    and both happen to the gradients this package exists to measure.
    """
    if not tensors:
        return torch.zeros(0, dtype=NORM_DTYPE)
    device = tensors[0].device
    norms = torch._foreach_norm(tensors, 2.0, dtype=NORM_DTYPE)
    return torch.stack([n.to(device, non_blocking=True) for n in norms])


def max_abs(tensors: list[Tensor]) -> Tensor:
    """The largest |element| of every tensor (exact in its own dtype), as a float64 vector."""
    if not tensors:
        return torch.zeros(0, dtype=NORM_DTYPE)
    device = tensors[0].device
    # aminmax reads each tensor once and allocates nothing the size of it
    values = [torch.stack(torch.aminmax(t)).abs().amax().to(device, NORM_DTYPE) if t.numel()
              else torch.zeros((), dtype=NORM_DTYPE, device=device) for t in tensors]
    return torch.stack(values)


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
    example and position of the batch, which its largest output tells in one reduction.
    Sums run in float32 (upcast from bf16/fp16 inside the kernel): activations are O(1), and a
    mean or a fraction does not need more.
    """
    x = out.detach()
    stats = [x.sum(dtype=torch.float32), torch.linalg.vector_norm(x, dtype=torch.float32).square()]
    zero = torch.zeros((), dtype=torch.float32, device=x.device)
    if rule.saturated is not None and (inp is not None or not rule.uses_input):
        stats.append(torch.count_nonzero(rule.saturated(module, None if inp is None else inp.detach(), x)))
    else:
        stats.append(zero)
    if rule.dead is not None and x.dim() >= 2:
        unit_max = x.amax(dim=[0, *range(2, x.dim())])
        stats.append(torch.count_nonzero(rule.dead(unit_max)))
    else:
        stats.append(zero)
    return torch.stack([v.to(NORM_DTYPE) for v in stats])


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
        "dead_fraction": dead / units if rule.dead is not None and units else None,
    }
