"""The diagnosis in a terminal: verdict, findings table and a one-screen gradient-vs-depth chart.

Everything from a log or a finding is put in ``rich.text.Text`` objects, never in markup strings,
so a layer called ``[bold]x`` prints as it is. Piped output has no colours (rich detects it).
"""
from __future__ import annotations

import math
from typing import Any

from gradhealth.diagnose.findings import Diagnosis
from gradhealth.monitor.records import RunLog
from gradhealth.report.format import abbreviate_layers, coverage_text, format_value, not_run_lines
from gradhealth.report.series import pick_record, weight_layers

__all__ = ["print_diagnosis", "depth_rows"]

SEVERITY_STYLES = {"error": "bold red", "warning": "yellow", "info": "cyan"}
MAX_ROWS = 30


def print_diagnosis(diagnosis: Diagnosis, log: RunLog | None = None, console: Any = None, *,
                    step: str | int = "last", max_rows: int = MAX_ROWS) -> None:
    """Print the verdict, a findings table and, given the log, gradient norm per layer at ``step``."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    verdict = diagnosis.verdict
    facts = [f"{len(diagnosis.findings)} finding{'s' if len(diagnosis.findings) != 1 else ''}"]
    if diagnosis.steps:
        facts.append(f"{diagnosis.steps} steps")
    facts.extend(x for x in (diagnosis.model, diagnosis.data) if x)
    line = Text("Verdict: ")
    styles = {"unhealthy": "bold red", "inconclusive": "bold yellow"}
    line.append(verdict.upper(), style=styles.get(verdict, "bold green"))
    line.append("  " + " · ".join(facts))
    console.print(line)
    for reason in diagnosis.inconclusive_because():
        console.print(Text(f"Inconclusive: {reason}", style="yellow"))
    if diagnosis.coverage is not None:
        console.print(Text(coverage_text(diagnosis.coverage)))
    for entry in not_run_lines(diagnosis.not_run):
        console.print(Text(f"Not run: {entry}", style="dim"))
    if diagnosis.findings:
        table = Table(title="Findings", title_justify="left", show_lines=True, expand=False)
        table.add_column("#", no_wrap=True)
        table.add_column("Severity", no_wrap=True)
        for column in ("Finding", "Layers", "Top remedies"):
            table.add_column(column, overflow="fold")
        for number, finding in enumerate(diagnosis.findings, 1):
            remedies = "\n".join(f"{i}. {r.title}" for i, r in enumerate(finding.remedies[:2], 1)) or "–"
            table.add_row(str(number), Text(finding.severity, style=SEVERITY_STYLES.get(finding.severity, "")),
                          Text(finding.title), Text(abbreviate_layers(finding.layers, 2)), Text(remedies))
        console.print(table)
        # why, in words: the table says what and where, this says the cause (the numbers behind
        # each finding are in --json, findings.json and the report)
        for number, finding in enumerate(diagnosis.findings, 1):
            console.print(Text(f"{number}. ", style="bold").append(Text(finding.explanation)))
    if log is not None:
        _print_depth_chart(console, log, _finite_step(log) if step == "last" else step, max_rows)


def _finite_step(log: RunLog) -> str | int:
    """The last step whose gradients were all finite (after a NaN the chart would be all NaN)."""
    for record in reversed(log.records):
        norms = [s.grad_norm for s in record.layers.values() if s.grad_norm is not None]
        if norms and all(math.isfinite(v) for v in norms):
            return record.step
    return "last"


def depth_rows(log: RunLog, step: str | int = "last", max_rows: int = MAX_ROWS
               ) -> tuple[list[tuple[int, str, float | None, float | None]], int]:
    """``(index, layer, grad_norm, bar fraction)`` per shown weight layer, input first, and the layer count.

    The fraction places log10 of the norm within the whole run's range (all steps, all layers),
    so the same layer at two steps compares; it is None where the norm is zero, missing or NaN/Inf.
    Deeper networks are sampled evenly, always keeping the first and the last layer.
    """
    names = weight_layers(log)
    record = pick_record(log, step)
    logs = [math.log10(s.grad_norm) for r in log.records for s in r.layers.values()
            if s.grad_norm is not None and math.isfinite(s.grad_norm) and s.grad_norm > 0]
    low, high = (min(logs), max(logs)) if logs else (0.0, 0.0)
    if len(names) > max_rows > 1:
        shown = sorted({round(i * (len(names) - 1) / (max_rows - 1)) for i in range(max_rows)})
    else:
        shown = list(range(len(names)))
    rows = []
    for index in shown:
        stats = record.layers.get(names[index])
        value = None if stats is None else stats.grad_norm
        fraction = None
        if value is not None and math.isfinite(value) and value > 0:
            fraction = 1.0 if high == low else (math.log10(value) - low) / (high - low)
        rows.append((index, names[index], value, fraction))
    return rows, len(names)


def _print_depth_chart(console: Any, log: RunLog, step: str | int, max_rows: int) -> None:
    from rich.text import Text

    rows, total = depth_rows(log, step, max_rows)
    if not rows:
        return
    norms = [s.grad_norm for r in log.records for s in r.layers.values()
             if s.grad_norm is not None and math.isfinite(s.grad_norm) and s.grad_norm > 0]
    span = f" ({format_value(min(norms))} to {format_value(max(norms))})" if norms else ""
    record = pick_record(log, step)
    name_width = min(max(len(name) for _, name, _, _ in rows), 28)
    bar_width = max(10, min(40, console.width - name_width - 20))
    block = "█" if console.encoding.startswith("utf") else "#"
    sampled = f"; {len(rows)} of {total} layers, evenly spaced" if len(rows) < total else ""
    console.print(Text(f"\nGradient norm per weight layer at step {record.step} (input at top{sampled}); "
                       f"bar length is log10 of the norm within this run's range{span}", style="bold"))
    for index, name, value, fraction in rows:
        if len(name) > name_width:
            name = name[: name_width - 9] + "…" + name[-8:]
        line = Text(f"{index:>4} {name:<{name_width}} ")
        if fraction is None:
            bad = value is not None and not math.isfinite(value)
            line.append("×".ljust(bar_width) if bad else " " * bar_width, style="red" if bad else "")
        else:
            length = 1 + round(fraction * (bar_width - 1))
            line.append(block * length + " " * (bar_width - length), style="blue")
        number = "0" if value == 0 else format_value(value)
        line.append(f" {number:>8}", style="red" if value is not None and not math.isfinite(value) else "")
        console.print(line, no_wrap=True, overflow="ellipsis")
