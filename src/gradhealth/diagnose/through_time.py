"""The gradient through time of a recurrent module, from ``StepRecord.time_grads`` (no torch).

``time_grads[module][t]`` is ||dL/dx_t||: everything backpropagation through time sends back to
input step t. Backward through time multiplies it by one Jacobian per step, as backward through
depth multiplies by one per layer (Bengio et al. 1994; Pascanu et al. 2013), so the same geometric
reading applies, counted in steps back from the last one.
"""
from __future__ import annotations

import math
from statistics import median
from typing import Any

import numpy as np

from gradhealth.monitor.records import RunLog

__all__ = ["VANISHED_FRACTION", "time_profiles"]

# A step whose gradient is below a thousandth of the last step's adds less to the update than the
# rounding of the last step's share in float32 sums of a few thousand terms, and three decades is
# where Bengio et al. 1994's simple RNNs stopped learning dependencies: that step is out of reach.
VANISHED_FRACTION = 1e-3


def _median_series(series: list[list[float]]) -> list[float]:
    """Element-wise median over the records of the most common sequence length."""
    lengths = [len(s) for s in series]
    length = max(set(lengths), key=lambda n: (lengths.count(n), n))
    same = [s for s in series if len(s) == length]
    out = []
    for values in zip(*same):
        finite = [v for v in values if math.isfinite(v)]
        out.append(float(median(finite)) if finite else math.nan)
    return out


def _num(value: float) -> float:
    return float(f"{value:.4g}")


def time_profiles(log: RunLog) -> dict[str, dict[str, Any]]:
    """Per module: the median per-t norms over the detailed records, the per-step factor and the horizon.

    ``factor`` is 10**slope of a least-squares fit of log10 ||g_t|| against the steps back from
    the last, over the positive values: what each step back multiplies the gradient by.
    ``horizon`` is how many steps back from the last the gradient first falls below
    ``VANISHED_FRACTION`` of its last value (exactly zero counts as fallen); None when it never does.
    ``first_last_ratio`` is ||g_0|| / ||g_{T-1}||.
    """
    series: dict[str, list[list[float]]] = {}
    for record in log.records:
        for name, values in record.time_grads.items():
            if values:
                series.setdefault(name, []).append([float(v) for v in values])
    out = {}
    for name, runs in series.items():
        norms = _median_series(runs)
        length = len(norms)
        last = norms[-1]
        back = list(reversed(norms))  # back[s]: s steps before the last
        positive = [(s, v) for s, v in enumerate(back) if math.isfinite(v) and v > 0]
        factor = None
        if len(positive) >= 2:
            x, y = zip(*positive)
            factor = _num(10 ** float(np.polyfit(np.array(x, float), np.log10(y), 1)[0]))
        horizon = None
        if math.isfinite(last) and last > 0:
            horizon = next((s for s, v in enumerate(back) if math.isfinite(v) and v < VANISHED_FRACTION * last), None)
        first = norms[0]
        ratio = first / last if math.isfinite(first) and math.isfinite(last) and last > 0 else None
        out[name] = {
            "length": length,
            "records": len(runs),
            "factor": factor,
            "horizon": horizon,
            "first_last_ratio": None if ratio is None else _num(ratio),
            "nonfinite": sum(not math.isfinite(v) for v in norms),
            # sampled norms for the evidence: the last step and every tenth of the sequence back from it
            "norms_back": [[s, _num(back[s]) if math.isfinite(back[s]) else None]
                           for s in sorted({round(i * (length - 1) / 10) for i in range(11)})],
        }
    return out
