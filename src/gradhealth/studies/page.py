"""A study's outputs: ``results.json`` (every run's config and numbers, the claims) and ``report.html``.

The page opens with the claims and a holds/fails badge each, then every study's sections. Both
files are written to a temp file in the same folder and renamed, so a reader never sees half.
"""
from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from gradhealth import __version__
from gradhealth.io import strict_json, write_text_atomic
from gradhealth.report.format import format_value
from gradhealth.report.html import Section, render_html, write_report
from gradhealth.studies.base import StudyResult

__all__ = ["results_document", "study_page", "write_outputs", "evidence_html"]

_e = html.escape
# how many items of a list or mapping the evidence column shows before "…"
_SHOWN = 6


def _short(value: Any) -> str:
    """Evidence as short text: three significant digits, long lists cut."""
    if isinstance(value, Mapping):
        items = list(value.items())
        text = ", ".join(f"{k}: {_short(v)}" for k, v in items[:_SHOWN])
        return text + (f", … ({len(items) - _SHOWN} more)" if len(items) > _SHOWN else "")
    if isinstance(value, (list, tuple)):
        text = ", ".join(_short(v) for v in value[:_SHOWN])
        return f"[{text}{', …' if len(value) > _SHOWN else ''}]"
    if isinstance(value, float) and math.isinf(value):
        return "NaN/Inf (diverged)"
    return format_value(value)


def evidence_html(evidence: Mapping[str, Any]) -> str:
    return "<br>".join(f"{_e(str(k).replace('_', ' '))} = {_e(_short(v))}" for k, v in evidence.items()) or "–"


def _claims_section(results: Sequence[StudyResult]) -> Section:
    rows = []
    for study in results:
        for claim in study.claims:
            badge = '<span class="badge healthy">holds</span>' if claim.holds else \
                '<span class="badge unhealthy">fails</span>'
            # the study's name sits under the badge: a fourth column would squeeze the claim on a phone
            rows.append(f'<tr><td>{badge}<br><span class="muted">{_e(study.title)}</span></td><td>{_e(claim.text)}</td>'
                        f'<td class="evidence">{evidence_html(claim.evidence)}</td></tr>')
    head = "".join(f'<th scope="col">{c}</th>' for c in ("Result", "Claim", "Measured"))
    table = (f'<div class="table-wrap"><table class="claims"><thead><tr>{head}</tr></thead>'
             f'<tbody>{"".join(rows)}</tbody></table></div>\n')
    total = sum(len(s.claims) for s in results)
    held = sum(c.holds for s in results for c in s.claims)
    intro = (f"{held} of {total} claims hold on this run. Each claim's result is computed from the numbers "
             "in its row (and in results.json); none is written in by hand.")
    return Section("Claims", intro, html_blocks=[table])


def study_page(results: Sequence[StudyResult], *, title: str, subtitle: str = "") -> str:
    """The whole page: claims first, then each study's sections (prefixed by its title when there are several)."""
    sections = [_claims_section(results)]
    for study in results:
        for section in study.sections:
            named = len(results) > 1 and not section.title.startswith(study.title)
            sections.append(Section(f"{study.title} – {section.title}" if named else section.title, section.intro,
                                    section.figures, section.tables, section.html_blocks))
    return render_html(title, sections, toc=True, subtitle=subtitle)


def results_document(results: Sequence[StudyResult], **facts: Any) -> dict[str, Any]:
    """results.json as a dict: run facts (size, data, seeds ...), a claim count, each study's results."""
    return strict_json({
        "gradhealth": __version__, **facts,
        "claims_hold": sum(c.holds for s in results for c in s.claims),
        "claims_total": sum(len(s.claims) for s in results),
        "studies": {s.name: s.to_json() for s in results},
    })


def write_outputs(folder: str | os.PathLike, results: Sequence[StudyResult], *, title: str, subtitle: str = "",
                  **facts: Any) -> tuple[Path, Path]:
    """Write ``results.json`` and ``report.html`` into ``folder``; returns their paths."""
    from gradhealth.studies.gallery import write_gallery

    folder = Path(folder)
    json_path, html_path = folder / "results.json", folder / "report.html"
    write_text_atomic(json_path, json.dumps(results_document(results, **facts), indent=1, allow_nan=False))
    write_report(html_path, study_page(results, title=title, subtitle=subtitle))
    write_gallery(results, folder / "figures")
    return json_path, html_path
