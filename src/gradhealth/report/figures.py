"""One function per figure of a report; each reads records only and returns a ``Figure`` (SVG).

Runs are given as ``{label: RunLog}``; a single ``RunLog`` is accepted too. Layers are drawn in
forward order, input first. A value that cannot be drawn (NaN, Inf, zero or missing on a log
axis) becomes a gap, NaN/Inf are marked with a cross, and the caption says how many there were.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from gradhealth.errors import ConfigError
from gradhealth.monitor.records import RunLog
from gradhealth.report.series import (
    METRIC_LABELS,
    Runs,
    as_runs,
    check_metric,
    finite_positive,
    has_layer_metric,
    is_nonfinite,
    pick_record,
    spans_decades,
    update_ratio_stats,
    weight_layers,
)
from gradhealth.report.svg import (
    BAD_COLOR,
    PALETTE,
    Figure,
    figure_style,
    mpl_text,
    new_figure,
    to_figure,
)

__all__ = [
    "Figure",
    "grad_vs_depth",
    "grad_heatmap",
    "loss_curves",
    "update_ratio_chart",
    "line_chart",
    "bar_chart",
    "as_runs",
    "weight_layers",
    "pick_record",
    "has_layer_metric",
    "spans_decades",
    "update_ratio_stats",
]

UPDATE_RATIO_GUIDE = 1e-3
# past this many points a marker per point is clutter: the line alone shows them
MAX_MARKED_POINTS = 200


# ---- shared drawing helpers ----------------------------------------------------------------------

_PLURAL_VERBS = {"is": "are", "has": "have"}


def _count(n: int, noun: str, verb: str = "is") -> str:
    """ "1 value is" / "3 values are": ``noun`` is the singular."""
    if n == 1:
        return f"{n} {noun} {verb}"
    plural = noun + ("es" if noun.endswith("s") else "s")
    return f"{n} {plural} {_PLURAL_VERBS[verb]}"


def _gap_note(nonfinite: int, missing: int, what: str) -> str:
    parts = []
    if nonfinite:
        parts.append(f"{_count(nonfinite, 'NaN/Inf ' + what)} marked × at the top")
    if missing:
        parts.append(f"{_count(missing, 'zero or missing ' + what)} left as gaps")
    if not parts:
        return ""
    text = "; ".join(parts)
    return " " + text[0].upper() + text[1:] + "."


def _mark_top(ax, xs: Sequence[float], color: str, label: str | None = None) -> None:
    """Crosses along the top edge at ``xs``: where a value was NaN/Inf and has no height to draw."""
    from matplotlib.transforms import blended_transform_factory

    transform = blended_transform_factory(ax.transData, ax.transAxes)
    ax.plot(xs, [0.96] * len(xs), transform=transform, ls="none", marker="x", ms=7, mew=1.8,
            color=color, clip_on=False, label=label if label else "_nolegend_")


def _mark_bottom(ax, xs: Sequence[float], label: str) -> None:
    from matplotlib.transforms import blended_transform_factory

    transform = blended_transform_factory(ax.transData, ax.transAxes)
    ax.plot(xs, [0.03] * len(xs), transform=transform, ls="none", marker="|", ms=9, mew=1.4,
            color="#777777", clip_on=False, label=label)


def _log_y(ax, has_data: bool) -> None:
    ax.set_yscale("log")
    if not has_data:
        ax.set_ylim(1e-3, 1.0)
        ax.text(0.5, 0.5, "no finite positive values to draw", transform=ax.transAxes,
                ha="center", va="center", color="#555555")


def _log_x(ax, xs: list[float]) -> None:
    """A log x axis; a short sweep (depths 2, 4, ... 64) gets its own values as plain tick labels."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    if 0 < len(xs) <= 12:
        ax.set_xticks(xs, [f"{x:g}" for x in xs])
        ax.xaxis.set_minor_formatter(NullFormatter())


