"""What the figures and the terminal view read from a run log: layers in order, steps, summaries."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from gradhealth.errors import ConfigError, unknown_name
from gradhealth.monitor.records import LAYER_METRICS, RunLog, StepRecord

__all__ = ["Runs", "METRIC_LABELS", "as_runs", "weight_layers", "pick_record", "has_layer_metric",
           "spans_decades", "check_metric", "update_ratio_stats", "finite_positive", "is_nonfinite"]

Runs = Mapping[str, RunLog] | RunLog

METRIC_LABELS = {
    "grad_norm": "gradient norm",
    "grad_norm_post_clip": "gradient norm after clipping",
    "grad_max": "largest |gradient|",
    "weight_norm": "weight norm",
    "update_ratio": "update-to-weight ratio",
    "grad_nonfinite": "NaN/Inf gradient elements",
}


def finite_positive(value: float | None) -> float:
    """The value if it can go on a log axis, else NaN (drawn as a gap)."""
    if value is None or not math.isfinite(value) or value <= 0:
        return math.nan
    return float(value)


def is_nonfinite(value: float | None) -> bool:
    return value is not None and not math.isfinite(value)


def as_runs(runs: Runs, label: str | None = None) -> dict[str, RunLog]:
    """``{label: log}`` from either a mapping or a single log (labelled by its model)."""
    if isinstance(runs, RunLog):
        return {label or runs.meta.model or "run": runs}
    if not runs:
        raise ConfigError("there are no runs to plot; pass at least one run log.")
    return dict(runs)


def weight_layers(log: RunLog) -> list[str]:
    """Weight layers in forward order: from the log's metadata, else in the order records list them."""
    names = log.meta.names("weight")
    if names:
        return names
    seen: dict[str, None] = {}
    for record in log.records:
        seen.update(dict.fromkeys(record.layers))
    return list(seen)


def pick_record(log: RunLog, step: str | int) -> StepRecord:
    """The record at ``step``: "first", "last", or a logged step number."""
    if step == "first":
        return log.records[0]
    if step == "last":
        return log.records[-1]
    if isinstance(step, int) and not isinstance(step, bool):
        for record in log.records:
            if record.step == step:
                return record
        raise ConfigError(f"step {step} is not in the log (it holds steps {log.records[0].step} to "
                          f"{log.records[-1].step}); pass a logged step, 'first' or 'last'.")
    raise unknown_name("step", step, ["first", "last", "<a logged step number>"])


def has_layer_metric(log: RunLog, metric: str) -> bool:
    """Whether any record measured ``metric`` for any layer."""
    return any(getattr(s, metric, None) is not None for r in log.records for s in r.layers.values())


def spans_decades(values: Sequence[float], decades: float = 2.0) -> bool:
    """Whether positive ``values`` span ``decades`` powers of ten or more (then a log axis reads better)."""
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 10 ** decades


def check_metric(metric: str) -> None:
    if metric not in LAYER_METRICS:
        raise unknown_name("layer metric", metric, LAYER_METRICS)


def update_ratio_stats(log: RunLog) -> tuple[list[int], list[float], list[float], list[float]]:
    """Per step that was not skipped: the 10th, 50th and 90th percentile of the weight layers' update ratios.

    Zero, missing and NaN/Inf ratios are left out; a step with none left gets NaN (a gap).
    """
    import numpy as np

    names = weight_layers(log)
    steps, low, median, high = [], [], [], []
    for record in log.records:
        if record.skipped:
            continue
        values = [finite_positive(record.layers[n].update_ratio) for n in names if n in record.layers]
        values = [v for v in values if not math.isnan(v)]
        q10, q50, q90 = np.percentile(values, [10, 50, 90]) if values else (math.nan,) * 3
        steps.append(record.step)
        low.append(float(q10))
        median.append(float(q50))
        high.append(float(q90))
    return steps, low, median, high
