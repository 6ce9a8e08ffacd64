"""Charts the studies need beyond :mod:`gradhealth.report.figures`: measured beside predicted in one
colour, twins told apart by line style, ratios drawn from 1, loss curves smoothed for reading.

All share the report's house style and return a report ``Figure`` (inline SVG + caption).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gradhealth.monitor.records import RunLog
from gradhealth.report.svg import PALETTE, Figure, figure_style, mpl_text, new_figure, to_figure

__all__ = ["Line", "lines_chart", "paired_chart", "ratio_chart", "loss_chart"]


@dataclass
class Line:
    label: str
    xs: Sequence[float]
    ys: Sequence[float | None]
    color: int = 0
    dashed: bool = False
    markers: bool = True
    legend: bool = True
    # False: markers only, no connecting line (measured points over a predicted curve)
    joined: bool = True


def _clean(ys: Sequence[float | None], logy: bool) -> list[float]:
    return [v if v is not None and math.isfinite(v) and (v > 0 or not logy) else math.nan for v in ys]


def lines_chart(lines: Sequence[Line], *, title: str, xlabel: str, ylabel: str, caption: str, logy: bool = False,
                guides: Mapping[str, float] | None = None, styles: Mapping[str, str] | None = None) -> Figure:
    """Lines with their own colour and style; ``styles`` adds grey legend keys ``{label: solid|dashed|dots}``.

    A NaN/Inf value is a gap with a cross at the top of the axes in the line's colour.
    """
    from matplotlib.lines import Line2D
    from matplotlib.transforms import blended_transform_factory

    crosses = 0
    with figure_style():
        fig, ax = new_figure()
        top = blended_transform_factory(ax.transData, ax.transAxes)
        for index, line in enumerate(lines):
            color = PALETTE[line.color % len(PALETTE)]
            style = ("--" if line.dashed else "-") if line.joined else "none"
            dots = line.markers and (len(line.xs) <= 60 or not line.joined)
            ax.plot(line.xs, _clean(line.ys, logy), color=color, ls=style, lw=1.6, marker="o" if dots else None,
                    ms=3.5 if line.joined else 4.5, mfc=color if line.joined else "none",
                    label=mpl_text(line.label) if line.legend else "_nolegend_", gid=f"series-{index}")
            bad = [x for x, y in zip(line.xs, line.ys) if y is not None and not math.isfinite(y)]
            if bad:
                ax.plot(bad, [0.96] * len(bad), transform=top, ls="none", marker="x", ms=7, mew=1.8, color=color,
                        clip_on=False)
                crosses += len(bad)
        for index, (label, value) in enumerate((guides or {}).items()):
            ax.axhline(value, color="#555555", ls=(":", "-.")[index % 2], lw=1, label=mpl_text(label))
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel(mpl_text(xlabel, 80))
        ax.set_ylabel(mpl_text(ylabel, 80))
        ax.set_title(mpl_text(title, 90))
        handles, labels = ax.get_legend_handles_labels()
        for label, style in (styles or {}).items():
            handles.append(Line2D([], [], color="#555555", lw=1.6, ls={"dashed": "--", "dots": "none"}.get(style, "-"),
                                  marker="o" if style == "dots" else None, mfc="none"))
            labels.append(label)
        longest = max((len(x) for x in labels), default=0)
        fig.legend(handles, labels, loc="outside lower center", frameon=False,
                   ncols=1 if longest > 34 else min(len(labels), 2 if longest > 18 else 3))
        note = f" A × at the top marks {crosses} NaN/Inf value{'s' if crosses != 1 else ''}." if crosses else ""
        return to_figure(fig, title, caption + note)


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


def ratio_chart(categories: Sequence[str], series: Mapping[str, Sequence[float | None]], *, title: str,
                ylabel: str, caption: str) -> Figure:
    """Ratios on a log axis as stems from 1: down is vanishing, up is exploding. A None value is
    not drawn; a zero or NaN/Inf value gets no stem and the caption names it."""
    missing: list[str] = []
    width = 0.7 / max(len(series), 1)
    with figure_style():
        fig, ax = new_figure()
        ax.grid(axis="x", visible=False)
        for index, (label, values) in enumerate(series.items()):
            color = PALETTE[index % len(PALETTE)]
            offset = (index - (len(series) - 1) / 2) * width
            xs, ys = [], []
            for position, value in enumerate(values):
                if value is None:  # not measured for this category
                    continue
                if not math.isfinite(value) or value <= 0:
                    missing.append(categories[position] + (f" ({label})" if len(series) > 1 else ""))
                    continue
                xs.append(position + offset)
                ys.append(value)
            ax.vlines(xs, 1.0, ys, color=color, lw=2.2)
            ax.plot(xs, ys, ls="none", marker="o", ms=6, color=color, label=mpl_text(label), gid=f"series-{index}")
        ax.axhline(1.0, color="#555555", lw=1, ls="--", label="1 = balanced")
        ax.set_yscale("log")
        rotate = len(categories) > 5 or max((len(c) for c in categories), default=0) > 10
        ax.set_xticks(range(len(categories)), [mpl_text(c, 24) for c in categories], rotation=25 if rotate else 0,
                      ha="right" if rotate else "center")
        ax.set_xlim(-0.6, len(categories) - 0.4)
        ax.set_ylabel(mpl_text(ylabel, 80))
        ax.set_title(mpl_text(title, 90))
        fig.legend(loc="outside lower center", frameon=False, ncols=min(len(series) + 1, 3))
        note = f" No stem (zero: no gradient reached the first layer, or NaN): {', '.join(missing)}." if missing else ""
        return to_figure(fig, title, caption + note)


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
