"""The report as one self-contained HTML page: inline CSS and SVG, no scripts, nothing fetched.

Every piece of text that comes from a log, a config or a finding goes through ``html.escape``;
only ``Section.html_blocks`` is inserted as it is, so whoever builds a block escapes its data.
"""
from __future__ import annotations

import html
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gradhealth import __version__
from gradhealth.diagnose.findings import Diagnosis, Finding
from gradhealth.diagnose.rules import data_name
from gradhealth.io import write_text_atomic
from gradhealth.monitor.records import RunLog
from gradhealth.report import figures
from gradhealth.report.format import (abbreviate_layers, coverage_text, flatten_config, format_percent, format_value,
                                      not_run_lines)
from gradhealth.report.style import CSS
from gradhealth.report.svg import Figure

__all__ = ["Section", "Table", "render_html", "run_sections", "findings_section", "activation_table",
           "run_details_table", "write_report", "run_page"]

_e = html.escape


@dataclass
class Table:
    """Rows of plain cells (numbers right-aligned, floats to three significant digits)."""

    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Section:
    """A titled part of the page: intro text, then figures, tables and pre-built HTML blocks."""

    title: str
    intro: str = ""
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    # trusted markup built by this package (data inside already escaped)
    html_blocks: list[str] = field(default_factory=list)


# ---- page ---------------------------------------------------------------------------------------

def render_html(title: str, sections: Sequence[Section], *, diagnosis: Diagnosis | None = None,
                toc: bool = False, subtitle: str = "") -> str:
    """The whole page: header, verdict and findings summary, optional contents, sections, footer."""
    ids = _section_ids(sections)
    parts = [
        '<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main class=\"page\">\n"
        f"<header>\n<h1>{_e(title)}</h1>\n"
        + (f'<p class="subtitle">{_e(subtitle)}</p>\n' if subtitle else "")
        + "</header>\n"
    ]
    if diagnosis is not None:
        linked = any('id="finding-1"' in block for section in sections for block in section.html_blocks)
        parts.append(_verdict_html(diagnosis, linked))
    if toc and sections:
        items = "".join(f'<li><a href="#{sid}">{_e(s.title)}</a></li>' for s, sid in zip(sections, ids))
        parts.append(f'<nav class="toc" aria-label="Contents"><strong>Contents</strong><ol>{items}</ol></nav>\n')
    parts.extend(_section_html(section, sid) for section, sid in zip(sections, ids))
    parts.append(f"<footer>Made by gradhealth {_e(__version__)} from the run's records. This page is self-contained: "
                 "no scripts, nothing loaded from the network.</footer>\n</main>\n</body>\n</html>\n")
    return "".join(parts)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def _section_ids(sections: Sequence[Section]) -> list[str]:
    return [f"s{index}-{_slug(s.title)}".rstrip("-") for index, s in enumerate(sections, 1)]


def _section_html(section: Section, section_id: str) -> str:
    out = [f'<section id="{section_id}">\n<h2>{_e(section.title)}</h2>\n']
    if section.intro:
        out.append(f"<p>{_e(section.intro)}</p>\n")
    for fig in section.figures:
        out.append(f'<figure>\n<div class="plot">{fig.svg}</div>\n'
                   f"<figcaption>{_e(fig.caption)}</figcaption>\n</figure>\n")
    out.extend(_table_html(table) for table in section.tables)
    out.extend(section.html_blocks)
    out.append("</section>\n")
    return "".join(out)


def _table_html(table: Table) -> str:
    head = "".join(f'<th scope="col">{_e(str(c))}</th>' for c in table.columns)
    rows = []
    for row in table.rows:
        cells = "".join(
            f'<td class="num">{_e(format_value(c))}</td>' if isinstance(c, (int, float)) and not isinstance(c, bool)
            else f"<td>{_e(format_value(c))}</td>"
            for c in row)
        rows.append(f"<tr>{cells}</tr>")
    caption = f"<caption>{_e(table.caption)}</caption>" if table.caption else ""
    return (f'<div class="table-wrap"><table>{caption}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>\n')


# ---- verdict and findings -----------------------------------------------------------------------

FINDINGS = "Findings and remedies"


