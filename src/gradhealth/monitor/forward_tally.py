"""What the forward hooks of one detailed step measure, kept as 0-d tensors and stacked once.

A forward hook runs once per module call, so its cost is paid dozens of times per step; it
therefore does only the reductions that need the output tensor (one kernel each) and leaves
everything else (stacking, squaring, turning counts into fractions, pooling the calls of a
module, finding the first bad one) to ``pieces()`` on the device and ``summarize_calls()`` on
the host, once per step.

Per call of a weight layer: the output's smallest and largest element, which tell exactly
whether it holds a NaN or an Inf (a sum would call a finite but exploding tensor non-finite).
Per call of an activation, in addition: the sum and the L2 norm of the output's deviations from
a centre near its mean (the mean of a few of its elements), and the count of saturated elements
and of units that were off for the whole batch, by the activation's own rule. The spread is
taken about that centre, not about zero: a saturated sigmoid's outputs sit near 1 with a spread
of 1e-4, and ``sum(x^2)/n - mean^2`` in float32 would cancel every digit of it. Sums accumulate
in float32 (float64 for a float64 model).

The units of an activation are its channels (dim 1) after a convolution or a BatchNorm /
GroupNorm, and its features (the last dim) after a Linear or a LayerNorm, as in a (batch,
sequence, features) transformer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gradhealth.layers.activations import ActivationRule
from gradhealth.tensor_norms import stack_on

__all__ = ["CallInfo", "ForwardTally", "summarize_calls"]

# how a count was taken: "mask" counts where the rule holds, "nonzero" counts the nonzero
# elements of a ReLU output (off exactly where it is zero), so the rule holds for the rest
MASK, NONZERO = "mask", "nonzero"


@dataclass(frozen=True)
class CallInfo:
    """Host-side facts about one measured call: which module, and what its counts mean."""

    name: str
    rule: ActivationRule | None = None  # None: a weight layer (only its extremes are read)
    elements: int = 0
    units: int = 0
    saturated: str | None = None
    dead: str | None = None


class ForwardTally:
    """The forward statistics of one step, gathered call by call in the hooks."""

    def __init__(self) -> None:
        self.calls: list[CallInfo] = []
        # whether the last weight layer that ran keeps its features in the last dim (a Linear)
        self._features_last = False
        self._extremes: list[Tensor] = []  # per call: min and max of the output (its own dtype)
        # per activation call: sum, L2 norm about a centre, the centre, then the nonzero
        # count of a ReLU output
        self._moments: list[Tensor] = []
        # per activation call: saturated elements by a mask, then dead units (int64, exact)
        self._counts: list[Tensor] = []

    def __bool__(self) -> bool:
        return bool(self.calls)

    def add_layer(self, name: str, out: Tensor, features_last: bool = False) -> None:
        self._extremes.extend(torch.aminmax(out.detach()))
        self._features_last = features_last
        self.calls.append(CallInfo(name))

    def add_activation(self, name: str, rule: ActivationRule, module: nn.Module, inp: Tensor | None,
                       out: Tensor) -> None:
        x = out.detach()
        self._extremes.extend(torch.aminmax(x))
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        # a centre near the mean, from a few elements (a view: no copy): the last dim of the first
        # row; the extremes' midpoint would do for a saturated layer but not for a ReLU's long tail
        center = x[(0,) * (x.dim() - 1)].mean(dtype=acc) if x.dim() else x.to(acc)
        # the deviations' sum gives the mean as centre + sum/n, as exact as the deviations themselves
        deviations = x - center
        self._moments += [deviations.sum(dtype=acc), torch.linalg.vector_norm(deviations, dtype=acc), center]
        saturated = dead = None
        if rule.zero_is_off:
            # ReLU: the nonzero elements, counted as the sum of their signs (0 or 1), 15 times
            # faster on the CPU than count_nonzero of a float tensor; float32, so past 2^24
            # elements the count may be off by a few parts in 10^7, nothing a fraction shows;
            # a NaN in the output makes it NaN, and the call is reported non-finite anyway
            self._moments.append(x.sign().sum(dtype=torch.float32))
            saturated = NONZERO
        elif rule.saturated is not None and (inp is not None or not rule.uses_input):
            self._counts.append(torch.count_nonzero(rule.saturated(module, None if inp is None else inp.detach(), x)))
            saturated = MASK
        unit_dim = x.dim() - 1 if self._features_last else 1
        units = x.shape[unit_dim] if x.dim() >= 2 else 0
        if rule.dead is not None and units:
            # a unit is off for the whole batch when its largest output says so
            unit_max = x.amax(dim=[d for d in range(x.dim()) if d != unit_dim])
            if rule.zero_is_off:
                self._counts.append(torch.count_nonzero(unit_max))
                dead = NONZERO
            else:
                self._counts.append(torch.count_nonzero(rule.dead(unit_max)))
                dead = MASK
        self.calls.append(CallInfo(name, rule, x.numel(), units, saturated, dead))

    def pieces(self, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
        """The step's numbers as three flat tensors of ``dtype`` on ``device`` (few kernels)."""
        out = {}
        for key, values in (("fwd_extremes", self._extremes), ("act_moments", self._moments),
                            ("act_counts", self._counts)):
            if values:
                # counts are stacked as int64, so the cast to float64 keeps them exact
                out[key] = stack_on(values, device).to(dtype)
        return out


def summarize_calls(calls: list[CallInfo], extremes: list[float], moments: list[float],
                    counts: list[float]) -> tuple[dict[str, dict[str, float | None]], list[str]]:
    """Per activation module, its calls pooled into ActivationStats fields; the bad calls in order.

    Returns ``{name: {mean, std, saturation, dead_fraction, nonfinite}}`` (a fraction is None
    where it was not measured: no rule, or an in-place activation whose rule needs the input)
    and, in the order they ran, the names of the calls whose output held a NaN or an Inf.
    """
    pooled: dict[str, dict[str, float]] = {}
    bad: list[str] = []
    m = c = 0
    for i, call in enumerate(calls):
        finite = math.isfinite(extremes[2 * i]) and math.isfinite(extremes[2 * i + 1])
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
        elif call.saturated == NONZERO:
            row["saturated"] += call.elements - moments[m]
            m += 1
        if call.saturated is not None:
            row["sat_elements"] += call.elements
        if call.dead is not None:
            row["dead"] += counts[c] if call.dead == MASK else call.units - counts[c]
            row["dead_units"] += call.units
            c += 1
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
