"""Records -> pictures: SVG figures, a self-contained HTML page and a terminal view (no torch).

Matplotlib loads only when a figure is drawn and rich only when the terminal view prints.
"""
from gradhealth.report.charts import bar_chart, line_chart
from gradhealth.report.console import print_diagnosis
from gradhealth.report.figures import (
    Figure,
    grad_heatmap,
    grad_vs_depth,
    loss_curves,
    update_ratio_chart,
)
from gradhealth.report.html import Section, Table, findings_section, render_html, run_sections, write_report

__all__ = [
    "Figure",
    "grad_vs_depth",
    "grad_heatmap",
    "loss_curves",
    "update_ratio_chart",
    "line_chart",
    "bar_chart",
    "Section",
    "Table",
    "render_html",
    "run_sections",
    "findings_section",
    "write_report",
    "print_diagnosis",
]
