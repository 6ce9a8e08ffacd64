"""The norm kernels the monitor and the clippers share, against float64 oracles."""
from __future__ import annotations

import math

import pytest
import torch

from gradhealth import tensor_norms
from gradhealth.tensor_norms import ScaledScratch, all_finite, fused_norms

# float32 sums of squares round each square and each addition to 24 bits; torch's CPU norm adds
# in a few float32 lanes, so the relative error grows with the number of elements: up to ~1e-7 at
# 1e3 random-sign elements, ~1e-6 at 1e5, ~1e-5 at 1e6. The tensors here hold at most 5e4, and
# the scaled re-measure uses the same kernel on numbers brought into range: the same tolerance.
# Any loss to under- or overflow, or a power of two not undone, is far outside it.
FLOAT32_REL = 5e-6


def test_norms_stay_exact_where_float32_would_overflow_or_underflow():
    g = torch.Generator().manual_seed(0)
    tensors = [torch.full((1000,), 1e20), torch.full((1000,), 1e-25), torch.randn(50_000, generator=g),
               torch.zeros(7), torch.tensor([1.0, float("nan")])]
    norms = fused_norms(tensors)
    exact = [torch.linalg.vector_norm(t.double()) for t in tensors]
    assert norms.dtype == torch.float64
    assert norms[0] == pytest.approx(float(exact[0]), rel=FLOAT32_REL)  # float32 squares overflow here
    assert norms[1] == pytest.approx(float(exact[1]), rel=FLOAT32_REL)  # and underflow here
    assert norms[2] == pytest.approx(float(exact[2]), rel=FLOAT32_REL)
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


