"""The flat regions of GELU, SiLU, Mish and Softplus as intervals of the input, against their slopes."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradhealth.layers.activations import (GELU_MAX_SLOPE, MISH_MAX_SLOPE, SATURATION_FRACTION, SILU_MAX_SLOPE,
                                           rule_for_module)
from gradhealth.layers.flat_regions import flat_intervals, gelu_slope, interval_mask, mish_slope, silu_slope


def _gelu64(x):
    return 0.5 * torch.erfc(-x / math.sqrt(2)) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _silu64(x):
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


def _mish64(x):
    t = torch.tanh(nn.functional.softplus(x))
    return t + x * (1 - t * t) * torch.sigmoid(x)


CURVES = [(gelu_slope, _gelu64, GELU_MAX_SLOPE), (silu_slope, _silu64, SILU_MAX_SLOPE),
          (mish_slope, _mish64, MISH_MAX_SLOPE)]


@pytest.mark.parametrize("slope,slope64,peak", CURVES, ids=["gelu", "silu", "mish"])
def test_the_intervals_are_where_the_slope_is_under_the_limit(slope, slope64, peak):
    limit = SATURATION_FRACTION * peak
    x = torch.linspace(-45, 45, 900_001, dtype=torch.float64)
    inside = interval_mask(x, flat_intervals(slope, limit))
    by_slope = slope64(x).abs() < limit
    differ = inside != by_slope
    # only where the slope is the limit to rounding: the vectorized formula's own last digits
    assert (slope64(x[differ]).abs() - limit).abs().max().item() < 1e-12 if differ.any() else True
    assert inside.any() and not inside.all()
    # far left the slope dies out; at the peak it is anything but flat
    assert bool(interval_mask(torch.tensor([-40.0, 1.5], dtype=torch.float64), flat_intervals(slope, limit))
                .eq(torch.tensor([True, False])).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("slope,slope64,peak", CURVES, ids=["gelu", "silu", "mish"])
def test_low_precision_inputs_are_compared_exactly(slope, slope64, peak, dtype):
    intervals = flat_intervals(slope, SATURATION_FRACTION * peak)
    torch.manual_seed(0)
    x = torch.cat([torch.randn(200_000) * 3, torch.linspace(-8, 0, 200_000)]).to(dtype)
    # the bounds rounded outwards make the comparison in the input's dtype exact: the same
    # answer as comparing its values in float64 with the float64 bounds
    assert torch.equal(interval_mask(x, intervals), interval_mask(x.double(), intervals))


def test_nan_is_nowhere_and_minus_inf_is_flat():
    intervals = flat_intervals(gelu_slope, SATURATION_FRACTION * GELU_MAX_SLOPE)
    mask = interval_mask(torch.tensor([float("nan"), -float("inf"), float("inf"), -0.75]), intervals)
    assert mask.tolist() == [False, True, False, True]


@pytest.mark.parametrize("module", [nn.GELU(), nn.SiLU(), nn.Mish(), nn.Softplus(), nn.Softplus(beta=2.0)],
                         ids=["gelu", "silu", "mish", "softplus", "softplus_beta2"])
def test_the_rules_count_what_their_slopes_say(module):
    """The rules' masks against the slope itself, evaluated in float64 on a float32 batch."""
    torch.manual_seed(1)
    x = torch.randn(64, 4096) * 4
    out = module(x)
    rule = rule_for_module(module)
    mask = rule.saturated(module, x, out)
    x64 = x.double()
    if isinstance(module, nn.Softplus):
        slope = torch.sigmoid(module.beta * x64)
        limit = SATURATION_FRACTION
        # the rule reads the float32 output: an element within its rounding of the bound may go either way
        tolerance = 1e-5
    else:
        slope64, peak = {nn.GELU: (_gelu64, GELU_MAX_SLOPE), nn.SiLU: (_silu64, SILU_MAX_SLOPE),
                         nn.Mish: (_mish64, MISH_MAX_SLOPE)}[type(module)]
        slope, limit, tolerance = slope64(x64).abs(), SATURATION_FRACTION * peak, 1e-12
    differ = mask != (slope < limit)
    assert 1000 < int(mask.sum()) < x.numel()
    if differ.any():
        assert ((slope[differ] - limit).abs() / limit).max().item() < tolerance
