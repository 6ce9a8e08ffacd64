"""Where a smooth activation's slope is small, as intervals of its input, and a cheap mask for them.

GELU, SiLU and Mish have no closed form for the inputs where ``|f'(x)| < limit``, and evaluating
``f'`` on every element of an output (erf, exp, tanh and their products: a dozen passes over a
tensor of a million elements) costs ten times the activation itself. Their slopes are smooth, so
the flat region is a few intervals of x (for GELU: far left, where the slope dies out, and a
narrow band around x = -0.75, where it crosses zero on its way up), found once in float64 by
bisection between the points of a fine grid where ``|f'| - limit`` changes sign. A mask is then
a few comparisons per element.

Each bound is rounded outwards to the compared tensor's dtype (a lower bound down, an upper bound
up, to the nearest value of that dtype), so a comparison in the tensor's own dtype says exactly
whether the element lies inside the float64 interval; half-precision tensors are compared in
float32, as the rules always read them.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["flat_intervals", "interval_mask", "gelu_slope", "silu_slope", "mish_slope"]

Intervals = tuple[tuple[float, float], ...]

# The grid the sign changes are looked for on: past +-40 every slope here is 0 or 1 to float64
# precision, and its step (1/64) is far below the narrowest interval (GELU's band around its
# zero crossing is about 0.05 wide at a limit of 1 % of the largest slope)
GRID_LOW, GRID_HIGH, GRID_STEPS = -40.0, 40.0, 5120
BISECTIONS = 80


def gelu_slope(x: float) -> float:
    """GELU'(x) = Phi(x) + x phi(x), in float64 (erfc keeps Phi accurate far left)."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0)) + x * math.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def _softplus(x: float) -> float:
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


def silu_slope(x: float) -> float:
    """SiLU'(x) = s (1 + x (1 - s)), s = sigmoid(x)."""
    s = _sigmoid(x)
    return s * (1.0 + x * (1.0 - s))


def mish_slope(x: float) -> float:
    """Mish'(x) = tanh(sp) + x sech^2(sp) sigmoid(x), sp = softplus(x)."""
    t = math.tanh(_softplus(x))
    return t + x * (1.0 - t * t) * _sigmoid(x)


@functools.lru_cache(maxsize=32)
def flat_intervals(slope: Callable[[float], float], limit: float) -> Intervals:
    """The open intervals of x where ``|slope(x)| < limit``, in order; -inf / inf for an unbounded end."""
    step = (GRID_HIGH - GRID_LOW) / GRID_STEPS
    xs = [GRID_LOW + i * step for i in range(GRID_STEPS + 1)]
    inside = [abs(slope(x)) < limit for x in xs]
    edges = [_crossing(slope, limit, xs[i], xs[i + 1], inside[i])
             for i in range(GRID_STEPS) if inside[i] != inside[i + 1]]
    intervals = []
    start = -math.inf if inside[0] else None
    for edge in edges:
        if start is None:
            start = edge
        else:
            intervals.append((start, edge))
            start = None
    if start is not None:
        intervals.append((start, math.inf))
    return tuple(intervals)


def _crossing(slope: Callable[[float], float], limit: float, a: float, b: float, a_inside: bool) -> float:
    """The x in [a, b] where ``|slope| < limit`` starts or stops holding, to float64 precision."""
    for _ in range(BISECTIONS):
        mid = 0.5 * (a + b)
        if mid in (a, b):
            break
        if (abs(slope(mid)) < limit) == a_inside:
            a = mid
        else:
            b = mid
    # the bound of the open interval: its last point inside, nudged to the point where it ends
    return b if a_inside else a


def interval_mask(x: Tensor, intervals: Intervals) -> Tensor:
    """Where the elements of ``x`` lie inside any of the open ``intervals`` (NaN: nowhere)."""
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    mask = None
    for low, high in _bounds_in(intervals, x.dtype):
        if low == -math.inf:
            part = x < high
        elif high == math.inf:
            part = x > low
        else:
            part = (x > low) & (x < high)
        mask = part if mask is None else mask | part
    return mask if mask is not None else torch.zeros_like(x, dtype=torch.bool)


@functools.lru_cache(maxsize=64)
def _bounds_in(intervals: Intervals, dtype: torch.dtype) -> Intervals:
    """The bounds rounded outwards to ``dtype``: ``x > low`` and ``x < high`` in ``dtype`` are then exact."""
    if dtype == torch.float64:
        return intervals
    return tuple((_rounded(low, dtype, down=True), _rounded(high, dtype, down=False)) for low, high in intervals)


def _rounded(value: float, dtype: torch.dtype, down: bool) -> float:
    """The nearest value of ``dtype`` at or below (``down``) or at or above ``value``, as a float."""
    if math.isinf(value):
        return value
    near = torch.tensor(value, dtype=torch.float64).to(dtype)
    if (float(near) > value) if down else (float(near) < value):
        near = torch.nextafter(near, torch.tensor(-math.inf if down else math.inf, dtype=dtype))
    return float(near)