def _float32_cases() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)

    def randn(scale: float, *shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    huge_and_tiny = torch.cat([randn(1e30, 3), randn(1e-30, 1000)])
    one_and_subnormal = torch.cat([randn(1.0, 10), torch.full((10,), 1e-44)])
    return {
        "1e-30": randn(1e-30, 5000), "1e-20": randn(1e-20, 64, 64), "1e-40 (subnormal)": randn(1e-40, 5000),
        "1e30": randn(1e30, 5000), "1e19": randn(1e19, 300, 7), "huge and tiny": huge_and_tiny,
        "one and subnormal": one_and_subnormal, "float32 max": torch.full((10,), 3.4e38),
        "every element 2**-149": torch.full((50_000,), 2.0 ** -149), "healthy": randn(1e-3, 128, 256),
        "zeros": torch.zeros(100), "empty": torch.zeros(0, 3), "one subnormal": torch.tensor([1e-45]),
        "one subnormal among a million zeros": torch.zeros(1_000_000).index_fill_(0, torch.tensor([7]), 2.0 ** -149),
    }


@pytest.mark.parametrize("scratch", [None, ScaledScratch()], ids=["fresh memory", "kept scratch"])
def test_float32_norms_match_a_float64_oracle_from_subnormal_to_float32_max(scratch):
    cases = _float32_cases()
    norms = fused_norms(list(cases.values()), scratch)
    for (name, t), got in zip(cases.items(), norms.tolist()):
        exact = float(torch.linalg.vector_norm(t.double()))
        assert got == pytest.approx(exact, rel=FLOAT32_REL, abs=0.0), name


def test_float32_norms_stay_exact_where_the_cpu_flushes_subnormal_results_to_zero():
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormal numbers")
    try:
        assert tensor_norms._square_underflow_loss() == tensor_norms.FLOAT32_SMALLEST_NORMAL
        cases = _float32_cases()
        norms = fused_norms(list(cases.values()), ScaledScratch())
    finally:
        torch.set_flush_denormal(False)
    assert tensor_norms._square_underflow_loss() == tensor_norms.SUBNORMAL_ROUNDING
    for (name, t), got in zip(cases.items(), norms.tolist()):
        # flushed, a subnormal element reads as zero in every float32 kernel: so in the oracle
        exact = float(torch.linalg.vector_norm(t.double()))
        if "subnormal" in name or "2**-149" in name:
            continue
        assert got == pytest.approx(exact, rel=FLOAT32_REL, abs=0.0), name


def test_nan_and_inf_come_out_as_float64_says():
    tensors = [torch.tensor([1.0, float("inf")]), torch.tensor([-float("inf"), 1e-30]),
               torch.tensor([float("nan"), float("inf")]), torch.tensor([1e-30, float("nan")])]
    got = fused_norms(tensors).tolist()
    exact = [float(torch.linalg.vector_norm(t.double())) for t in tensors]
    assert got[:2] == exact[:2] == [math.inf, math.inf]
    assert all(math.isnan(v) for v in got[2:] + exact[2:])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_norms_match_a_float64_oracle(dtype):
    info = torch.finfo(dtype)
    g = torch.Generator().manual_seed(4)
    tensors = [(torch.randn(4000, generator=g) * scale).to(dtype) for scale in (info.tiny * 4, 1.0, info.max / 8)]
    norms = fused_norms(tensors)
    for t, got in zip(tensors, norms.tolist()):
        # the elements are exact in float64: so must the norm be, up to float64's rounding
        assert got == pytest.approx(float(torch.linalg.vector_norm(t.double())), rel=1e-12)


def test_underflowing_and_overflowing_float32_tensors_take_no_float64_pass(monkeypatch):
    cases = _float32_cases()
    float64_reads = []
    real_norm, real_foreach = torch.linalg.vector_norm, torch._foreach_norm

    def norm(t, *args, dtype=None, **kwargs):
        if dtype == torch.float64:
            float64_reads.append(t)
        return real_norm(t, *args, dtype=dtype, **kwargs)

    def foreach(ts, *args, dtype=None, **kwargs):
        if dtype == torch.float64:
            float64_reads.extend(ts)
        return real_foreach(ts, *args, dtype=dtype, **kwargs) if dtype is not None else real_foreach(ts, *args, **kwargs)

    monkeypatch.setattr(torch.linalg, "vector_norm", norm)
    monkeypatch.setattr(torch, "_foreach_norm", foreach)
    fused_norms(list(cases.values()), ScaledScratch())
    assert float64_reads == []


def test_a_scaled_norm_still_short_of_its_bound_is_read_in_float64(monkeypatch):
    # no margin is enough and no scale lifts every element out of underflow: the float64 read
    monkeypatch.setattr(tensor_norms, "UNDERFLOW_MARGIN", math.inf)
    monkeypatch.setattr(tensor_norms, "NO_UNDERFLOW_EXPONENT", 1000)
    tensors = [torch.full((1000,), 1e-25), torch.full((10, 10), 1e30)]
    got = fused_norms(tensors).tolist()
    assert got == [float(torch.linalg.vector_norm(t, dtype=torch.float64)) for t in tensors]


def test_the_measured_tensors_are_left_as_they_were():
    cases = _float32_cases()
    before = [t.clone() for t in cases.values()]
    fused_norms(list(cases.values()), ScaledScratch())
    for t, b in zip(cases.values(), before):
        assert torch.equal(t.view(torch.int32), b.view(torch.int32))  # bit for bit


def test_the_scratch_keeps_its_memory_between_calls():
    scratch = ScaledScratch()
    tensors = [torch.full((1000,), 1e-25), torch.full((10, 10), 1e-30)]
    fused_norms(tensors, scratch)
    kept = scratch.like(tensors[0]).data_ptr()
    fused_norms(tensors, scratch)
    assert scratch.like(tensors[0]).data_ptr() == kept


def test_a_kept_scratch_reads_a_vanishing_tensor_once_on_the_next_call(monkeypatch):
    tensors = [torch.randn(300), torch.randn(64, 64) * 1e-25, torch.randn(50) * 1e30]
    scratch = ScaledScratch()
    fused_norms(tensors, scratch)
    unscaled_reads, scaled_reads = [], []
    real_foreach, real_mul = torch._foreach_norm, torch.mul

    def foreach(ts, *args, **kwargs):
        unscaled_reads.extend(ts)
        return real_foreach(ts, *args, **kwargs)

    def mul(t, *args, **kwargs):
        scaled_reads.append(t)
        return real_mul(t, *args, **kwargs)

    monkeypatch.setattr(torch, "_foreach_norm", foreach)
    monkeypatch.setattr(torch, "mul", mul)
    norms = fused_norms(tensors, scratch)
    monkeypatch.undo()
    # (the tensor of 16 is the underflow probe)
    assert [id(t) for t in unscaled_reads if t.numel() != 16] == [id(tensors[0])]
    assert [id(t) for t in scaled_reads] == [id(tensors[1]), id(tensors[2])]
    for t, got in zip(tensors, norms.tolist()):
        assert got == pytest.approx(float(torch.linalg.vector_norm(t.double())), rel=FLOAT32_REL)


@pytest.mark.parametrize("new_scale", [1e-40, 1.0, 1e35, math.inf])
def test_a_kept_scratch_whose_guess_no_longer_fits_still_measures_exactly(new_scale):
    scratch = ScaledScratch()
    g = torch.Generator().manual_seed(5)
    base = torch.randn(4000, generator=g)
    fused_norms([torch.randn(10), base * 1e-25], scratch)
    changed = [torch.randn(10), base * new_scale]
    for _ in range(2):  # the call after the change, and the one after that with what it learned
        got = fused_norms(changed, scratch).tolist()
        exact = [float(torch.linalg.vector_norm(t.double())) for t in changed]
        assert got[0] == pytest.approx(exact[0], rel=FLOAT32_REL)
        assert got[1] == pytest.approx(exact[1], rel=FLOAT32_REL)


def test_an_all_zero_tensor_is_read_as_zero_without_a_scaled_copy(monkeypatch):
    # an update too small to change any weight is exactly zero; one whose squares all underflow
    # (float32 norm 0 too) is not, and still gets its scaled measurement
    tensors = [torch.zeros(64, 64), torch.randn(300), torch.full((500,), 1e-30), torch.zeros(7)]
    scaled_reads, norm_reads = [], []
    real_mul, real_foreach = torch.mul, torch._foreach_norm

    def mul(t, *args, **kwargs):
        scaled_reads.append(t)
        return real_mul(t, *args, **kwargs)

    def foreach(ts, *args, **kwargs):
        norm_reads.extend(t for t in ts if t.numel() != 16)  # (the tensor of 16 is the underflow probe)
        return real_foreach(ts, *args, **kwargs)

    monkeypatch.setattr(torch, "mul", mul)
    monkeypatch.setattr(torch, "_foreach_norm", foreach)
    scratch = ScaledScratch()
    for call in range(2):  # the second call with what the scratch kept: the zeros take no norm
        scaled_reads.clear()
        norm_reads.clear()
        got = fused_norms(tensors, scratch).tolist()
        assert [id(t) for t in scaled_reads] == [id(tensors[2])]
        assert [id(t) for t in norm_reads] == [id(t) for t in (tensors if call == 0 else tensors[1:2])]
        assert got[0] == 0.0 and got[3] == 0.0
        for t, value in zip(tensors[1:3], got[1:3]):
            assert value == pytest.approx(float(torch.linalg.vector_norm(t.double())), rel=FLOAT32_REL)


def test_the_kept_sizes_follow_tensors_whose_sizes_change():
    scratch = ScaledScratch()
    tiny = 1e-22  # trusted in float32 for a few elements, re-measured for many
    for n in (4, 10**6, 4):
        t = torch.full((n,), tiny)
        got = fused_norms([t], scratch).item()
        assert got == pytest.approx(tiny * math.sqrt(n), rel=FLOAT32_REL)


@pytest.mark.parametrize("new_value", [1e-30, 1.0, 1e30, math.inf, math.nan])
def test_a_tensor_zero_last_time_is_measured_exactly_once_it_is_not(new_value):
    scratch = ScaledScratch()
    fused_norms([torch.randn(10), torch.zeros(4000)], scratch)
    changed = torch.zeros(4000)
    changed[17] = new_value
    changed[3000] = -new_value / 2
    for _ in range(2):  # the call after the change, and the one after that with what it learned
        got = fused_norms([torch.randn(10), changed], scratch).tolist()[1]
        exact = float(torch.linalg.vector_norm(changed.double()))
        if math.isnan(exact):
            assert math.isnan(got)
        else:
            assert got == pytest.approx(exact, rel=FLOAT32_REL)


def test_small_tensors_of_one_shape_are_measured_stacked_in_their_own_order(monkeypatch):
    g = torch.Generator().manual_seed(3)
    scales = [1.0, 1e-30, 0.0, 1e25, 1e-3, math.inf, math.nan, 7.0, 1e-42, 2.0]
    tensors = [torch.randn(8, 16, generator=g) * s for s in scales]  # one shape, stacked
    tensors[2] = torch.zeros(8, 16)
    tensors += [torch.randn(5000, generator=g), torch.randn(3, generator=g)]  # too large, too few
    foreach_reads = []
    real_foreach = torch._foreach_norm

    def foreach(ts, *args, **kwargs):
        foreach_reads.extend(t for t in ts if t.numel() != 16)  # (the tensor of 16 is the underflow probe)
        return real_foreach(ts, *args, **kwargs)

    monkeypatch.setattr(torch, "_foreach_norm", foreach)
    scratch = ScaledScratch()
    for _ in range(2):  # the second call with what the scratch kept
        foreach_reads.clear()
        got = fused_norms(tensors, scratch).tolist()
        assert [id(t) for t in foreach_reads] == [id(tensors[-2]), id(tensors[-1])]
        for t, value in zip(tensors, got):
            exact = float(torch.linalg.vector_norm(t.double()))
            if math.isnan(exact):
                assert math.isnan(value)
            else:
                assert value == pytest.approx(exact, rel=FLOAT32_REL)


def test_stacked_small_tensors_that_require_grad_are_measured_too():
    tensors = [torch.randn(4, 4, requires_grad=True) for _ in range(6)]
    got = fused_norms(tensors, ScaledScratch()).tolist()
    assert got == pytest.approx([float(torch.linalg.vector_norm(t.detach().double())) for t in tensors], rel=FLOAT32_REL)
