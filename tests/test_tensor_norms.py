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
    assert norms[0] == pytest.approx(float(exact[0]), rel=FLOAT32_REL, abs=0.0)  # float32 squares overflow here
    assert norms[1] == pytest.approx(float(exact[1]), rel=FLOAT32_REL, abs=0.0)  # and underflow here
    assert norms[2] == pytest.approx(float(exact[2]), rel=FLOAT32_REL, abs=0.0)
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


def test_a_norm_shrunk_by_flushed_squares_is_measured_again_where_the_cpu_flushes_them():
    # 1000 squares of 1e-42 (subnormal) are 1e-3 of this norm's square: kept where subnormal
    # results survive, so there its float32 norm is trusted; flushed to zero, they are lost
    t = torch.full((1000,), 1e-21)
    t[0] = 1e-18
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush subnormal numbers")
    try:
        got = fused_norms([torch.randn(10), t], ScaledScratch()).tolist()[1]
    finally:
        torch.set_flush_denormal(False)
    assert got == pytest.approx(float(torch.linalg.vector_norm(t.double())), rel=FLOAT32_REL, abs=0.0)


@pytest.mark.parametrize("scratch", [None, ScaledScratch()], ids=["fresh memory", "kept scratch"])
@pytest.mark.parametrize("outlier", ["overflows", "underflows", "nan"])
def test_one_norm_float32_cannot_hold_among_healthy_ones_is_measured_exactly(outlier, scratch):
    # the others would all be trusted: the one outlier alone must turn the measurement its way
    g = torch.Generator().manual_seed(11)
    odd = {"overflows": torch.full((1000,), 1e20), "underflows": torch.full((1000,), 1e-25),
           "nan": torch.tensor([1.0, math.nan])}[outlier]
    tensors = [torch.randn(100, generator=g), odd, torch.randn(8, 8, generator=g)]
    got = fused_norms(tensors, scratch).tolist()
    if outlier == "nan":
        assert math.isnan(got[1])
        _assert_exact_norms(tensors[::2], got[::2])
    else:
        _assert_exact_norms(tensors, got)


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
        assert got == pytest.approx(float(torch.linalg.vector_norm(t.double())), rel=1e-12, abs=0.0)


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
        assert got == pytest.approx(float(torch.linalg.vector_norm(t.double())), rel=FLOAT32_REL, abs=0.0)


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
        assert got[0] == pytest.approx(exact[0], rel=FLOAT32_REL, abs=0.0)
        assert got[1] == pytest.approx(exact[1], rel=FLOAT32_REL, abs=0.0)


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
            assert value == pytest.approx(float(torch.linalg.vector_norm(t.double())), rel=FLOAT32_REL, abs=0.0)


def test_the_kept_sizes_follow_tensors_whose_sizes_change():
    scratch = ScaledScratch()
    tiny = 1e-22  # trusted in float32 for a few elements, re-measured for many
    for n in (4, 10**6, 4):
        t = torch.full((n,), tiny)
        got = fused_norms([t], scratch).item()
        # a million equal squares accumulated in float32 lanes: rounding errors of one sign add up
        rel = FLOAT32_REL if n < 1000 else 1e-3
        assert got == pytest.approx(float(t[0]) * math.sqrt(n), rel=rel, abs=0.0)


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
            assert got == pytest.approx(exact, rel=FLOAT32_REL, abs=0.0)


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
                assert value == pytest.approx(exact, rel=FLOAT32_REL, abs=0.0)


def test_many_small_tensors_of_one_shape_are_measured_in_chunks_of_two_or_more():
    # 49 tensors of 4096 elements fill the 2**16-element buffer 16 at a time: four chunks, none of one
    g = torch.Generator().manual_seed(10)
    scales = [1.0, 1e-30, 1e25, 0.0, 1e-3]
    tensors = [torch.randn(64, 64, generator=g) * scales[i % len(scales)] for i in range(49)]
    plan = tensor_norms.ShapeGroups([t.shape for t in tensors])
    assert sorted(len(stacked) for _, _, stacked, _, _ in plan._chunks) == [12, 12, 12, 13]
    _assert_exact_norms(tensors, fused_norms(tensors, ScaledScratch()).tolist())