def _verdict_html(diagnosis: Diagnosis, linked: bool) -> str:
    verdict = diagnosis.verdict
    count = len(diagnosis.findings)
    by_severity = [f"{n} {sev}{'s' if n != 1 else ''}" for sev in ("error", "warning", "info")
                   if (n := sum(f.severity == sev for f in diagnosis.findings))]
    facts = f"{count} finding{'s' if count != 1 else ''}: {', '.join(by_severity)}" if count else "no findings"
    if diagnosis.steps:
        facts += f" in {diagnosis.steps} steps"
    items = []
    for index, finding in enumerate(diagnosis.findings, 1):
        name = f'<a href="#finding-{index}">{_e(finding.title)}</a>' if linked else _e(finding.title)
        where = f' <span class="muted">· {_e(abbreviate_layers(finding.layers, 2))}</span>' if finding.layers else ""
        items.append(f"<li>{_severity(finding.severity)}{name}{where}</li>")
    summary = f'<ul class="summary">{"".join(items)}</ul>' if items else ""
    seen = ""
    reasons = diagnosis.inconclusive_because()
    if reasons:
        seen += "".join(f'<p class="inconclusive-why">Inconclusive: {_e(r)}</p>' for r in reasons)
    if diagnosis.coverage is not None:
        seen += f'<p class="coverage">{_e(coverage_text(diagnosis.coverage))}</p>'
    if diagnosis.not_run:
        rows = "".join(f"<li>{_e(line)}</li>" for line in not_run_lines(diagnosis.not_run))
        seen += f'<p class="muted">Not run:</p><ul class="not-run">{rows}</ul>'
    return (f'<section class="verdict" aria-label="Verdict"><p><span class="badge {_e(verdict)}">{_e(verdict)}</span>'
            f"{_e(facts)}</p>{summary}{seen}</section>\n")


def _severity(severity: str) -> str:
    return f'<span class="sev sev-{_e(severity)}">{_e(severity)}</span>'


def findings_section(diagnosis: Diagnosis, *, anchor: str = "finding") -> Section:
    """One table row per finding (evidence included), each followed by its remedies in rank order.

    Rows get the ids ``{anchor}-1``, ``{anchor}-2`` ...: the verdict at the top of the page links
    to ``finding-N``; give other runs on the same page another ``anchor``.
    """
    if not diagnosis.findings:
        if diagnosis.verdict == "inconclusive":
            return Section(FINDINGS, intro="No rule fired, but too little of the model was measured to call it "
                                           "healthy: see the coverage and the rules that could not run above.")
        return Section(FINDINGS, intro="No rule fired: gradients, activations and updates look healthy.")
    rows = "".join(_finding_rows(f"{anchor}-{index}", index, f) for index, f in enumerate(diagnosis.findings, 1))
    head = "".join(f'<th scope="col">{c}</th>' for c in ("#", "Severity", "Finding", "Layers", "Evidence"))
    table = (f'<div class="table-wrap"><table class="findings"><thead><tr>{head}</tr></thead>'
             f"<tbody>{rows}</tbody></table></div>\n")
    return Section(FINDINGS, intro="What the rules found in this run, the numbers behind it, and what fixes it, "
                                   "best remedy first.", html_blocks=[table])


def _finding_rows(row_id: str, index: int, finding: Finding) -> str:
    evidence = "<br>".join(f"{_e(str(k))} = {_e(format_value(v, 60))}"
                           for k, v in finding.evidence.items() if v is not None) or "–"
    step = f'<br><span class="muted">at step {_e(str(finding.step))}</span>' if finding.step is not None else ""
    main = (f'<tr id="{_e(row_id)}" class="finding"><td class="num" data-label="#">{index}</td>'
            f'<td data-label="Severity">{_severity(finding.severity)}</td>'
            f'<td class="wide" data-label="Finding"><strong>{_e(finding.title)}</strong><br>'
            f"{_e(finding.explanation)}{step}</td>"
            f'<td class="layers" data-label="Layers">{_e(abbreviate_layers(finding.layers, 4))}</td>'
            f'<td class="evidence" data-label="Evidence">{evidence}</td></tr>')
    if not finding.remedies:
        return main
    remedies = "".join(
        f'<li><strong>{_e(r.title)}</strong><span class="why">{_e(r.why)}</span>'
        + (f"<code>{_e(r.how)}</code>" if r.how else "") + "</li>"
        for r in finding.remedies)
    return (main + f'<tr class="remedy-row"><td class="spacer"></td><td colspan="4" data-label="Remedies, best first">'
            f'<span class="remedies-title">Remedies, best first</span><ol class="remedies">{remedies}</ol></td></tr>')


# ---- the standard single-run report -------------------------------------------------------------

