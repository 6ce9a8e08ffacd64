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
    "nonfinite_probe",
    "activation_sums",
    "activation_summary",
]

# Norms are reported in float64: the squares of exploding gradients (1e20 and beyond) overflow
# float32 while the gradients themselves are still finite.
NORM_DTYPE = torch.float64

# On the CPU a float32 norm is trusted when it is finite (nothing overflowed) and its square is at
# least a million times what underflow can have taken from it: each square below float32's
# smallest normal number (1.18e-38) loses at most that much, so a tensor of n elements loses at
# most n * 1.18e-38 of its sum of squares. Anything else is measured again in float64.
FLOAT32_SMALLEST_NORMAL = 1.18e-38
UNDERFLOW_MARGIN = 1e6


def _stack_on(values: list[Tensor] | tuple[Tensor, ...], device: torch.device) -> Tensor:
    """Stack per-tensor results; a model spread over several devices has them on each."""
    if all(v.device == device for v in values):
        return torch.stack(values)
    return torch.stack([v.to(device, non_blocking=True) for v in values])


def fused_norms(tensors: list[Tensor]) -> Tensor:
    """The L2 norm of every tensor, as one float64 vector, in a few fused kernels.

    On a GPU the fused kernels accumulate in float64 directly. On the CPU that upcast costs two to
    three times a float32 pass, so the norms are taken in float32 (relative error ~1e-6) and only
    the tensors whose norm float32 cannot hold (overflowed, or so small that underflowed squares
    could matter: vanishing and exploding gradients) are measured again in float64.
    """
    if not tensors:
        return torch.zeros(0, dtype=NORM_DTYPE)
    device = tensors[0].device
    if device.type != "cpu" or any(t.dtype != torch.float32 for t in tensors):
        norms = torch._foreach_norm(tensors, 2.0, dtype=NORM_DTYPE)
        return _stack_on(norms, device)
    norms = torch.stack(torch._foreach_norm(tensors, 2.0)).to(NORM_DTYPE)
    numel = torch.tensor([t.numel() for t in tensors], dtype=NORM_DTYPE)
    trusted = torch.isfinite(norms) & (norms.square() >= numel * (FLOAT32_SMALLEST_NORMAL * UNDERFLOW_MARGIN))
    # on the CPU this reads memory the norms are already in: no device transfer
    redo = (~trusted).nonzero().flatten().tolist()
    if redo:
        exact = torch._foreach_norm([tensors[i] for i in redo], 2.0, dtype=NORM_DTYPE)
        norms[redo] = torch.stack(exact)
    return norms


def max_abs(tensors: list[Tensor]) -> Tensor:
    """The largest |element| of every tensor (exact in its own dtype), as a float64 vector."""
    if not tensors:
        return torch.zeros(0, dtype=NORM_DTYPE)
    device = tensors[0].device
    if device.type != "cpu":
        # one fused launch for all of them (the max needs no wider accumulator: it stays exact)
        return _stack_on(torch._foreach_norm(tensors, math.inf, dtype=NORM_DTYPE), device)
    # on the CPU aminmax reads each tensor once and allocates nothing the size of it
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


def nonfinite_probe(x: Tensor) -> Tensor:
    """A scalar that is 0 when ``x`` is all finite and NaN when it holds a NaN or an Inf.

    Read from the smallest and largest element, which never overflow: a sum would call a
    finite but exploding tensor (fp16 activations past 65504 in total, or float32 ones past 1e38)
    non-finite. Multiplying by 0 keeps NaN and turns Inf into NaN, so probes can be summed (over
    the calls of a module) and cast to any float type without losing what they say.
    """
    return torch.stack(torch.aminmax(x.detach())).mul_(0).sum()


# Per call of an activation module: sum, sum of squares, saturated count, dead units, and a
# non-finite probe (0, or NaN when the output held NaN/Inf)
ACT_FIELDS = ("sum", "sumsq", "saturated", "dead", "nonfinite")


def activation_sums(rule: ActivationRule, module: nn.Module, inp: Tensor | None, out: Tensor) -> Tensor:
    """The additive statistics of one activation output (ACT_FIELDS), as a float32 vector on its device.

    A unit is a feature (Linear) or a channel (Conv); it is dead when it is off for every
    example and position of the batch, which its largest output tells in one reduction.
    Sums run in float32 (upcast from bf16/fp16 inside the kernel): activations are O(1), and a
    mean or a fraction does not need more; whether the output is finite is read exactly. Few
    kernels on purpose: on a GPU each one is a launch, and a net has dozens of activations.
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
    stats.append(nonfinite_probe(x))
    # stack promotes the counts (int64) and a bf16/fp16 probe to float32
    return torch.stack(stats)


def activation_summary(sums: list[float], count: int, units: int, rule: ActivationRule) -> dict[str, float | None]:
    """Mean, std, saturation and dead fraction from the pooled sums of one step (host side)."""
    total, sumsq, saturated, dead = sums[:4]
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