def _legend(fig, ax) -> None:
    """Legend under the plot: it never covers the data and does not squeeze the axes on a phone."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    longest = max(len(label) for label in labels)
    ncols = 1 if longest > 30 else min(len(labels), 2 if longest > 18 else 4)
    legend = fig.legend(handles, labels, loc="outside lower center", ncols=ncols, frameon=False)
    for index, text in enumerate(legend.get_texts()):
        text.set_gid(f"legend-{index}")


def _integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _step_phrase(step: str | int, steps: set[int]) -> str:
    if isinstance(step, str):
        return f"{step} step (step {next(iter(steps))})" if len(steps) == 1 else f"{step} step"
    return f"step {step}"


# ---- run figures ---------------------------------------------------------------------------------

def grad_vs_depth(runs: Runs, step: str | int = "first", *, metric: str = "grad_norm") -> Figure:
    """Per weight layer (x = index from input to output) gradient norm on a log axis, one line per run."""
    check_metric(metric)
    runs = as_runs(runs)
    nonfinite = missing = 0
    steps: set[int] = set()
    has_data = False
    with figure_style():
        fig, ax = new_figure()
        for index, (label, log) in enumerate(runs.items()):
            record = pick_record(log, step)
            steps.add(record.step)
            raw = [getattr(record.layers[n], metric) if n in record.layers else None for n in weight_layers(log)]
            ys = [finite_positive(v) for v in raw]
            color = PALETTE[index % len(PALETTE)]
            ax.plot(range(len(ys)), ys, color=color, lw=1.6, marker="o" if len(ys) <= 60 else None, ms=3.2,
                    label=mpl_text(label), gid=f"series-{index}")
            bad = [x for x, v in enumerate(raw) if is_nonfinite(v)]
            if bad:
                _mark_top(ax, bad, color)
            nonfinite += len(bad)
            missing += sum(1 for v in raw if not is_nonfinite(v) and math.isnan(finite_positive(v)))
            has_data |= any(not math.isnan(y) for y in ys)
        _log_y(ax, has_data)
        _integer_x(ax)
        ax.set_xlabel("weight layer index (0 = input side)")
        ax.set_ylabel(f"{METRIC_LABELS[metric]} (log scale)")
        phrase = _step_phrase(step, steps)
        title = f"{METRIC_LABELS[metric].capitalize()} vs depth, {phrase}"
        ax.set_title(title)
        if len(runs) > 1:
            _legend(fig, ax)
        caption = (f"Each line is one run's per-layer {METRIC_LABELS[metric]} at the {phrase}, input on the left: "
                   "a line that falls toward the left means gradients vanish before they reach the early "
                   "layers, one that rises means they explode."
                   + _gap_note(nonfinite, missing, "value"))
        return to_figure(fig, title, caption)


def grad_heatmap(log: RunLog, metric: str = "grad_norm") -> Figure:
    """Layer x step heatmap of log10 ``metric`` (input at the bottom), with a colour bar."""
    import numpy as np
    from matplotlib.colors import ListedColormap

    check_metric(metric)
    names = weight_layers(log)
    steps = [r.step for r in log.records]
    shape = (max(len(names), 1), len(steps))
    raw, bad = np.full(shape, np.nan), np.zeros(shape, dtype=bool)
    for col, record in enumerate(log.records):
        for row, name in enumerate(names):
            stats = record.layers.get(name)
            value = None if stats is None else getattr(stats, metric)
            if value is not None:
                raw[row, col] = value
                bad[row, col] = not math.isfinite(value)
    with np.errstate(divide="ignore", invalid="ignore"):
        logged = np.where(np.isfinite(raw) & (raw > 0), np.log10(raw), np.nan)
    missing = int(np.isnan(logged).sum() - bad.sum())
    x_edges = _edges(steps)
    y_edges = np.arange(raw.shape[0] + 1) - 0.5
    labelled = 0 < len(names) <= 24
    height = min(max(3.5, 1.6 + 0.17 * len(names)), 6.0) if labelled else 3.5
    title = f"{METRIC_LABELS[metric].capitalize()} per layer and step (log10)"
    with figure_style():
        fig, ax = new_figure((7.0, height))
        ax.grid(False)
        ax.set_facecolor("#d9d9d9")  # zero or unmeasured cells show through as grey
        mesh = ax.pcolormesh(x_edges, y_edges, np.ma.masked_invalid(logged), cmap="viridis",
                             shading="flat", rasterized=True)
        if bad.any():
            ax.pcolormesh(x_edges, y_edges, np.ma.masked_where(~bad, np.ones_like(raw)),
                          cmap=ListedColormap([BAD_COLOR]), shading="flat", rasterized=True)
        colorbar = fig.colorbar(mesh, ax=ax, pad=0.02)
        colorbar.set_label(f"log10 {METRIC_LABELS[metric]}")
        if labelled:
            ax.set_yticks(range(len(names)), [mpl_text(n, 28) for n in names], fontsize=9)
            ax.set_ylabel("weight layer (input at bottom)")
        else:
            from matplotlib.ticker import MaxNLocator

            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("weight layer index (0 = input, at bottom)")
        ax.set_xlabel("optimizer step")
        ax.set_title(title)
        caption = ("Each cell is one layer's log10 " + METRIC_LABELS[metric] + " at one step, input at the bottom: "
                   "dark rows at the bottom mean the early layers get vanishing gradients, and bright cells "
                   "spreading over time mean gradients grow.")
        if bad.any():
            caption += f" {_count(int(bad.sum()), 'red cell')} NaN/Inf."
        if missing:
            caption += f" {_count(missing, 'grey cell')} zero or not measured."
        return to_figure(fig, title, caption)


def _edges(steps: list[int]):
    """Cell edges halfway between logged steps, so uneven logging intervals keep true widths."""
    import numpy as np

    x = np.asarray(steps, dtype=float)
    if len(x) == 1:
        return np.array([x[0] - 0.5, x[0] + 0.5])
    mid = (x[1:] + x[:-1]) / 2
    return np.concatenate([[x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]])


def loss_curves(runs: Runs, *, logy: bool | None = None) -> Figure:
    """Training loss (solid) and validation loss (``metrics["val_loss"]``, dashed) vs step.

    ``logy=None`` picks a log axis when the positive losses span two decades or more. Skipped
    steps are ticked along the bottom, NaN/Inf losses crossed along the top.
    """
    runs = as_runs(runs)
    curves: list[tuple[str, list[int], list[float | None], str, str]] = []
    for index, (label, log) in enumerate(runs.items()):
        color = PALETTE[index % len(PALETTE)]
        name = mpl_text(label) + " " if len(runs) > 1 else ""
        curves.append((name + "train", [r.step for r in log.records], [r.loss for r in log.records], color, "-"))
        val = [(r.step, r.metrics["val_loss"]) for r in log.records if "val_loss" in r.metrics]
        if val:
            curves.append((name + "val", [s for s, _ in val], [v for _, v in val], color, "--"))
    finite = [v for _, _, ys, _, _ in curves for v in ys if v is not None and math.isfinite(v)]
    if logy is None:
        logy = spans_decades(finite)
    skipped = sorted({r.step for log in runs.values() for r in log.records if r.skipped})
    nonfinite: list[int] = []
    missing = 0
    with figure_style():
        fig, ax = new_figure()
        for index, (label, xs, raw, color, style) in enumerate(curves):
            ys = [finite_positive(v) if logy else (v if v is not None and math.isfinite(v) else math.nan)
                  for v in raw]
            ax.plot(xs, ys, color=color, ls=style, lw=1.5, label=label, gid=f"series-{index}")
            nonfinite.extend(x for x, v in zip(xs, raw) if is_nonfinite(v))
            missing += sum(1 for v, y in zip(raw, ys) if math.isnan(y) and not is_nonfinite(v))
        if nonfinite:
            _mark_top(ax, nonfinite, BAD_COLOR, "NaN/Inf loss")
        if skipped:
            _mark_bottom(ax, skipped, "skipped step")
        if logy:
            _log_y(ax, any(v > 0 for v in finite))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (log scale)" if logy else "loss")
        title = "Loss"
        ax.set_title(title)
        _legend(fig, ax)
        has_val = any(style == "--" for *_, style in curves)
        shown = "Training loss (solid) and validation loss (dashed)" if has_val else "Training loss"
        caption = (f"{shown} per step: a flat curve means the network is not learning, a jump or a cross "
                   "means the step blew up.")
        if skipped:
            caption += f" {_count(len(skipped), 'skipped optimizer step')} ticked along the bottom."
        return to_figure(fig, title, caption + _gap_note(len(nonfinite), missing, "loss"))


def update_ratio_chart(runs: Runs) -> Figure:
    """Median update-to-weight ratio over weight layers per step, 10th-90th percentile band, 1e-3 guide."""
    runs = as_runs(runs)
    single = len(runs) == 1
    has_data = False
    with figure_style():
        fig, ax = new_figure()
        for index, (label, log) in enumerate(runs.items()):
            # ratios exist on detailed steps only (every detail_every-th): join the steps that have
            # one and mark them, rather than leaving NaN gaps that isolate every point
            kept = [point for point in zip(*update_ratio_stats(log)) if not math.isnan(point[2])]
            steps, low, median, high = (list(column) for column in zip(*kept)) if kept else ([], [], [], [])
            color = PALETTE[index % len(PALETTE)]
            ax.plot(steps, median, color=color, lw=1.6, marker="o" if len(steps) <= MAX_MARKED_POINTS else None,
                    ms=3, label="median over layers" if single else mpl_text(label), gid=f"series-{index}")
            # a long run's band as vectors is 2 points per step; as a picture it stays small
            ax.fill_between(steps, low, high, color=color, alpha=0.18, lw=0, rasterized=len(steps) > 500,
                            label="10th to 90th percentile" if single else "_nolegend_")
            has_data |= bool(steps)
        ax.axhline(UPDATE_RATIO_GUIDE, color="#555555", ls="--", lw=1, label="1e-3 rule of thumb")
        _log_y(ax, has_data)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("‖Δw‖ / ‖w‖ (log scale)")
        title = "Update-to-weight ratio"
        ax.set_title(title)
        _legend(fig, ax)
        caption = ("Median ratio of each weight layer's update to its weights per step (band: 10th to 90th "
                   "percentile over layers): near 1e-3 is the usual healthy scale, far below means the "
                   "learning rate is too low or gradients vanished, far above means steps are too large.")
        return to_figure(fig, title, caption)


# ---- generic charts for studies ------------------------------------------------------------------

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
                _mark_top(ax, bad, color)
            nonfinite += len(bad)
            missing += sum(1 for y, c in zip(ys, clean) if math.isnan(c) and not is_nonfinite(y))
            has_data |= any(not math.isnan(c) for c in clean)
        _add_guides(ax, guides)
        if logy:
            _log_y(ax, has_data)
        if logx:
            _log_x(ax, sorted({float(x) for xs, _ in series.values() for x in xs if x is not None and x > 0}))
        ax.set_xlabel(mpl_text(xlabel, 80))
        ax.set_ylabel(mpl_text(ylabel, 80))
        ax.set_title(mpl_text(title, 90))
        if len(series) > 1 or guides:
            _legend(fig, ax)
        return to_figure(fig, title, caption + _gap_note(nonfinite, missing, "point"))


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
        _add_guides(ax, guides)
        if logy:
            ax.set_yscale("log")
        rotate = len(categories) > 6 or max((len(str(c)) for c in categories), default=0) > 10
        ax.set_xticks(range(len(categories)), [mpl_text(c, 24) for c in categories],
                      rotation=30 if rotate else 0, ha="right" if rotate else "center")
        ax.set_xlabel(mpl_text(xlabel, 80))
        ax.set_ylabel(mpl_text(ylabel, 80))
        ax.set_title(mpl_text(title, 90))
        if len(series) > 1 or guides:
            _legend(fig, ax)
        note = f" {_count(nonfinite, 'NaN/Inf value', 'has')} no bar." if nonfinite else ""
        return to_figure(fig, title, caption + note)


def _add_guides(ax, guides: Mapping[str, float] | None) -> None:
    for index, (label, value) in enumerate((guides or {}).items()):
        ax.axhline(value, color="#555555", ls=("--", ":", "-.")[index % 3], lw=1, label=mpl_text(label))
