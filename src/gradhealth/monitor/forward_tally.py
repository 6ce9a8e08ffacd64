"""What the forward hooks of one detailed step measure, kept as 0-d tensors and stacked once.

A forward hook runs once per module call, so its cost is paid dozens of times per step; it
therefore does only the reductions that need the output tensor (one kernel each) and leaves
everything else (stacking, squaring, turning counts into fractions, pooling the calls of a
module, finding the first bad one) to ``pieces()`` on the device and ``summarize_calls()`` on
the host, once per step.

Per call of a weight layer: whether its output holds a NaN or an Inf, exactly. On the CPU, where
reading a number costs no wait, that is read from the output's sum: an Inf or a NaN makes any sum
infinite or NaN, so a finite sum says every element is finite; a sum that is not finite (a NaN,
an Inf, or finite outputs large enough to overflow it) is followed by the output's smallest and
largest element, which tell the two apart. Elsewhere the extremes are taken for every call.
Per call of an activation, in addition: its mean and spread, and the count of saturated elements
and of units that were off for the whole batch, by the activation's own rule. The variance
``sum(x^2)/n - mean^2`` must not cancel: a saturated sigmoid's outputs sit near 1 with a spread of
1e-4, and in float32 that difference would lose every digit. So the spread is taken about a
centre near the mean (the mean of the first row's last dim) as the sum and the L2 norm of the
deviations, written into one scratch tensor kept from call to call, except on the CPU where the
output's own sum and L2 norm are read first (two kernels, no write, and no wait on the CPU; the
sum is the one that says whether the output is finite) and kept when
``mean^2 <= RAW_MOMENT_RATIO * variance`` (ReLU, GELU and tanh outputs nearly always): there the
variance's relative error is at most about ``2 (1 + RAW_MOMENT_RATIO)`` = 22 times the larger
relative rounding of the two sums, which for float32 is about 5e-8 for a sum and 1e-5 for the L2
norm of two million elements (measured): about 2e-4 of the variance, 1e-4 of the std. A tight
spread about a large mean fails the test and is measured about a centre; that module's next
output starts there (a saturated layer stays saturated), without the two raw sums, until its
mean no longer dwarfs its spread. Sums accumulate in float32 (float64 for a float64 model).

A ReLU's rules are both read from one mask: its output is off (saturated) where ``out <= 0``,
and a unit is dead where its largest output is ``<= 0``, that is where every one of its outputs
is off (a NaN output is neither, so a unit with one is not dead). The mask goes into the scratch
tensor as 0 or 1 and is summed per unit: a unit is dead where its count of off outputs is its
number of outputs, and a call's counts add up to its saturated elements, exactly (a unit's count
is summed in float32, exact up to 2^24 outputs, in float64 past that; the units are added in
``pieces()`` in float64). The units' counts of all ReLU calls of a step are reduced together
there. Per ReLU call the hook thus runs four kernels over the output on the CPU (sum, L2 norm,
mask, its sums per unit; four more when the spread is measured about a centre, one more when the
sum is not finite) and allocates nothing the size of the output.

The units of an activation are its channels (dim 1) after a convolution or a BatchNorm /
GroupNorm, and its features (the last dim) after a Linear or a LayerNorm, as in a (batch,
sequence, features) transformer.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gradhealth.layers.activations import ActivationRule
from gradhealth.tensor_norms import stack_on

__all__ = ["CallInfo", "ForwardTally", "Scratch", "summarize_calls"]

# how a count was taken: "mask" counts where the rule holds; "units" marks a ReLU call, whose
# off elements and dead units are counted once per step for all ReLU calls together from its
# units' counts of off outputs
MASK, UNITS = "mask", "units"

# On the CPU an output's own sum and sum of squares are kept where mean^2 <= this * variance: the
# variance they give is then off by at most 2 (1 + this) times the sums' rounding (module docstring)
RAW_MOMENT_RATIO = 10.0

# float32 and float64 reduce in their own dtype (a dtype argument costs a conversion step even
# when it changes nothing); half precision accumulates in float32
_OWN_ACCUMULATOR = (torch.float32, torch.float64)

# float32 counts every integer up to here exactly
_FLOAT32_EXACT = 2 ** 24

# distinct output shapes whose scratch views are kept (a model with varying shapes keeps no more)
_MAX_VIEWS = 64


@dataclass(frozen=True)
class CallInfo:
    """Host-side facts about one measured call: which module, and what its counts mean."""

    name: str
    rule: ActivationRule | None = None  # None: a weight layer (only whether its output is finite)
    elements: int = 0
    units: int = 0
    saturated: str | None = None
    dead: str | None = None
    # True: its output's extremes were taken (two values in fwd_extremes); False: its sum was
    # read on the CPU and was finite, so the output is
    extremes: bool = True


# A call's facts repeat every step: one shared CallInfo per distinct set (they are frozen) costs
# a cache lookup, a new one several times as much (bounded: a model's calls, and no more)
_call_info = functools.lru_cache(maxsize=4096)(CallInfo)


class Scratch:
    """What the tally keeps from call to call and step to step: memory for the deviations or the
    ReLU mask of one activation output, and which modules' outputs were last measured about a centre.

    On the CPU a fresh tensor the size of an activation costs page faults each time (a 128 KiB
    one about as much as the ReLU that made it); a kept one grows to the largest output measured
    and stays that size, and its view for each output shape is kept too (slicing and viewing a
    small output cost as much as a pass over it). A GPU's caching allocator already reuses freed
    memory, so there each call takes a fresh tensor.
    """

    def __init__(self) -> None:
        self._flat: dict[torch.dtype, Tensor] = {}
        self._views: dict[tuple[torch.Size, torch.dtype], Tensor] = {}
        # modules whose last output failed the raw-moment test: their next is measured about a
        # centre first (a saturated layer stays saturated), saving the raw sum and L2 norm
        self.centred: set[str] = set()

    def like(self, x: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """A contiguous tensor of ``x``'s shape, in ``dtype`` (``x``'s by default), its contents undefined."""
        dtype = dtype or x.dtype
        if not x.is_cpu:
            return torch.empty(x.shape, dtype=dtype, device=x.device)
        key = (x.shape, dtype)
        view = self._views.get(key)
        if view is not None:
            return view
        n = x.numel()
        flat = self._flat.get(dtype)
        if flat is None or flat.numel() < n:
            # the views of the smaller buffer would keep it alive: they go with it
            self._views = {k: v for k, v in self._views.items() if k[1] != dtype}
            flat = self._flat[dtype] = torch.empty(n, dtype=dtype)
        if len(self._views) >= _MAX_VIEWS:
            self._views.clear()
        view = self._views[key] = flat[:n].view(x.shape)
        return view

    def release(self) -> None:
        self._flat.clear()
        self._views.clear()
        self.centred.clear()


class ForwardTally:
    """The forward statistics of one step, gathered call by call in the hooks."""

    def __init__(self, scratch: Scratch | None = None) -> None:
        self._scratch = scratch if scratch is not None else Scratch()
        self.calls: list[CallInfo] = []
        # whether the last weight layer that ran keeps its features in the last dim (a Linear)
        self._features_last = False
        self._extremes: list[Tensor] = []  # per call with extremes: min and max of the output (its own dtype)
        # per activation call: sum, L2 norm about a centre, the centre
        self._moments: list[Tensor] = []
        # per activation call: saturated elements by a mask, then dead units (int64, exact)
        self._counts: list[Tensor] = []
        # per ReLU call: each unit's count of off outputs, and how many outputs a unit has,
        # reduced for all calls at once in pieces()
        self._unit_counts: list[Tensor] = []
        self._unit_sizes: list[int] = []
        # the centre of the moments taken about zero, one 0-d tensor per device and dtype
        self._zeros: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def __bool__(self) -> bool:
        return bool(self.calls)

    def add_layer(self, name: str, out: Tensor, features_last: bool = False) -> None:
        x = out.detach()
        self._features_last = features_last
        acc = None if x.dtype in _OWN_ACCUMULATOR else torch.float32
        extremes = not (_reads_cost_no_wait(x) and _finite(x.sum(dtype=acc)))
        if extremes:
            self._extremes.extend(torch.aminmax(x))
        self.calls.append(_call_info(name, None, 0, 0, None, None, extremes))

    def add_activation(self, name: str, rule: ActivationRule, module: nn.Module, inp: Tensor | None,
                       out: Tensor) -> None:
        x = out.detach()
        ndim = x.dim()
        unit_dim = ndim - 1 if self._features_last else 1
        units = x.shape[unit_dim] if ndim >= 2 else 0
        acc = None if x.dtype in _OWN_ACCUMULATOR else torch.float32
        cpu = _reads_cost_no_wait(x)
        # on the CPU a module whose last output was measured about a centre starts there; its
        # deviations' sum then says whether the output is finite (finite deviations from a
        # finite centre are finite outputs; a NaN or an Inf anywhere makes their sum so)
        centred_first = cpu and name in self._scratch.centred
        total = x.sum(dtype=acc) if cpu and not centred_first else None
        extremes = not (total is not None and _finite(total))
        if extremes and not centred_first:
            self._extremes.extend(torch.aminmax(x))
        deviations = None
        if centred_first or not (cpu and self._raw_moments(x, acc, total)):
            # a centre near the mean, from a few elements (a view: no copy): the last dim of the
            # first row; the extremes' midpoint would do for a saturated layer but not for a
            # ReLU's long tail
            center = x[(0,) * (ndim - 1)].mean(dtype=acc) if ndim else x.to(acc or x.dtype)
            # the deviations' sum gives the mean as centre + sum/n, as exact as the deviations,
            # which half precision takes in float32: a 0-d float32 centre would be rounded to
            # half and so would every deviation, and those of a ReLU's many zeros would all round
            # the same way and bias the mean (a centre with dims makes the subtraction float32)
            subtracted = center if acc is None else center.reshape((1,) * ndim)
            deviations = torch.sub(x, subtracted, out=self._scratch.like(x, acc))
            offset, spread = deviations.sum(dtype=acc), torch.linalg.vector_norm(deviations, dtype=acc)
            self._moments += [offset, spread, center]
            if centred_first:
                extremes = self._note_centred(name, x, center, offset, spread)
            elif cpu:
                self._scratch.centred.add(name)  # the raw test failed: start about a centre next time
        saturated = dead = None
        if rule.zero_is_off:
            # ReLU: its mask out <= 0 as 0 or 1, written into the deviations' memory (read
            # already; a bool mask would cost an allocation, and counting it several times as
            # long on the CPU), summed per unit
            off = torch.le(x, 0, out=self._scratch.like(x) if deviations is None else deviations)
            size = x.numel() // units if units else x.numel()
            # float32 and float64 count in their own dtype up to where float32 is exact
            exact = x.dtype is torch.float64 or (x.dtype is torch.float32 and size <= _FLOAT32_EXACT)
            count_dtype = None if exact else torch.float32 if size <= _FLOAT32_EXACT else torch.float64
            if units:
                self._unit_counts.append(off.sum(_other_dims(ndim, unit_dim), dtype=count_dtype))
            else:  # no units: the output counts as one
                self._unit_counts.append(off.sum(dtype=count_dtype).reshape(1))
            self._unit_sizes.append(size)
            saturated = UNITS
            dead = UNITS if rule.dead is not None and units else None
        elif rule.saturated is not None and (inp is not None or not rule.uses_input):
            self._counts.append(torch.count_nonzero(rule.saturated(module, None if inp is None else inp.detach(), x)))
            saturated = MASK
        if dead is None and rule.dead is not None and units:
            # a unit is off for the whole batch when its largest output says so
            unit_max = x.amax(dim=_other_dims(ndim, unit_dim))
            self._counts.append(torch.count_nonzero(rule.dead(unit_max)))
            dead = MASK
        self.calls.append(_call_info(name, rule, x.numel(), units, saturated, dead, extremes))

    def _note_centred(self, name: str, x: Tensor, center: Tensor, offset: Tensor, spread: Tensor) -> bool:
        """After measuring about a centre first: whether the output's extremes are needed (its
        deviations were not finite), and whether the module starts about a centre next time."""
        n = x.numel()
        shift, square = float(offset) / n, float(spread) ** 2 / n
        if not (math.isfinite(shift) and math.isfinite(square)):
            self._extremes.extend(torch.aminmax(x))
            return True
        mean = float(center) + shift
        if mean * mean <= RAW_MOMENT_RATIO * (square - shift * shift):
            self._scratch.centred.discard(name)  # no longer dwarfed by the mean: raw sums next time
        return False

    def _raw_moments(self, x: Tensor, acc: torch.dtype | None, total: Tensor) -> bool:
        """On the CPU: keep the sum (``total``) and L2 norm of ``x`` itself (centre 0) where the
        variance they give is trustworthy; whether they were kept. Reading them costs no wait on the CPU."""
        norm = torch.linalg.vector_norm(x, dtype=acc)
        n = x.numel()
        mean = float(total) / n
        square = float(norm) ** 2 / n
        if math.isfinite(mean) and math.isfinite(square) and mean * mean > RAW_MOMENT_RATIO * (square - mean * mean):
            return False  # the mean dwarfs the spread: measure it about a centre instead
        key = (x.device, total.dtype)
        zero = self._zeros.get(key)
        if zero is None:
            zero = self._zeros[key] = torch.zeros((), dtype=total.dtype, device=x.device)
        self._moments += [total, norm, zero]
        return True

    def pieces(self, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        """The step's numbers as three flat tensors of ``dtype`` on ``device`` (few kernels).

        ``fwd_extremes``: min and max per call that took them; ``act_moments``: sum, L2 norm
        and centre per activation call; ``act_counts``: the counts by a mask in call order, then
        per ReLU call its dead units, then per ReLU call its saturated (off) elements.
        """
        out = {}
        for key, values in (("fwd_extremes", self._extremes), ("act_moments", self._moments),
                            ("act_counts", self._counts)):
            if values:
                # counts are stacked as int64, so the cast to float64 keeps them exact
                out[key] = stack_on(values, device).to(dtype)
        if self._unit_counts:
            per_call = self._reduce_unit_counts(device, dtype)
            out["act_counts"] = torch.cat([out["act_counts"], per_call]) if "act_counts" in out else per_call
        return out

    def _reduce_unit_counts(self, device: torch.device, dtype: torch.dtype) -> Tensor:
        """Per ReLU call its dead units, then per ReLU call its off elements: a few kernels for all."""
        lengths = tuple(c.numel() for c in self._unit_counts)
        counts = torch.cat([c.to(device, dtype, non_blocking=True) for c in self._unit_counts])
        call = _call_index(lengths, device)
        sizes = _unit_sizes(lengths, tuple(self._unit_sizes), device, dtype)
        calls = len(lengths)
        # a unit is dead where every one of its outputs was off
        dead = torch.zeros(calls, dtype=dtype, device=device).index_add_(0, call, (counts == sizes).to(dtype))
        off = torch.zeros(calls, dtype=dtype, device=device).index_add_(0, call, counts)
        return torch.cat([dead, off])


@functools.lru_cache(maxsize=64)
def _other_dims(ndim: int, unit_dim: int) -> tuple[int, ...]:
    """The dims of an output other than its units' dim: those a per-unit count reduces."""
    return tuple(d for d in range(ndim) if d != unit_dim)


