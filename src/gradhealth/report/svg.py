"""Matplotlib figures as SVG text that inlines into an HTML page and scales to its width.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), never pyplot:
nothing is registered globally, so nothing leaks and a user's interactive backend is left alone;
saving to SVG needs no GUI backend at all.
"""
from __future__ import annotations

import hashlib
import html
import io
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["Figure", "PALETTE", "FIGSIZE", "BAD_COLOR", "figure_style", "new_figure", "to_figure", "mpl_text"]

# Okabe-Ito colours: distinguishable with the common colour-vision deficiencies
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#999933")
FIGSIZE = (7.0, 3.5)
BAD_COLOR = "#d62728"

# Text as glyph paths: the picture looks the same in every browser, with or without the font.
_RC = {
    "svg.fonttype": "path",
    "svg.hashsalt": "gradhealth",  # ids from content, not random: the same log gives the same page
    # sizes for a 7-inch figure that a phone shows at about half size
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.35,
    "grid.linewidth": 0.6,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}


@dataclass
class Figure:
    """A finished picture: ``svg`` is inline-ready SVG text, ``caption`` one sentence on what to see."""

    title: str
    svg: str
    caption: str


@contextmanager
def figure_style() -> Iterator[None]:
    """The house style for every figure; build and save inside it (rcParams are read at both times)."""
    import matplotlib
    from cycler import cycler

    rc = dict(_RC, **{"axes.prop_cycle": cycler(color=PALETTE)})
    with matplotlib.rc_context(rc):
        yield


def new_figure(figsize: tuple[float, float] = FIGSIZE) -> tuple[Any, Any]:
    """A (figure, axes) pair with constrained layout, so labels and outside legends are not cut."""
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def mpl_text(text: object, limit: int = 48) -> str:
    """A user string safe for matplotlib: ``$`` would start mathtext, a leading ``_`` hides a legend entry."""
    s = str(text)
    if len(s) > limit:
        keep = (limit - 1) // 2
        s = s[:keep] + "…" + s[-(limit - 1 - keep):]
    s = s.replace("$", r"\$")
    return " " + s if s.startswith("_") else s


def to_figure(fig: Any, title: str, caption: str) -> Figure:
    """Save a matplotlib figure as SVG and make it inline-ready (see ``_inline_svg``)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", pad_inches=0.06, dpi=150,
                metadata={"Date": None})
    fig.clear()
    return Figure(title=title, svg=_inline_svg(buf.getvalue(), title), caption=caption)


_ID = re.compile(r'(\bid="|\bhref="#|url\(#)([^")]+)')


def _inline_svg(svg: str, title: str) -> str:
    """Strip the XML prolog, comments and RDF metadata; let the picture scale; make its ids unique.

    Several SVGs inline in one page share one id space: matplotlib's glyph, clip-path and image
    ids would collide, so every id gets a prefix drawn from this picture's content.
    """
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"<!--.*?-->\s*", "", svg, flags=re.S)
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.S)
    prefix = "g" + hashlib.sha1((title + svg).encode()).hexdigest()[:8] + "-"
    ids = set(re.findall(r'\bid="([^"]+)"', svg))
    svg = _ID.sub(lambda m: m.group(1) + (prefix + m.group(2) if m.group(2) in ids else m.group(2)), svg)
    head_end = svg.index(">")
    head = svg[:head_end]
    head = re.sub(r'\s(width|height)="[^"]*"', "", head)
    title_id = prefix + "title"
    head += f' width="100%" role="img" aria-labelledby="{title_id}"'
    return head + f'><title id="{title_id}">{html.escape(title)}</title>' + svg[head_end + 1:]
