"""Drawing helpers every chart shares: the house rules for gaps, NaN/Inf crosses, log axes,
reference lines and legends, so a run figure and a study chart read the same way."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from gradhealth.report.svg import mpl_text

__all__ = ["count_phrase", "gap_note", "mark_top", "mark_bottom", "log_y", "log_x", "legend_below", "integer_x",
           "add_guides"]

_PLURAL_VERBS = {"is": "are", "has": "have"}


def count_phrase(n: int, noun: str, verb: str = "is") -> str:
    """ "1 value is" / "3 values are": ``noun`` is the singular."""
    if n == 1:
        return f"{n} {noun} {verb}"
    plural = noun + ("es" if noun.endswith("s") else "s")
    return f"{n} {plural} {_PLURAL_VERBS[verb]}"


def gap_note(nonfinite: int, missing: int, what: str) -> str:
    parts = []
    if nonfinite:
        parts.append(f"{count_phrase(nonfinite, 'NaN/Inf ' + what)} marked × at the top")
    if missing:
        parts.append(f"{count_phrase(missing, 'zero or missing ' + what)} left as gaps")
    if not parts:
        return ""
    text = "; ".join(parts)
    return " " + text[0].upper() + text[1:] + "."


def mark_top(ax, xs: Sequence[float], color: str, label: str | None = None) -> None:
    """Crosses along the top edge at ``xs``: where a value was NaN/Inf and has no height to draw."""
    from matplotlib.transforms import blended_transform_factory

    transform = blended_transform_factory(ax.transData, ax.transAxes)
    ax.plot(xs, [0.96] * len(xs), transform=transform, ls="none", marker="x", ms=7, mew=1.8,
            color=color, clip_on=False, label=label if label else "_nolegend_")


def mark_bottom(ax, xs: Sequence[float], label: str) -> None:
    from matplotlib.transforms import blended_transform_factory

    transform = blended_transform_factory(ax.transData, ax.transAxes)
    ax.plot(xs, [0.03] * len(xs), transform=transform, ls="none", marker="|", ms=9, mew=1.4,
            color="#777777", clip_on=False, label=label)


def log_y(ax, has_data: bool) -> None:
    ax.set_yscale("log")
    if not has_data:
        ax.set_ylim(1e-3, 1.0)
        ax.text(0.5, 0.5, "no finite positive values to draw", transform=ax.transAxes,
                ha="center", va="center", color="#555555")


def log_x(ax, xs: list[float]) -> None:
    """A log x axis; a short sweep (depths 2, 4, ... 64) gets its own values as plain tick labels."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    if 0 < len(xs) <= 12:
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.xaxis.set_minor_formatter(NullFormatter())


def legend_below(fig, ax) -> None:
    """Legend under the plot: it never covers the data and does not squeeze the axes on a phone."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    longest = max(len(label) for label in labels)
    ncols = 1 if longest > 30 else min(len(labels), 2 if longest > 18 else 4)
    legend = fig.legend(handles, labels, loc="outside lower center", ncols=ncols, frameon=False)
    for index, text in enumerate(legend.get_texts()):
        text.set_gid(f"legend-{index}")


def integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def add_guides(ax, guides: Mapping[str, float] | None) -> None:
    for index, (label, value) in enumerate((guides or {}).items()):
        ax.axhline(value, color="#555555", ls=("--", ":", "-.")[index % 3], lw=1, label=mpl_text(label))