def _reads_cost_no_wait(x: Tensor) -> bool:
    """Whether a number computed from ``x`` can be read on the host without waiting for a device:
    on the CPU it is ready when the kernel returns."""
    return x.is_cpu


def _finite(total: Tensor) -> bool:
    """Whether a CPU sum is finite, which says every element summed is: a NaN or an Inf makes
    any sum NaN or infinite. Not finite, the sum says nothing (finite elements may overflow it)."""
    return math.isfinite(float(total))


@functools.lru_cache(maxsize=16)
def _call_index(lengths: tuple[int, ...], device: torch.device) -> Tensor:
    """Which call each unit belongs to; the same every step, so made once (no transfer after that)."""
    counts = torch.tensor(lengths)
    return torch.repeat_interleave(torch.arange(len(lengths)), counts).to(device)


@functools.lru_cache(maxsize=16)
def _unit_sizes(lengths: tuple[int, ...], sizes: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> Tensor:
    """How many outputs each unit has, unit by unit (as ``_call_index``: made once)."""
    return torch.repeat_interleave(torch.tensor(sizes, dtype=dtype), torch.tensor(lengths)).to(device)


def summarize_calls(calls: list[CallInfo], extremes: list[float], moments: list[float],
                    counts: list[float]) -> tuple[dict[str, dict[str, float | None]], list[str]]:
    """Per activation module, its calls pooled into ActivationStats fields; the bad calls in order.

    Returns ``{name: {mean, std, saturation, dead_fraction, nonfinite}}`` (a fraction is None
    where it was not measured: no rule, or an in-place activation whose rule needs the input)
    and, in the order they ran, the names of the calls whose output held a NaN or an Inf.
    """
    pooled: dict[str, dict[str, float]] = {}
    bad: list[str] = []
    # the counts by a mask first, then per ReLU call its dead units, then per ReLU call its off
    # elements
    e, m, c = 0, 0, 0
    dead = sum((call.saturated == MASK) + (call.dead == MASK) for call in calls)
    off = dead + sum(call.saturated == UNITS for call in calls)
    for call in calls:
        if call.extremes:
            finite = math.isfinite(extremes[e]) and math.isfinite(extremes[e + 1])
            e += 2
        else:
            finite = True  # its sum was read and finite
        if not finite:
            bad.append(call.name)
        if call.rule is None:
            continue
        offset, spread, center = moments[m:m + 3]
        m += 3
        row = pooled.setdefault(call.name, dict.fromkeys(
            ("mean", "m2", "elements", "units", "saturated", "sat_elements", "dead", "dead_units", "bad"), 0.0))
        _pool_moments(row, call.elements, center, offset, spread)
        row["units"] += call.units
        row["bad"] += 0.0 if finite else 1.0
        if call.saturated == MASK:
            row["saturated"] += counts[c]
            c += 1
        elif call.saturated == UNITS:
            row["saturated"] += counts[off]
            if call.dead == UNITS:
                row["dead"] += counts[dead]
            dead += 1
            off += 1
        if call.saturated is not None:
            row["sat_elements"] += call.elements
        if call.dead == MASK:
            row["dead"] += counts[c]
            c += 1
        if call.dead is not None:
            row["dead_units"] += call.units
    return {name: _summary(row) for name, row in pooled.items()}, bad


def _pool_moments(row: dict[str, float], n: int, center: float, offset: float, spread: float) -> None:
    """Add one call's elements to a module's running mean and sum of squared deviations.

    ``offset`` and ``spread`` are the sum and the L2 norm of the call's deviations from
    ``center``: its mean is ``center + offset / n`` and its squared deviations from that mean sum
    to ``spread^2 - offset^2 / n``, where both terms are of the size of the spread itself when
    the centre is near the mean, so little cancels. Calls are pooled as Chan et al. pool
    variances.
    """
    mean = center + offset / n
    if math.isfinite(spread):
        m2 = max(spread * spread - offset * offset / n, 0.0)
    else:  # exploding or non-finite activations are reported as they are: inf or NaN
        m2 = spread
    before = row["elements"]
    total = before + n
    delta = mean - row["mean"]
    row["mean"] += delta * n / total
    row["m2"] += m2 + (delta * delta * before * n / total if before else 0.0)
    row["elements"] = total


def _summary(row: dict[str, float]) -> dict[str, float | None]:
    """Mean, std, saturation and dead fraction from one module's pooled moments."""
    var = row["m2"] / row["elements"]
    return {
        "mean": row["mean"],
        "std": math.sqrt(var) if math.isfinite(var) else var,
        "saturation": row["saturated"] / row["sat_elements"] if row["sat_elements"] else None,
        "dead_fraction": row["dead"] / row["dead_units"] if row["dead_units"] else None,
        "nonfinite": int(row["bad"] > 0),
    }
