"""Norm kernels shared by the monitor and gradient clipping: fused L2 norms, largest |element|, finiteness.

Torch only, and nothing else from gradhealth, so the monitor, the clippers and the training loop
measure with the same kernels. Everything returns tensors on the device and never calls
``.item()``: the monitor gathers the results of one step into one tensor and moves it to the host
once.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = [
    "NORM_DTYPE",
    "stack_on",
    "ScaledScratch",
    "fused_norms",
    "all_finite",
    "max_abs",
]

# Norms are reported in float64: the squares of exploding gradients (1e20 and beyond) overflow
# float32 while the gradients themselves are still finite.
NORM_DTYPE = torch.float64

# On the CPU a float32 norm is trusted when it is finite (nothing overflowed) and its square is at
# least a million times what underflow can have taken from it. A square below float32's smallest
# normal number (2**-126, 1.18e-38) comes out as a subnormal number, rounded to a multiple of
# 2**-149, so it loses at most 2**-150; where the CPU flushes subnormal results to zero (FTZ, e.g.
# ``torch.set_flush_denormal(True)``) it loses all of itself, at most 2**-126. A tensor of n
# elements loses at most n times that. The other tensors are measured again, scaled.
FLOAT32_SMALLEST_NORMAL = 2.0 ** -126
SUBNORMAL_ROUNDING = 2.0 ** -150
UNDERFLOW_MARGIN = 1e6
# A re-measured tensor is multiplied by a power of two that brings an upper bound of its norm to
# [2**40, 2**41): no scaled square can overflow (their sum is at most 2**82), and a square that
# still underflows (below 2**-126) is under 2**-206 of the sum when the norm is near its bound.
# Powers of two make the scaling and its undoing exact. Only a tensor of more than 2**29 elements
# can have a norm so far below its bound that it is read once more, in float64.
SCALED_NORM_EXPONENT = 40
# float32 holds 2**k for |k| <= 126 as a normal number
MAX_SCALE_EXPONENT = 126
# the smallest float32 (2**-149) times 2**86 squares to float32's smallest normal number
NO_UNDERFLOW_EXPONENT = 86
# the largest finite float32: what one element of a tensor whose float32 norm overflowed may be
FLOAT32_MAX = torch.finfo(torch.float32).max
# On the CPU a fused norm runs one kernel per tensor (a few microseconds of dispatch each): small
# tensors of one shape (a transformer's blocks repeat theirs) are stacked, a chunk at a time, into
# one kept buffer and measured by one kernel per chunk, where the copy costs less than the
# dispatches it saves. The buffer (at most 2**16 elements, 256 KiB) stays in cache; a model whose
# stacked tensors are fewer than that keeps a buffer of their size and stacks each shape at once.
GROUPED_MAX_ELEMENTS = 4096
GROUPED_MIN_TENSORS = 4
GROUPED_BUFFER_ELEMENTS = 1 << 16


def stack_on(values: list[Tensor] | tuple[Tensor, ...], device: torch.device) -> Tensor:
    """Stack per-tensor results; a model spread over several devices has them on each."""
    if all(v.device == device for v in values):
        return torch.stack(values)
    return torch.stack([v.to(device, non_blocking=True) for v in values])


_PROBE = 2.0 ** -70
_probe: list[Tensor] = []


def _square_underflow_loss() -> float:
    """The most one float32 square can lose to underflow in the CPU norm kernel on this thread.

    Read from the kernel itself: 2**-70 squares to the subnormal 2**-140, which survives unless
    subnormal results are flushed to zero (a thread-wide CPU mode that libraries may set).
    """
    if not _probe:
        _probe.append(torch.full((16,), _PROBE, dtype=torch.float32, device="cpu"))
    norm = torch._foreach_norm(_probe, 2.0)[0]
    return SUBNORMAL_ROUNDING if float(norm) == 4 * _PROBE else FLOAT32_SMALLEST_NORMAL


_dtype_of = operator.attrgetter("dtype")


def _float32_on_cpu(tensors: list[Tensor]) -> bool:
    """Whether every tensor is float32 in CPU memory: there float32 passes are the fast ones."""
    # read on every call, so counted in C: one attribute read a tensor, no Python frame
    return tensors[0].is_cpu and operator.countOf(map(_dtype_of, tensors), torch.float32) == len(tensors)


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


class ScaledScratch:
    """What ``fused_norms`` keeps between calls over the same tensors (the monitor's every step).

    Memory for the scaled copy of a tensor it re-measures: one buffer, as large as the largest
    such tensor so far, written and read again at once (so it stays in cache); memory the process
    has not touched yet costs a page fault per 4 KiB, several times the copy itself. And which
    tensors needed scaling last time, with their powers of two: gradients vanish or explode over
    many steps, so the next call measures those scaled at once and reads each tensor once. A
    tensor that was all zeros (an update too small to change any weight) is remembered as such,
    and the next call reads only its largest |element|. And how to measure tensors of the shapes
    seen last time (``ShapeGroups``), worked out once for every call that sees them again.
    """

    def __init__(self) -> None:
        self._flat = torch.empty(0)
        self._views: dict[torch.Size, Tensor] = {}
        self._count = -1
        self._exponents: dict[int, int | None] = {}
        self._groups: ShapeGroups | None = None

    def like(self, t: Tensor) -> Tensor:
        """A float32 tensor shaped like ``t`` in the kept memory (grown when ``t`` is larger)."""
        view = self._views.get(t.shape)
        if view is None:
            # kept memory is written again by later calls, inside inference mode or not: made
            # outside it (an inference tensor may not be written outside inference mode)
            with torch.inference_mode(False):
                if self._flat.numel() < t.numel():
                    self._flat = torch.empty(t.numel(), dtype=torch.float32, device="cpu")
                    self._views.clear()
                view = self._views[t.shape] = self._flat[:t.numel()].view(t.shape)
        return view

    def exponents_for(self, count: int) -> dict[int, int | None]:
        """Position -> power of two of the tensors scaled last time (None: all zeros), if that call
        measured ``count`` tensors.

        Only a guess: every scaled norm is checked as if it had been chosen afresh, every zero by
        the tensor's largest |element|.
        """
        return self._exponents if count == self._count else {}

    def remember(self, count: int, exponents: dict[int, int | None]) -> None:
        self._count, self._exponents = count, exponents

    def float32_norms(self, tensors: list[Tensor]) -> tuple[Tensor, ShapeGroups]:
        """The float32 norm of every float32 CPU tensor, in order, and the plan that measured them
        (which knows their sizes)."""
        groups = self._groups
        if groups is not None and len(tensors) == len(groups.shapes):
            try:
                return groups.norms(tensors), groups
            except ShapesChanged:
                pass
            except RuntimeError:
                # a chunk's tensors no longer share a shape (a new plan), or a tensor cannot be
                # stacked at all, e.g. a sparse one (the plan stands: the caller's fallback)
                if [t.shape for t in tensors] == groups.shapes:
                    raise
        with torch.inference_mode(False):  # its buffers are kept memory, as in ``like``
            groups = self._groups = ShapeGroups([t.shape for t in tensors])
        return groups.norms(tensors), groups


class ShapesChanged(Exception):
    """A tensor no longer has the shape its ``ShapeGroups`` plan was made for."""


def _picker(positions: list[int]) -> Callable[[Sequence[Tensor]], tuple[Tensor, ...]]:
    """Picks the tensors at ``positions`` out of a list, as a tuple, in one C call."""
    if len(positions) == 1:
        only = positions[0]
        return lambda tensors: (tensors[only],)
    return operator.itemgetter(*positions)


class ShapeGroups:
    """How to measure float32 CPU tensors of the given shapes: the small tensors grouped by shape,
    measured a stacked chunk at a time, and the others one kernel each.

    Worked out once for many calls (the monitor measures the same parameters every step), so a
    call reads no list of shapes, sizes or positions: every norm is written in place into one
    vector, and the plan is checked as it goes, exactly and cheaply. Stacking refuses tensors of
    different shapes, so the first tensor of a chunk is compared with the plan and the stack
    checks the rest; the tensors measured one by one (large ones and shapes of their own: few)
    are compared one by one. Their dtype and device are the caller's to check.
    """

    def __init__(self, shapes: list[torch.Size]) -> None:
        self.shapes = shapes
        by_shape: dict[torch.Size, list[int]] = {}
        for i, shape in enumerate(shapes):
            if 0 < shape.numel() <= GROUPED_MAX_ELEMENTS:
                by_shape.setdefault(shape, []).append(i)
        groups = [positions for positions in by_shape.values() if len(positions) >= GROUPED_MIN_TENSORS]
        grouped = {i for positions in groups for i in positions}
        singles = [i for i in range(len(shapes)) if i not in grouped]
        # the buffer: as large as the grouped tensors (so a small model's take one chunk a shape)
        # up to 2**16 elements, at least one tensor of each shape (at most 4096 elements)
        total = sum(shapes[positions[0]].numel() * len(positions) for positions in groups)
        size = min(GROUPED_BUFFER_ELEMENTS, total)
        self._buffer = torch.empty(size if groups else 0, dtype=torch.float32)
        # every norm lands here, chunk after chunk and then the others: no list of results to
        # stack or concatenate
        self._measured = torch.empty(len(shapes), dtype=torch.float32)
        # per chunk: its picker, its shape, its place in the buffer (stacked, and one row a
        # tensor) and its place among the norms
        self._chunks: list[tuple[Callable[[Sequence[Tensor]], tuple[Tensor, ...]], torch.Size, Tensor, Tensor,
                                 Tensor]] = []
        measured: list[int] = []
        for positions in groups:
            shape = shapes[positions[0]]
            # as few chunks as the buffer allows, their sizes a tensor apart at most: no chunk of
            # one tensor left over (of 4 or more, each chunk holds 2 at least)
            count = -(-len(positions) // (size // shape.numel()))
            per, larger = divmod(len(positions), count)
            start = 0
            for c in range(count):
                chunk = positions[start:start + per + (c < larger)]
                start += len(chunk)
                stacked = self._buffer[:len(chunk) * shape.numel()].view(len(chunk), *shape)
                norms = self._measured[len(measured):len(measured) + len(chunk)]
                self._chunks.append((_picker(chunk), shape, stacked, stacked.view(len(chunk), -1), norms))
                measured.extend(chunk)
        self._single_norms = self._measured[len(measured):]
        self._pick_singles = _picker(singles) if singles else None
        self._single_shapes = [shapes[i] for i in singles]
        measured.extend(singles)
        # where each tensor's norm lands among the measured, in the tensors' own order
        self._order = torch.empty(len(shapes), dtype=torch.long)
        self._order[torch.tensor(measured, dtype=torch.long)] = torch.arange(len(shapes))
        self.numel = torch.tensor([shape.numel() for shape in shapes], dtype=NORM_DTYPE)
        self._trusted: dict[float, tuple[Tensor, Tensor]] = {}

    def trust_range(self, lost: float) -> tuple[Tensor, Tensor]:
        """``_trust_range`` of these tensors, kept."""
        bounds = self._trusted.get(lost)
        if bounds is None:
            bounds = self._trusted[lost] = _trust_range(self.numel, lost)
        return bounds

    def norms(self, tensors: Sequence[Tensor]) -> Tensor:
        """The float32 norm of every tensor, in order; ``ShapesChanged`` where a shape is not the plan's."""
        if torch.is_grad_enabled():
            # writing into the buffer (out=) must record no graph, so tensors that require grad
            # measure too (the monitor measures with gradients off already: no second context)
            with torch.no_grad():
                return self.norms(tensors)
        if not self._chunks:
            if [t.shape for t in tensors] != self.shapes:
                raise ShapesChanged
            return torch.stack(torch._foreach_norm(tensors, 2.0))
        for pick, shape, stacked, rows, norms in self._chunks:
            chunk = pick(tensors)
            if chunk[0].shape != shape:
                raise ShapesChanged
            torch.stack(chunk, out=stacked)  # refuses a tensor whose shape is not the first one's
            torch.linalg.vector_norm(rows, dim=1, out=norms)
        if self._pick_singles is not None:
            singles = self._pick_singles(tensors)
            if [t.shape for t in singles] != self._single_shapes:
                raise ShapesChanged
            torch.stack(torch._foreach_norm(singles, 2.0), out=self._single_norms)
        return self._measured[self._order]


def _trust_range(numel: Tensor, lost: float) -> tuple[Tensor, Tensor]:
    """Per tensor of ``numel`` elements, the least and the most square of a float32 norm trusted
    where each square loses up to ``lost`` to underflow: a million times what they can lose
    together, and float32's largest squared (no finite float32 norm squares past it; inf does)."""
    floor = numel * (lost * UNDERFLOW_MARGIN)
    return floor, torch.full_like(floor, FLOAT32_MAX * FLOAT32_MAX)


def fused_norms(tensors: list[Tensor], scratch: ScaledScratch | None = None) -> Tensor:
    """The L2 norm of every tensor, as one float64 vector, in a few fused kernels.

    On a GPU the fused kernels accumulate in float64 directly. On the CPU that upcast copies
    every tensor (several times a float32 pass), so the norms are taken in float32 (the
    accumulation's relative error grows with the size: ~1e-7 at 1e3 random-sign elements, ~1e-5
    at 1e6, ~5e-4 at 1e6 equal ones, whose rounding errors share a sign), and the tensors whose norm float32 cannot hold (so small that underflowed squares
    could matter, or overflowed: vanishing and exploding gradients) are measured again in
    float32, each multiplied by a power of two chosen from a bound on its norm so that its
    squares neither underflow nor overflow; the power is divided out in float64, exactly. The
    tensors are never written. ``scratch`` keeps the memory of the scaled copies, and which
    tensors needed them, between calls over the same tensors. Sparse and complex tensors are
    measured by their dense real forms.
    """
    if not tensors:
        return torch.zeros(0, dtype=NORM_DTYPE)
    return _with_plain_fallback(lambda ts: _fused_norms(ts, scratch), tensors)


def _fused_norms(tensors: list[Tensor], scratch: ScaledScratch | None) -> Tensor:
    if not _float32_on_cpu(tensors):
        return stack_on(torch._foreach_norm(tensors, 2.0, dtype=NORM_DTYPE), tensors[0].device)
    kept = scratch is not None
    scratch = scratch if scratch is not None else ScaledScratch()
    guessed = scratch.exponents_for(len(tensors))
    # what one square can lose to underflow, read from the kernel where some tensor needs it
    lost = _square_underflow_loss() if guessed else None
    plain = range(len(tensors)) if not guessed else [i for i in range(len(tensors)) if i not in guessed]
    plain_tensors = tensors if not guessed else [tensors[i] for i in plain]
    redo: list[tuple[int, float]] = []
    first = None
    exact_zeros: list[int] = []
    if plain_tensors:
        if kept:
            # stacked by shape only with a kept scratch: the grouping is worked out once for many calls
            first32, groups = scratch.float32_norms(plain_tensors)
            trust_range = groups.trust_range
        else:
            first32 = torch.stack(torch._foreach_norm(plain_tensors, 2.0))
            numel = torch.tensor([t.numel() for t in plain_tensors], dtype=NORM_DTYPE)
            trust_range = lambda loss: _trust_range(numel, loss)  # noqa: E731
        first = first32.to(NORM_DTYPE)
        squares = first.square()
        if lost is None:
            # trusted against the most a square can lose (flushed to zero) whatever the CPU's mode:
            # the usual call, which needs no probe of the kernel. In two kernels: a square clamped
            # into its range and left as it was is in it (nan equals nothing; inf is clamped)
            if torch.equal(squares.clamp(*trust_range(FLOAT32_SMALLEST_NORMAL)), squares):
                scratch.remember(len(tensors), {})
                return first
            lost = _square_underflow_loss()
        floor, ceiling = trust_range(lost)
        trusted = (squares >= floor) & (squares <= ceiling)
        # on the CPU this reads memory the norms are already in: no device transfer
        bad = (~trusted).nonzero().flatten().tolist()
        bad_norms = first[bad].tolist() if bad else []
        # a float32 norm of exactly 0 is exact when the largest |element| is 0 too (an all-zero
        # tensor, such as an update too small to change any weight): one read, no scaled copy
        zero = [j for j, value in zip(bad, bad_norms) if value == 0.0]
        if zero:
            largest = _max_abs([plain_tensors[j] for j in zero]).tolist()
            exact_zero = {j for j, value in zip(zero, largest) if value == 0.0}
            bad_norms = [value for j, value in zip(bad, bad_norms) if j not in exact_zero]
            bad = [j for j in bad if j not in exact_zero]
        if not bad and not guessed:
            scratch.remember(len(tensors), dict.fromkeys(exact_zero) if zero else {})
            return first
        exact_zeros = [plain[j] for j in exact_zero] if zero else []
        redo = list(zip([plain[j] for j in bad], bad_norms))
    # the few tensors measured scaled: put together as host floats, one tensor at the end
    norms = [0.0] * len(tensors)
    if first is not None:
        for i, value in zip(plain, first.tolist()):
            norms[i] = value
    exponents: dict[int, int | None] = dict.fromkeys(exact_zeros)
    zero_guesses = [i for i, exponent in guessed.items() if exponent is None]
    if zero_guesses:
        # still all zeros where the largest |element| is 0: its norm stays 0, exactly
        for i, value in zip(zero_guesses, _max_abs([tensors[i] for i in zero_guesses]).tolist()):
            if value == 0.0:
                exponents[i] = None
            else:
                redo.append((i, float(torch.linalg.vector_norm(tensors[i]))))
    for i, exponent in guessed.items():
        if exponent is None:
            continue
        value = _norm_scaled_by(tensors[i], exponent, lost, scratch)
        if value is None:  # the guess no longer fits: measured as if unscaled first
            redo.append((i, float(torch.linalg.vector_norm(tensors[i]))))
        else:
            norms[i] = value
            exponents[i] = exponent
    for i, first_norm in redo:
        exponent = _exponent_for(tensors[i].numel(), first_norm, lost)
        value = _norm_scaled_by(tensors[i], exponent, lost, scratch, bound_known=True)
        norms[i] = value if value is not None else float(torch.linalg.vector_norm(tensors[i], dtype=NORM_DTYPE))
        exponents[i] = exponent
    # a tensor whose norm float32 now holds unscaled is measured unscaled again next time
    scratch.remember(len(tensors), {i: e for i, e in exponents.items() if e is None or (
        math.isfinite(norms[i]) and not _float32_holds(norms[i], tensors[i].numel(), lost))})
    return torch.tensor(norms, dtype=NORM_DTYPE)


def _float32_holds(norm: float, n: int, lost: float) -> bool:
    """Whether a norm this large is measured exactly unscaled: its square below float32's largest
    number, and far above what underflow can take."""
    return n * lost * UNDERFLOW_MARGIN <= norm * norm < FLOAT32_MAX


def _exponent_for(n: int, first: float, lost: float) -> int:
    """The power of two that puts a bound of the norm at 2**40, from the float32 norm ``first``.

    The bound: a finite ``first`` lost at most n * ``lost`` of the sum of squares to underflow; an
    overflowed one comes from elements no larger than float32's largest.
    """
    bound = math.sqrt(first * first + n * lost) if math.isfinite(first) else math.sqrt(n) * FLOAT32_MAX
    return min(max(SCALED_NORM_EXPONENT - math.floor(math.log2(bound)), -MAX_SCALE_EXPONENT), MAX_SCALE_EXPONENT)


def _norm_scaled_by(t: Tensor, exponent: int, lost: float, scratch: ScaledScratch,
                    bound_known: bool = False) -> float | None:
    """The norm of a float32 CPU tensor measured on a copy times 2**``exponent``; None where that is not exact.

    With ``bound_known`` (the exponent comes from a bound of the norm) no scaled square can
    overflow, so a nan or inf norm is the tensor's own; the squares that still underflow are
    those of elements below 2**-103 of the bound, negligible unless the norm is far below its
    bound (None then: the caller reads the tensor in float64). A guessed exponent is exact only
    where the scaled norm is finite and far above underflow.
    """
    scaled_copy = scratch.like(t)
    # times a power of two: exact for every element whose scaled value is a normal float32; nan
    # and inf stay nan and inf
    torch.mul(t, math.ldexp(1.0, exponent), out=scaled_copy)
    scaled = float(torch.linalg.vector_norm(scaled_copy))
    if not math.isfinite(scaled):
        return math.ldexp(scaled, -exponent) if bound_known else None
    # scaled by 2**86 or more, every nonzero element (at least 2**-149) squares to a normal number
    if exponent >= NO_UNDERFLOW_EXPONENT or scaled * scaled >= t.numel() * lost * UNDERFLOW_MARGIN:
        return math.ldexp(scaled, -exponent)
    return None


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
