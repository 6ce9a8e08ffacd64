"""Norm kernels shared by the monitor and gradient clipping: fused L2 norms, largest |element|, finiteness.

Torch only, and nothing else from gradhealth, so the monitor, the clippers and the training loop
measure with the same kernels. Everything returns tensors on the device and never calls
``.item()``: the monitor gathers the results of one step into one tensor and moves it to the host
once.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "NORM_DTYPE",
    "stack_on",
    "fused_norms",
    "all_finite",
    "max_abs",
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


def stack_on(values: list[Tensor] | tuple[Tensor, ...], device: torch.device) -> Tensor:
    """Stack per-tensor results; a model spread over several devices has them on each."""
    if all(v.device == device for v in values):
        return torch.stack(values)
    return torch.stack([v.to(device, non_blocking=True) for v in values])


def _float32_on_cpu(tensors: list[Tensor]) -> bool:
    """Whether every tensor is float32 in CPU memory: there float32 passes are the fast ones."""
    return tensors[0].device.type == "cpu" and all(t.dtype == torch.float32 for t in tensors)


def _plain(t: Tensor, modulus: bool) -> Tensor:
    """A dense real tensor with the same L2 norm (or, with ``modulus``, the same largest |element|).

    Sparse gradients (``nn.Embedding(sparse=True)``) become their stored values, repeated
    indices summed first; complex tensors become (real, imaginary) pairs, or their moduli.
    """
    if t.layout != torch.strided:
        t = t.coalesce().values() if t.is_sparse else t.to_dense()
    if t.is_complex():
        t = t.abs() if modulus else torch.view_as_real(t)
    return t


def _with_plain_fallback(measure, tensors: list[Tensor], modulus: bool = False) -> Tensor:
    """``measure(tensors)``, retried on dense real forms when a sparse or complex tensor fails it.

    Trying first keeps the common case free of a per-tensor check in Python.
    """
    try:
        return measure(tensors)
    except (RuntimeError, NotImplementedError):
        plain = [_plain(t, modulus) for t in tensors]
        if all(p is t for p, t in zip(plain, tensors)):
            raise
        return measure(plain)


def fused_norms(tensors: list[Tensor]) -> Tensor:
    """The L2 norm of every tensor, as one float64 vector, in a few fused kernels.

    On a GPU the fused kernels accumulate in float64 directly. On the CPU that upcast costs two to
    three times a float32 pass, so the norms are taken in float32 (relative error ~1e-6) and only
    the tensors whose norm float32 cannot hold (overflowed, or so small that underflowed squares
    could matter: vanishing and exploding gradients) are measured again in float64. Sparse and
    complex tensors are measured by their dense real forms.
    """
    if not tensors:
        return torch.zeros(0, dtype=NORM_DTYPE)
    return _with_plain_fallback(_fused_norms, tensors)


def _fused_norms(tensors: list[Tensor]) -> Tensor:
    device = tensors[0].device
    if not _float32_on_cpu(tensors):
        return stack_on(torch._foreach_norm(tensors, 2.0, dtype=NORM_DTYPE), device)
    norms = torch.stack(torch._foreach_norm(tensors, 2.0)).to(NORM_DTYPE)
    numel = torch.tensor([t.numel() for t in tensors], dtype=NORM_DTYPE)
    trusted = torch.isfinite(norms) & (norms.square() >= numel * (FLOAT32_SMALLEST_NORMAL * UNDERFLOW_MARGIN))
    # on the CPU this reads memory the norms are already in: no device transfer
    redo = (~trusted).nonzero().flatten().tolist()
    if redo:
        exact = torch._foreach_norm([tensors[i] for i in redo], 2.0, dtype=NORM_DTYPE)
        norms[redo] = torch.stack(exact)
    return norms


def all_finite(tensors: list[Tensor]) -> Tensor:
    """Whether every element of every tensor is finite, as a 0-dim bool tensor, read exactly.

    A sum of squares says so in one fused pass where it cannot overflow: float64 (on a GPU, or
    for other dtypes). On the CPU float32 is several times faster, and a float32 norm that came
    out non-finite is only a suspect (finite values past ~1e19 overflow its squares): those
    tensors are read again by their extremes, which never overflow.
    """
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    return _with_plain_fallback(_all_finite, tensors)


def _all_finite(tensors: list[Tensor]) -> Tensor:
    if not _float32_on_cpu(tensors):
        return torch.isfinite(fused_norms(tensors)).all()
    norms = torch.stack(torch._foreach_norm(tensors, 2.0))
    # on the CPU this reads memory the norms are already in: no device transfer
    suspects = (~torch.isfinite(norms)).nonzero().flatten().tolist()
    if not suspects:
        return torch.ones((), dtype=torch.bool)
    return torch.isfinite(max_abs([tensors[i] for i in suspects])).all()


def max_abs(tensors: list[Tensor]) -> Tensor:
    """The largest |element| of every tensor (exact in its own dtype), as a float64 vector."""
    if not tensors:
        return torch.zeros(0, dtype=NORM_DTYPE)
    return _with_plain_fallback(_max_abs, tensors, modulus=True)


def _max_abs(tensors: list[Tensor]) -> Tensor:
    device = tensors[0].device
    if device.type != "cpu":
        # one fused launch for all of them (the max needs no wider accumulator: it stays exact)
        return stack_on(torch._foreach_norm(tensors, math.inf, dtype=NORM_DTYPE), device)
    # on the CPU aminmax reads each tensor once and allocates nothing the size of it (an inf-norm
    # does not vectorize there); the per-tensor results are combined in three kernels in all
    lows, highs = [], []
    for t in tensors:
        low, high = torch.aminmax(t) if t.numel() else (t.new_zeros(()), t.new_zeros(()))
        lows.append(low)
        highs.append(high)
    return torch.maximum(stack_on(highs, device), stack_on(lows, device).neg()).to(NORM_DTYPE)
