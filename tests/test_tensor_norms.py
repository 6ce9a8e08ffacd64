"""The norm kernels the monitor and the clippers share, against float64 oracles."""
from __future__ import annotations

import math

import pytest
import torch

from gradhealth.tensor_norms import all_finite, fused_norms


def test_norms_stay_exact_where_float32_would_overflow_or_underflow():
    g = torch.Generator().manual_seed(0)
    tensors = [torch.full((1000,), 1e20), torch.full((1000,), 1e-25), torch.randn(50_000, generator=g),
               torch.zeros(7), torch.tensor([1.0, float("nan")])]
    norms = fused_norms(tensors)
    exact = [torch.linalg.vector_norm(t.double()) for t in tensors]
    assert norms.dtype == torch.float64
    assert norms[0] == pytest.approx(float(exact[0]), rel=1e-12)  # float32 squares overflow here
    assert norms[1] == pytest.approx(float(exact[1]), rel=1e-12)  # and underflow here
    assert norms[2] == pytest.approx(float(exact[2]), rel=1e-6)
    assert norms[3] == 0.0 and math.isnan(norms[4])


def test_all_finite_reads_huge_finite_gradients_as_finite_and_any_nan_or_inf_as_not():
    huge = torch.full((1000,), 1e20)  # finite, but its float32 sum of squares overflows
    assert bool(all_finite([huge, torch.randn(10)]))
    assert bool(all_finite([]))
    for bad in (float("nan"), float("inf"), -float("inf")):
        t = torch.randn(100)
        t[37] = bad
        assert not bool(all_finite([huge, t]))
        assert not bool(all_finite([t.double()]))  # the float64 path
    assert bool(all_finite([huge.double(), torch.ones(3, dtype=torch.bfloat16)]))
