"""Generic charts, for run reports and studies alike: lines (one style per series or one per line),
grouped bars, and ratios as stems from 1. Each returns a ``Figure`` (inline SVG + caption) in the
house style; what a chart means is the caller's composition (``report.figures`` for a run,
``studies/charts.py`` for the studies' own).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gradhealth.errors import ConfigError
from gradhealth.report.draw import add_guides, count_phrase, gap_note, legend_below, log_x, log_y, mark_top
from gradhealth.report.series import finite_positive, is_nonfinite
from gradhealth.report.svg import PALETTE, Figure, figure_style, mpl_text, new_figure, to_figure

__all__ = ["Line", "line_chart", "bar_chart", "lines_chart", "ratio_chart"]


def line_chart(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str,
               xlabel: str, ylabel: str, logy: bool = False, logx: bool = False, caption: str = "",
               guides: Mapping[str, float] | None = None, markers: bool = True) -> Figure:
    """One line per ``{label: (xs, ys)}``; ``guides`` are labelled horizontal reference lines."""
    nonfinite = missing = 0
    has_data = False
    with figure_style():
        fig, ax = new_figure()
        for index, (label, (xs, ys)) in enumerate(series.items()):
            if len(xs) != len(ys):
                raise ConfigError(f"series {label!r} has {len(xs)} x values but {len(ys)} y values; "
                                  "give one y per x.")
            clean = [finite_positive(y) if logy else (y if y is not None and math.isfinite(y) else math.nan)
                     for y in ys]
            color = PALETTE[index % len(PALETTE)]
            ax.plot(xs, clean, color=color, lw=1.6, marker="o" if markers and len(xs) <= 60 else None, ms=3.5,
                    label=mpl_text(label), gid=f"series-{index}")
            bad = [x for x, y in zip(xs, ys) if is_nonfinite(y)]
            if bad:
                mark_top(ax, bad, color)
            nonfinite += len(bad)
            missing += sum(1 for y, c in zip(ys, clean) if math.isnan(c) and not is_nonfinite(y))
            has_data |= any(not math.isnan(c) for c in clean)
        add_guides(ax, guides)
        if logy:
            log_y(ax, has_data)
        if logx:
            log_x(ax, sorted({float(x) for xs, _ in series.values() for x in xs if x is not None and x > 0}))
        ax.set_xlabel(mpl_text(xlabel, 80))
        ax.set_ylabel(mpl_text(ylabel, 80))
        ax.set_title(mpl_text(title, 90))
        if len(series) > 1 or guides:
            legend_below(fig, ax)
        return to_figure(fig, title, caption + gap_note(nonfinite, missing, "point"))


def bar_chart(categories: Sequence[str], series: Mapping[str, Sequence[float]], *, title: str,
              xlabel: str = "", ylabel: str, logy: bool = False, caption: str = "",
              guides: Mapping[str, float] | None = None) -> Figure:
    """Grouped bars: one group per category, one bar per ``{label: values}`` (a value per category)."""
    nonfinite = 0
    width = 0.8 / max(len(series), 1)
    with figure_style():
        fig, ax = new_figure()
        ax.grid(axis="x", visible=False)
        for index, (label, values) in enumerate(series.items()):
            if len(values) != len(categories):
                raise ConfigError(f"series {label!r} has {len(values)} values for {len(categories)} "
                                  "categories; give one value per category.")
            clean = [finite_positive(v) if logy else (v if v is not None and math.isfinite(v) else math.nan)
                     for v in values]
            offset = (index - (len(series) - 1) / 2) * width
            bars = ax.bar([c + offset for c in range(len(categories))], [0 if math.isnan(v) else v for v in clean],
                          width=width * 0.95, color=PALETTE[index % len(PALETTE)], label=mpl_text(label))
            for position, bar in enumerate(bars):
                bar.set_gid(f"series-{index}-bar-{position}")
            nonfinite += sum(1 for v in values if is_nonfinite(v))
        add_guides(ax, guides)
        if logy:
            ax.set_yscale("log")
        rotate = len(categories) > 6 or max((len(str(c)) for c in categories), default=0) > 10
        ax.set_xticks(range(len(categories)), [mpl_text(c, 24) for c in categories],
                      rotation=30 if rotate else 0, ha="right" if rotate else "center")
        ax.set_xlabel(mpl_text(xlabel, 80))
        ax.set_ylabel(mpl_text(ylabel, 80))
        ax.set_title(mpl_text(title, 90))
        if len(series) > 1 or guides:
            legend_below(fig, ax)
        note = f" {count_phrase(nonfinite, 'NaN/Inf value', 'has')} no bar." if nonfinite else ""
        return to_figure(fig, title, caption + note)


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

    crosses = 0
    with figure_style():
        fig, ax = new_figure()
        for index, line in enumerate(lines):
            color = PALETTE[line.color % len(PALETTE)]
            style = ("--" if line.dashed else "-") if line.joined else "none"
            dots = line.markers and (len(line.xs) <= 60 or not line.joined)
            ax.plot(line.xs, _clean(line.ys, logy), color=color, ls=style, lw=1.6, marker="o" if dots else None,
                    ms=3.5 if line.joined else 4.5, mfc=color if line.joined else "none",
                    label=mpl_text(line.label) if line.legend else "_nolegend_", gid=f"series-{index}")
            bad = [x for x, y in zip(line.xs, line.ys) if y is not None and not math.isfinite(y)]
            if bad:
                mark_top(ax, bad, color)
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
