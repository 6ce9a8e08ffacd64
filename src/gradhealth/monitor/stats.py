"""Per-layer grouping of per-tensor results: the monitor's statistics over a layer's parameters.

Tensors in, tensors out on the same device (no ``.item()``), like the norm kernels in
``gradhealth.tensor_norms`` they group.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["group_l2", "group_squares", "group_max"]


def group_l2(norms: Tensor, index: Tensor, groups: int) -> Tensor:
    """L2 norm per group from per-tensor L2 norms: sqrt(sum of squares over the group's tensors)."""
    out = torch.zeros(groups, dtype=norms.dtype, device=norms.device)
    return out.index_add_(0, index, norms * norms).sqrt_()


def group_squares(squares: Tensor, index: Tensor, groups: int) -> Tensor:
    """Sum of squares per group from per-tensor squared norms (a sharded layer's piece of its norm)."""
    out = torch.zeros(groups, dtype=squares.dtype, device=squares.device)
    return out.index_add_(0, index, squares)


def group_max(values: Tensor, index: Tensor, groups: int) -> Tensor:
    """Max per group (groups with no member stay 0)."""
    out = torch.zeros(groups, dtype=values.dtype, device=values.device)
    return out.scatter_reduce_(0, index, values, reduce="amax", include_self=True)