def run_page(log: RunLog, diagnosis: Diagnosis | None, title: str, extra: Sequence[Section] = ()) -> str:
    """The whole page for one run: verdict, the standard sections, then any ``extra`` sections."""
    facts = [log.meta.model, log.meta.data, f"{len(log.records)} logged steps"]
    return render_html(title, [*run_sections(log, diagnosis), *extra], diagnosis=diagnosis,
                       subtitle=" · ".join(f for f in facts if f))


def run_sections(log: RunLog, diagnosis: Diagnosis | None, *, label: str | None = None) -> list[Section]:
    """Gradients vs depth (first and last step), heatmap, loss, update ratio, activations, findings, details.

    With a ``label`` (several runs on one page) every section title starts with it and the
    finding rows get their own ids, so pages that combine runs keep their ids unique.
    """
    runs = figures.as_runs(log, label)
    prefix = f"{label}: " if label else ""
    sections = []
    if figures.has_layer_metric(log, "grad_norm"):
        steps = ["first", "last"] if len(log.records) > 1 else ["first"]
        sections.append(Section(
            prefix + "Gradients vs depth",
            intro="The gradient norm of every weight layer, from the input (left) to the output (right). "
                  "In a healthy network the line is roughly flat; a steady slope is a geometric decay or growth.",
            figures=[figures.grad_vs_depth(runs, step) for step in steps]))
        sections.append(Section(prefix + "Gradients over training", figures=[figures.grad_heatmap(log)]))
    else:
        sections.append(Section(prefix + "Gradients", intro="This log has no per-layer gradient norms to draw."))
    sections.append(Section(prefix + "Loss", figures=[figures.loss_curves(runs)]))
    if figures.has_layer_metric(log, "update_ratio"):
        sections.append(Section(prefix + "Update size", figures=[figures.update_ratio_chart(runs)]))
    activations = activation_table(log)
    if activations is not None:
        sections.append(Section(
            prefix + "Activations", intro="Saturated units pass almost no gradient; dead ReLU units pass none.",
            tables=[activations]))
    if diagnosis is not None:
        found = findings_section(diagnosis, anchor=f"finding-{_slug(label)}" if label else "finding")
        found.title = prefix + found.title
        sections.append(found)
    sections.append(Section(prefix + "Run details", tables=[run_details_table(log)]))
    return sections


def activation_table(log: RunLog) -> Table | None:
    """Saturation and dead fraction per activation module (forward order), at the first and the last step
    that measured them; None if unmeasured."""
    names = log.meta.names("activation") or list(dict.fromkeys(n for r in log.records for n in r.activations))
    names = [n for n in names if any(n in r.activations for r in log.records)]
    if not names:
        return None
    rules = {layer.name: layer.activation for layer in log.meta.layers}
    # activation health is measured on detailed steps only: the first and last that have it
    measured = [r for r in log.records if r.activations]
    first, last = measured[0], measured[-1]

    def value(record, name, metric):
        stats = record.activations.get(name)
        return None if stats is None else getattr(stats, metric)

    rows = []
    for name in names:
        dead = [v for r in log.records if (v := value(r, name, "dead_fraction")) is not None]
        rows.append([name, rules.get(name) or "–",
                     format_percent(value(first, name, "saturation")), format_percent(value(last, name, "saturation")),
                     format_percent(value(last, name, "dead_fraction")), format_percent(max(dead) if dead else None)])
    return Table(["Activation module", "Rule", f"Saturated, step {first.step}", f"Saturated, step {last.step}",
                  f"Dead, step {last.step}", "Dead, most"], rows,
                 caption="Saturated: share of outputs where the derivative is under 1 % of its maximum. "
                         "Dead: share of units off for the whole batch.")


def run_details_table(log: RunLog) -> Table:
    """Model, data, steps, layers by role, and the run's config as flat key/value rows."""
    meta, records = log.meta, log.records
    roles: dict[str, int] = {}
    for layer in meta.layers:
        roles[layer.role] = roles.get(layer.role, 0) + 1
    skipped = sum(r.skipped for r in records)
    rows: list[list[Any]] = [
        ["model", meta.model or "–"],
        ["data", data_name(log) or "–"],
        ["logged steps", f"{len(records)} (step {records[0].step} to {records[-1].step})"],
        ["skipped steps", skipped],
        ["layers", ", ".join(f"{n} {role}" for role, n in roles.items()) or "not recorded"],
    ]
    rows.extend([f"config: {key}", value] for key, value in flatten_config(meta.config))
    return Table(["Item", "Value"], [[key, format_value(value)] for key, value in rows])


def write_report(path: str | os.PathLike, html_text: str) -> Path:
    """Write the page atomically: never a half-written report."""
    return write_text_atomic(path, html_text)