def test_stacked_small_tensors_that_require_grad_are_measured_too():
    tensors = [torch.randn(4, 4, requires_grad=True) for _ in range(6)]
    got = fused_norms(tensors, ScaledScratch()).tolist()
    assert got == pytest.approx([float(torch.linalg.vector_norm(t.detach().double())) for t in tensors], rel=FLOAT32_REL, abs=0.0)


def _assert_exact_norms(tensors: list[torch.Tensor], got: list[float]) -> None:
    """float32 tensors within float32's accumulation error of the float64 oracle; a list with any
    other dtype is measured in float64 throughout, so within float64's rounding."""
    rel = FLOAT32_REL if all(t.dtype == torch.float32 for t in tensors) else 1e-12
    for i, (t, value) in enumerate(zip(tensors, got)):
        dense = t.to_dense() if t.is_sparse else t
        assert value == pytest.approx(float(torch.linalg.vector_norm(dense.double())), rel=rel, abs=0.0), i


def _grads_like_a_model(g: torch.Generator) -> list[torch.Tensor]:
    """Repeated blocks' small shapes (stacked by shape) around a few large or unique ones."""
    shapes = [(300, 20)] + [(8, 16), (16,), (16, 16)] * 6 + [(5,), (7, 3)]
    return [torch.randn(*shape, generator=g) for shape in shapes]


def test_a_kept_plan_measures_fresh_tensors_of_the_same_shapes_without_working_it_out_again(monkeypatch):
    plans = []
    real_init = tensor_norms.ShapeGroups.__init__

    def counted_init(self, shapes):
        plans.append(len(shapes))
        real_init(self, shapes)

    monkeypatch.setattr(tensor_norms.ShapeGroups, "__init__", counted_init)
    g = torch.Generator().manual_seed(6)
    scratch = ScaledScratch()
    for _ in range(3):  # new tensors each call, as a training step's new gradients
        tensors = _grads_like_a_model(g)
        _assert_exact_norms(tensors, fused_norms(tensors, scratch).tolist())
    assert plans == [len(tensors)]


def _changed(tensors: list[torch.Tensor], change: str) -> list[torch.Tensor]:
    out = [t.clone() for t in tensors]
    if change == "a stacked tensor changes shape":
        out[1] = torch.randn(4, 32)  # its chunk's other tensors keep (8, 16)
    elif change == "the first stacked tensor changes shape":
        out[1] = torch.randn(16, 8)
    elif change == "every stacked tensor of a shape changes it alike":
        out = [torch.randn(4, 16) if t.shape == (8, 16) else t for t in out]
    elif change == "a tensor measured alone grows, its squares underflowing":
        # only its new size says its float32 norm is not to be trusted: 50,000 squares lost to
        # underflow, 3e-5 of the sum (its old size, 5, would have trusted it)
        out[-2] = torch.full((50_000,), 2.5e-23)
        out[-2][0] = 1e-18
    elif change == "a tensor becomes float64":
        out[2] = out[2].double()
    elif change == "every tensor becomes half precision":
        out = [t.half() for t in out]
    elif change == "a tensor drops out (no gradient)":
        del out[3]
    elif change == "one drops out and another takes its place":
        del out[3]
        out.append(torch.randn(9, 9))
    elif change == "a stacked tensor becomes sparse":
        out[1] = out[1].to_sparse()
    return out


@pytest.mark.parametrize("change", [
    "a stacked tensor changes shape", "the first stacked tensor changes shape",
    "every stacked tensor of a shape changes it alike", "a tensor measured alone grows, its squares underflowing",
    "a tensor becomes float64", "every tensor becomes half precision", "a tensor drops out (no gradient)",
    "one drops out and another takes its place", "a stacked tensor becomes sparse"])
