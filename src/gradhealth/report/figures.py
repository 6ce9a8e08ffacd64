"""One function per figure of a run's report; each reads records only and returns a ``Figure`` (SVG).

Runs are given as ``{label: RunLog}``; a single ``RunLog`` is accepted too. Layers are drawn in
forward order, input first. A value that cannot be drawn (NaN, Inf, zero or missing on a log
axis) becomes a gap, NaN/Inf are marked with a cross, and the caption says how many there were.
The generic charts (lines, bars, ratios) that studies share are in ``report/charts.py``.
"""
from __future__ import annotations

import math

from gradhealth.monitor.records import RunLog
from gradhealth.report.draw import count_phrase, gap_note, integer_x, legend_below, log_y, mark_bottom, mark_top
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
                mark_top(ax, bad, color)
            nonfinite += len(bad)
            missing += sum(1 for v in raw if not is_nonfinite(v) and math.isnan(finite_positive(v)))
            has_data |= any(not math.isnan(y) for y in ys)
        log_y(ax, has_data)
        integer_x(ax)
        ax.set_xlabel("weight layer index (0 = input side)")
        ax.set_ylabel(f"{METRIC_LABELS[metric]} (log scale)")
        phrase = _step_phrase(step, steps)
        title = f"{METRIC_LABELS[metric].capitalize()} vs depth, {phrase}"
        ax.set_title(title)
        if len(runs) > 1:
            legend_below(fig, ax)
        caption = (f"Each line is one run's per-layer {METRIC_LABELS[metric]} at the {phrase}, input on the left: "
                   "a line that falls toward the left means gradients vanish before they reach the early "
                   "layers, one that rises means they explode."
                   + gap_note(nonfinite, missing, "value"))
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
            caption += f" {count_phrase(int(bad.sum()), 'red cell')} NaN/Inf."
        if missing:
            caption += f" {count_phrase(missing, 'grey cell')} zero or not measured."
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
            mark_top(ax, nonfinite, BAD_COLOR, "NaN/Inf loss")
        if skipped:
            mark_bottom(ax, skipped, "skipped step")
        if logy:
            log_y(ax, any(v > 0 for v in finite))
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (log scale)" if logy else "loss")
        title = "Loss"
        ax.set_title(title)
        legend_below(fig, ax)
        has_val = any(style == "--" for *_, style in curves)
        shown = "Training loss (solid) and validation loss (dashed)" if has_val else "Training loss"
        caption = (f"{shown} per step: a flat curve means the network is not learning, a jump or a cross "
                   "means the step blew up.")
        if skipped:
            caption += f" {count_phrase(len(skipped), 'skipped optimizer step')} ticked along the bottom."
        return to_figure(fig, title, caption + gap_note(len(nonfinite), missing, "loss"))


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
        log_y(ax, has_data)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("‖Δw‖ / ‖w‖ (log scale)")
        title = "Update-to-weight ratio"
        ax.set_title(title)
        legend_below(fig, ax)
        caption = ("Median ratio of each weight layer's update to its weights per step (band: 10th to 90th "
                   "percentile over layers): near 1e-3 is the usual healthy scale, far below means the "
                   "learning rate is too low or gradients vanished, far above means steps are too large.")
        return to_figure(fig, title, caption)
