"""The studies' own compositions of the report's charts: measured beside predicted in one colour, and
loss curves smoothed for reading, twins told apart by line style (drawing: ``report/charts.py``)."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from gradhealth.monitor.records import RunLog
from gradhealth.report.charts import Line, lines_chart
from gradhealth.report.svg import Figure

__all__ = ["paired_chart", "loss_chart"]


def paired_chart(series: Mapping[str, tuple[Sequence[float], Sequence[float | None], Sequence[float | None]]], *,
                 title: str, xlabel: str, ylabel: str, caption: str, logy: bool = False,
                 predicted: str = "theory", guides: Mapping[str, float] | None = None) -> Figure:
    """``{label: (xs, measured, predicted)}``: measured as open dots on the predicted dashed line, one colour each."""
    lines = []
    for index, (label, (xs, measured, expected)) in enumerate(series.items()):
        lines.append(Line(label, xs, expected, index, dashed=True, markers=False, legend=False))
        lines.append(Line(label, xs, measured, index, joined=False))
    return lines_chart(lines, title=title, xlabel=xlabel, ylabel=ylabel, caption=caption, logy=logy, guides=guides,
                       styles={"measured": "dots", predicted: "dashed"})


def _running_mean(values: Sequence[float | None], window: int) -> list[float | None]:
    """Mean of the last ``window`` values; a NaN/Inf value stays as it is and restarts the window."""
    out: list[float | None] = []
    recent: list[float] = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(v)
            recent = []
            continue
        recent = (recent + [v])[-window:]
        out.append(sum(recent) / len(recent))
    return out


def loss_chart(runs: Mapping[str, RunLog], *, title: str, caption: str, logy: bool = False,
               styles: Mapping[str, tuple[int, bool]] | None = None,
               style_keys: Mapping[str, str] | None = None) -> Figure:
    """Training loss per step, one line per run, as a running mean over ~1/25 of the run (stated in the caption).

    ``styles`` maps a label to (colour index, dashed); ``style_keys`` adds grey legend keys.
    """
    steps = max((len(log.records) for log in runs.values()), default=1)
    window = max(1, steps // 25)
    lines = []
    for index, (label, log) in enumerate(runs.items()):
        color, dashed = (styles or {}).get(label, (index, False))
        lines.append(Line(label, [r.step for r in log.records], _running_mean([r.loss for r in log.records], window),
                          color, dashed, markers=False))
    smoothing = f" Each line is a running mean over {window} steps." if window > 1 else ""
    return lines_chart(lines, title=title, xlabel="optimizer step",
                       ylabel="training loss" + (" (log scale)" if logy else ""), logy=logy,
                       caption=caption + smoothing, styles=style_keys)