def test_a_kept_plan_follows_tensors_that_change_between_calls(change):
    g = torch.Generator().manual_seed(7)
    before = _grads_like_a_model(g)
    after = _changed(before, change)
    scratch = ScaledScratch()
    fused_norms(before, scratch)
    for tensors in (after, after, before):  # the change, the call after it, and back again
        _assert_exact_norms(tensors, fused_norms(tensors, scratch).tolist())


def test_a_kept_plan_with_nothing_stacked_follows_a_tensor_that_grows():
    g = torch.Generator().manual_seed(9)
    before = [torch.randn(300, generator=g), torch.randn(5, generator=g)]
    grown = torch.full((50_000,), 2.5e-23)  # as in the stacked case above: only its size says so
    grown[0] = 1e-18
    scratch = ScaledScratch()
    fused_norms(before, scratch)
    for tensors in ([before[0], grown], [before[0], grown], before):
        _assert_exact_norms(tensors, fused_norms(tensors, scratch).tolist())


@pytest.mark.parametrize("first_inside", [True, False], ids=["inference mode first", "inference mode later"])
def test_a_kept_scratch_serves_calls_inside_and_outside_inference_mode(first_inside):
    # stacked small tensors and a vanishing one (its scaled copy): every kept buffer is written
    g = torch.Generator().manual_seed(12)
    tensors = [torch.randn(8, 8, generator=g) for _ in range(6)] + [torch.full((500,), 1e-30)]
    scratch = ScaledScratch()
    for inside in (first_inside, not first_inside, first_inside):
        with torch.inference_mode(inside):
            got = fused_norms([t.clone() for t in tensors], scratch).tolist()
        _assert_exact_norms(tensors, got)


def test_the_gradients_of_a_model_whose_parameters_change_dtype_are_measured_in_their_own():
    # model.double() keeps the same Parameter objects: their gradients come back float64
    torch.manual_seed(8)
    model = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(6)])
    x = torch.randn(4, 8)
    scratch = ScaledScratch()
    for dtype in (torch.float32, torch.float64, torch.float32):
        model.to(dtype)
        model.zero_grad(set_to_none=True)
        model(x.to(dtype)).square().sum().backward()
        grads = [p.grad for p in model.parameters()]
        assert {g.dtype for g in grads} == {dtype}
        _assert_exact_norms(grads, fused_norms(grads, scratch).tolist())


def test_the_underflow_probe_is_read_only_where_a_norm_is_not_trusted_without_it(monkeypatch):
    probes = []
    real_probe = tensor_norms._square_underflow_loss

    def probe():
        probes.append(1)
        return real_probe()

    scaled_reads = []
    real_mul = torch.mul

    def mul(t, *args, **kwargs):
        scaled_reads.append(t)
        return real_mul(t, *args, **kwargs)

    monkeypatch.setattr(tensor_norms, "_square_underflow_loss", probe)
    monkeypatch.setattr(torch, "mul", mul)
    scratch = ScaledScratch()
    healthy = [torch.randn(100), torch.randn(10, 10)]
    fused_norms(healthy, scratch)
    assert probes == []
    # a square of 1e-33 over 1000 elements: trusted where subnormal squares survive (this CPU's
    # default), not where they could be flushed: the probe decides, and nothing is re-measured
    small = torch.full((1000,), 1e-18)
    assert tensor_norms._square_underflow_loss() == tensor_norms.SUBNORMAL_ROUNDING
    probes.clear()
    got = fused_norms([torch.randn(100), small], scratch).tolist()
    assert probes == [1] and scaled_reads == []
    assert got[1] == pytest.approx(float(torch.linalg.vector_norm(small.double())), rel=FLOAT32_REL, abs=0.0)
